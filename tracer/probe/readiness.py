"""Whether the tracer could load here, and which kinds it could see, decided without loading
or mounting anything: `tracer doctor` must work, and say so, where BPF cannot.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from tracer.errors import TracerError
from tracer.probe import features, tracefs
from tracer.probe.btf import VMLINUX
from tracer.probe.source import check_environment


def tracing_readiness(root: Path = tracefs.TRACEFS, btf_path: str = VMLINUX) -> dict:
    """{"available": bool, "why": str|None, "unavailable_kinds": {kind: why}}."""
    problems: list[str] = []
    try:
        check_environment()
    except TracerError as e:
        problems.append(str(e))
    if importlib.util.find_spec("bcc") is None:
        problems.append("bcc is not installed (Debian package python3-bpfcc): "
                        "run ./scripts/setup")
    if not os.path.exists(btf_path):
        problems.append(f"no BTF at {btf_path}: the kernel needs CONFIG_DEBUG_INFO_BTF")
    unavailable: dict[str, str] = {}
    try:
        if (root / "events").is_dir():
            kinds = features.availability(features.detect(root))
            unavailable = {k: v.why or "" for k, v in kinds.items() if not v.available}
    except OSError as e:
        problems.append(f"cannot read tracefs at {root} ({e.strerror})")
    # Not mounted is no obstacle: the tracer mounts tracefs when it starts.
    return {"available": not problems, "why": "; ".join(problems) or None,
            "unavailable_kinds": unavailable}
