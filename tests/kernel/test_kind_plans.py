"""Each kind alone compiles on this kernel and attaches exactly the tracepoints its declared
method needs: the loader's plan (tracer/kinds.py -> FAMILY_*, USE_TP_*) is what bcc does."""

from __future__ import annotations

import os

import pytest

from tracer.kinds import Kind
from tracer.probe import features, tracefs
from tracer.probe.btf import Btf
from tracer.probe.load import LoadedProbe, Tuning, build_defines, kernel_hz


def attached(probe: LoadedProbe) -> set[str]:
    """group/name of every tracepoint bcc attached a program to."""
    def text(name: str | bytes) -> str:
        return name.decode() if isinstance(name, bytes) else name

    perf = {text(tp).replace(":", "/") for tp in probe.bpf.tracepoint_fds}
    raw = {f"skb/{text(tp)}" for tp in probe.bpf.raw_tracepoint_fds}   # consume_skb only
    return perf | raw


@pytest.fixture(scope="module")
def kernel() -> features.KernelFeatures:
    return features.detect(tracefs.ensure_mounted())


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.label)
def test_one_kind_attaches_its_methods_tracepoints_only(kernel, kind):
    plan = features.build_plan(kernel, {kind})
    method, why = features.choose_methods(kernel)[kind]
    assert method is not None, f"{kind.label} unavailable on this host: {why}"
    assert set(method.tracepoints) <= plan.tracepoints
    defines = build_defines(kernel, Btf.load(), Tuning(), os.cpu_count() or 1, kernel_hz(),
                            plan)
    probe = LoadedProbe(defines)
    try:
        assert attached(probe) == set(plan.tracepoints)
    finally:
        probe.close()
