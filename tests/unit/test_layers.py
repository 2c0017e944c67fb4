"""What each part may import (docs/ARCHITECTURE.md, "The parts"): data flows one way, the
vocabulary depends on nothing, sinks never reach into the kernel side, and only the CLI
wires everything together."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TRACER = Path(__file__).resolve().parents[2] / "tracer"
VOCABULARY = {"kinds", "model", "errors"}

# part -> the parts it may import ("*" = anything); a part is a top-level module or package.
ALLOWED: dict[str, set[str]] = {
    "kinds": set(),
    "errors": set(),
    "model": {"kinds"},
    "filters": VOCABULARY,
    "stream": VOCABULARY,
    "kernel": VOCABULARY,
    "probe": VOCABULARY | {"filters", "kernel", "stream"},
    "reconcile": VOCABULARY,
    "leaderboard": VOCABULARY | {"filters"},
    "recording": VOCABULARY,
    "replay": VOCABULARY | {"recording", "stream"},
    "report": VOCABULARY | {"filters", "recording"},
    "doctor": VOCABULARY | {"kernel"},
    "sinks": VOCABULARY | {"stream", "filters", "reconcile", "leaderboard", "report"},
    "packets": set(),
    "lab": VOCABULARY | {"kernel", "packets"},
    "scenarios": VOCABULARY | {"lab", "packets"},
    "cli": {"*"},
    "__main__": {"cli"},
    "__init__": set(),
}


def part_of(path: Path) -> str:
    rel = path.relative_to(TRACER)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_parts(path: Path) -> set[str]:
    """The tracer parts a module imports (absolute `tracer.x` imports; the version string
    from `tracer` itself is not a part)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = node.module.split(".")
            if names[0] != "tracer":
                continue
            if len(names) > 1:
                out.add(names[1])
            else:
                out.update(a.name for a in node.names if a.name != "__version__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "tracer" and len(names) > 1:
                    out.add(names[1])
    return out


MODULES = sorted(p for p in TRACER.rglob("*.py") if "__pycache__" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(TRACER)))
def test_each_module_imports_only_what_its_part_may(path):
    part = part_of(path)
    assert part in ALLOWED, f"{part} is a new part: add it to ALLOWED and ARCHITECTURE.md"
    allowed = ALLOWED[part]
    if "*" in allowed:
        return
    wrong = imported_parts(path) - allowed - {part}
    assert not wrong, f"tracer/{path.relative_to(TRACER)} imports {sorted(wrong)}"


def test_the_rules_see_a_violation():
    assert imported_parts(TRACER / "sinks" / "dashboard.py") >= {"leaderboard", "stream"}
    assert "probe" not in ALLOWED["sinks"]
