"""Selection: one filter for events and tally rows; bad values are usage errors."""

from __future__ import annotations

import ipaddress

import pytest

from tracer.errors import UsageError
from tracer.filters import Selection, parse_network
from tracer.model import Event, Kind


def ev(peer="10.1.2.3", kind=Kind.SYN_DROP, port=443, family=4, netns=7) -> Event:
    return Event(1.0, kind, peer, 5000, "10.0.0.1", port, family, netns, None)


def test_empty_selection_matches_everything():
    s = Selection.build()
    assert s.is_everything and s.matches_event(ev()) and s.describe() == ""


def test_each_filter():
    assert Selection.build(ports=[443]).matches_event(ev(port=443))
    assert not Selection.build(ports=[80]).matches_event(ev(port=443))
    assert Selection.build(peers=["10.1.0.0/16"]).matches_event(ev())
    assert not Selection.build(peers=["10.2.0.0/16"]).matches_event(ev())
    assert not Selection.build(peers=["2001:db8::/32"]).matches_event(ev())
    assert Selection.build(peers=["2001:db8::/32"]).matches_event(ev(peer="2001:db8::5", family=6))
    assert Selection.build(kinds=["ack_drop"]).matches_event(ev(kind=Kind.ACK_DROP))
    assert not Selection.build(kinds=["ack_drop"]).matches_event(ev())
    assert not Selection.build(family=6).matches_event(ev())
    assert Selection.build(netns=[7]).matches_event(ev())
    assert not Selection.build(netns=[8]).matches_event(ev())


def test_rows_use_the_same_rule():
    s = Selection.build(ports=[443], peers=["10.1.2.3"])
    assert s.matches(kind=Kind.PAWS, peer="10.1.2.3", family=4, netns=1, local_port=443)
    assert not s.matches(kind=Kind.PAWS, peer="10.1.2.3", family=4, netns=1, local_port=80)


def test_parse_network_forms_and_errors():
    assert parse_network("192.0.2.7") == ipaddress.ip_network("192.0.2.7/32")
    assert parse_network("10.1.2.9/24") == ipaddress.ip_network("10.1.2.0/24")
    assert parse_network("::ffff:10.0.0.0/104") == ipaddress.ip_network("10.0.0.0/8")
    for bad in ("10.0.0.0/33", "nonsense", "", "1.2.3.4.5"):
        with pytest.raises(UsageError):
            parse_network(bad)
    with pytest.raises(UsageError, match="unknown kind"):
        Selection.build(kinds=["syn_drops"])


def test_describe_lists_active_filters():
    s = Selection.build(ports=[80, 443], kinds=["paws"], family=6)
    assert s.describe() == "port 80,443; kind paws; IPv6"
