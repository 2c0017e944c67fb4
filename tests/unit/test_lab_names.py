"""Namespaces made by `demo` and the tests carry their creator's pid, and the clean-up of
leftovers deletes only names of that exact shape whose creator is gone: never a namespace
someone else made."""

from __future__ import annotations

import os

from tracer import lab


def test_remove_stale_deletes_only_its_own_dead_leftovers(monkeypatch):
    alive = os.getpid()
    names = [
        "trdemo-999999-demo-srv",          # ours, creator gone: deleted
        "trdemo-999999-demo-cli",          # ours, creator gone: deleted
        f"trdemo-{alive}-demo-srv",        # ours, creator alive: kept
        "trdemo-999999-demo-db",           # not a suffix we make: kept
        "trdemo-abc-demo-srv",             # no pid: kept
        "trdemox-999999-demo-srv",         # another prefix: kept
        "production",                      # someone else's: kept
        "rtk-999999-x-srv",                # another prefix: kept
    ]
    deleted = []
    monkeypatch.setattr(lab.os, "listdir", lambda path: names)
    monkeypatch.setattr(lab, "remove_netns", deleted.append)
    lab.remove_stale("trdemo")
    assert deleted == ["trdemo-999999-demo-srv", "trdemo-999999-demo-cli"]


def test_lab_names_carry_the_creator_pid():
    made = lab.Lab("demo", prefix="trdemo")
    assert made.srv == f"trdemo-{os.getpid()}-demo-srv"
    assert made.cli == f"trdemo-{os.getpid()}-demo-cli"
