"""What the running kernel can report, and therefore which kinds are available and via what.

Everything is read from the kernel itself (tracefs formats, kallsyms, the release string),
never assumed from a version number alone; `availability()` is a pure function of it so that
other kernels can be described in unit tests.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path

from tracer.kinds import Kind, Method, Symbol
from tracer.model import KindAvailability
from tracer.probe import kallsyms, tracefs

# Functions whose addresses the BPF code compares against: those a kind requires, and
# those a handler uses when present (a cookie check's location, the skb destructors of a
# full TCP socket's transmit path); a missing one disables only its comparison.
SYMBOLS = tuple(dict.fromkeys(
    [r.name for k in Kind for m in k.spec.methods for r in m.requires if isinstance(r, Symbol)]
    + ["tcp_v6_do_rcv", "cookie_v4_check", "cookie_v6_check", "tcp_wfree", "__sock_wfree"]))

# Tracepoints the handlers may attach to, in declaration order.
TRACEPOINTS = tuple(dict.fromkeys(t for k in Kind for m in k.spec.methods
                                  for t in m.tracepoints))


@dataclass(frozen=True)
class KernelFeatures:
    """The facts about this kernel that decide how (and whether) each kind is traced."""

    release: str
    reasons: dict[int, str]
    tracepoints: frozenset[str]
    fields: dict[str, frozenset[str]] = field(default_factory=dict)   # per tracepoint
    symbols: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def version(self) -> tuple[int, int, int]:
        return parse_release(self.release)

    def reason(self, name: str) -> int | None:
        """The number of drop reason `name` on this kernel, or None if it has none."""
        for number, reason in self.reasons.items():
            if reason == name:
                return number
        return None

    @property
    def has_rx_sk(self) -> bool:
        return "rx_sk" in self.fields.get("skb/kfree_skb", frozenset())


def parse_release(release: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a `uname -r` string such as 6.18.44-fc-v669."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return (0, 0, 0)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def detect(root: Path = tracefs.TRACEFS, kallsyms_path: str = kallsyms.KALLSYMS) -> KernelFeatures:
    """Read this kernel's features (tracefs must be mounted)."""
    hidden = hidden_reasons()
    formats = {t: tracefs.read_format(t, root) for t in TRACEPOINTS}
    return KernelFeatures(
        release=platform.release(),
        reasons={n: r for n, r in tracefs.drop_reasons(root).items() if r not in hidden},
        tracepoints=frozenset(t for t, text in formats.items() if text is not None),
        fields={t: frozenset(tracefs.fields(text)) for t, text in formats.items() if text},
        symbols=kallsyms.load_ranges(SYMBOLS, kallsyms_path),
    )


# Drop-reason names to treat as absent (comma-separated): how tests show what the tracer
# does on an older kernel that lacks them, on this one.
HIDE_REASONS_ENV = "TRACER_HIDE_DROP_REASONS"


def hidden_reasons() -> frozenset[str]:
    return frozenset(n.strip() for n in os.environ.get(HIDE_REASONS_ENV, "").split(",")
                     if n.strip())


def choose_methods(f: KernelFeatures) -> dict[Kind, tuple[Method | None, str | None]]:
    """Per kind, in declaration order: the first of its methods this kernel supports, or
    None with why (the preferred method's first unmet requirement). A method that needs
    another kind's machinery is usable only when that kind is."""
    out: dict[Kind, tuple[Method | None, str | None]] = {}
    for kind in Kind:
        chosen: Method | None = None
        why: str | None = None
        for method in kind.spec.methods:
            unmet = method.unmet(f)
            for label in method.needs:
                other, other_why = out[Kind.from_label(label)]
                if unmet is None and other is None:
                    unmet = f"needs the {label} machinery: {other_why}"
            if unmet is None:
                chosen, why = method, method.partial(f)
                break
            why = why or unmet
        out[kind] = (chosen, why)
    return out


def availability(f: KernelFeatures) -> dict[str, KindAvailability]:
    """Per kind: available or not on this kernel, via which tracepoints, and why not."""
    out: dict[str, KindAvailability] = {}
    for kind, (method, why) in choose_methods(f).items():
        shown = method or kind.spec.methods[0]
        out[kind.label] = KindAvailability(method is not None, shown.via, why)
    return out


@dataclass(frozen=True)
class BuildPlan:
    """What to compile and attach for the selected kinds on this kernel: the bpf/
    families (FAMILY_*) and the tracepoints (USE_TP_*) of their chosen methods."""

    families: frozenset[str]
    tracepoints: frozenset[str]


def build_plan(f: KernelFeatures, kinds: set[Kind] | frozenset[Kind]) -> BuildPlan:
    """The union of the chosen methods of `kinds` and of the kinds whose machinery they
    need (unavailable ones contribute nothing)."""
    chosen = choose_methods(f)
    methods = [m for k in Kind if k in kinds and (m := chosen[k][0]) is not None]
    methods += [m for needing in list(methods) for label in needing.needs
                if (m := chosen[Kind.from_label(label)][0]) is not None]
    return BuildPlan(families=frozenset(h for m in methods for h in m.handlers),
                     tracepoints=frozenset(t for m in methods for t in m.tracepoints))
