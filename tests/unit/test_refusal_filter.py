"""RefusalFilter and its parsers: --peer networks, --kind names, and matching events and rows."""

from __future__ import annotations

import ipaddress

import pytest

from tracer.errors import UsageError
from tracer.filters import RefusalFilter, parse_kind, parse_network
from tracer.kinds import Kind
from tracer.model import Event


def event(peer="10.1.2.3", kind=Kind.SYN_DROP, local_port=443, family=4,
          netns=4026531840) -> Event:
    return Event(1.0, kind, peer, 50000, "10.0.0.1", local_port, family, netns, None)


@pytest.mark.parametrize("text, network", [
    ("10.1.2.0/24", "10.1.2.0/24"),
    ("10.1.2.9/24", "10.1.2.0/24"),              # host bits are tolerated
    ("192.0.2.7", "192.0.2.7/32"),                # bare address
    (" 192.0.2.7 ", "192.0.2.7/32"),
    ("2001:db8::/32", "2001:db8::/32"),
    ("2001:DB8:0:0::1", "2001:db8::1/128"),
    ("::ffff:10.0.0.0/104", "10.0.0.0/8"),        # v4-mapped -> IPv4
    ("::ffff:192.0.2.1", "192.0.2.1/32"),
    ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
    ("0.0.0.0/0", "0.0.0.0/0"),
])
def test_parse_network(text, network):
    got = parse_network(text)
    assert got == ipaddress.ip_network(network)
    assert type(got) is type(ipaddress.ip_network(network))


@pytest.mark.parametrize("text", ["10.0.0.0/33", "2001:db8::/129", "10.0.0", "example.com",
                                  "", "10.0.0.0/-1", "1.2.3.4.5", "10.0.0.0/8/8"])
def test_parse_network_errors_carry_the_remedy(text):
    with pytest.raises(UsageError) as exc:
        parse_network(text)
    assert exc.value.exit_code == 2
    assert str(exc.value) == (f"--peer {text!r} is not an address or CIDR: "
                              "use e.g. 10.1.2.0/24, 2001:db8::/64 or 192.0.2.7")


def test_parse_kind():
    assert parse_kind(" tw_paws ") is Kind.TW_PAWS
    with pytest.raises(UsageError) as exc:
        parse_kind("syn")
    assert str(exc.value) == (
        "unknown kind 'syn': choose from syn_drop, ack_drop, syn_cookie, cookie_fail, "
        "synack_retrans, tw_reuse_out, tw_reuse_in, tw_paws, paws, paws_active")


def test_build_collects_each_filter():
    s = RefusalFilter.build(ports=[443, 80, 443], peers=["10.0.0.0/8", "::ffff:172.16.0.0/108"],
                        kinds=["paws", "SYN_DROP"], family=4, netns=[7, 7, 9])
    assert s.ports == frozenset({80, 443})
    assert s.networks == (ipaddress.ip_network("10.0.0.0/8"),
                          ipaddress.ip_network("172.16.0.0/12"))
    assert s.kinds == frozenset({Kind.PAWS, Kind.SYN_DROP})
    assert s.family == 4
    assert s.netns == frozenset({7, 9})
    assert not s.is_everything
    assert s == RefusalFilter.build(ports=[80, 443], peers=["10.0.0.0/8", "172.16.0.0/12"],
                                kinds=["syn_drop", "paws"], family=4, netns=[9, 7])


@pytest.mark.parametrize("selection", [
    RefusalFilter.build(ports=[1]), RefusalFilter.build(peers=["::/0"]),
    RefusalFilter.build(kinds=["paws"]), RefusalFilter.build(family=6),
    RefusalFilter.build(netns=[1]),
])
def test_any_filter_means_not_everything(selection):
    assert not selection.is_everything


def test_empty_selection_matches_everything():
    s = RefusalFilter()
    assert s.is_everything and s.describe() == ""
    for e in (event(), event(peer="2001:db8::1", family=6), event(kind=Kind.PAWS_ACTIVE)):
        assert s.matches_event(e)


def test_each_filter_accepts_and_rejects():
    assert RefusalFilter.build(ports=[443, 8443]).matches_event(event(local_port=8443))
    assert not RefusalFilter.build(ports=[443]).matches_event(event(local_port=80))
    assert RefusalFilter.build(kinds=["syn_drop"]).matches_event(event())
    assert not RefusalFilter.build(kinds=["ack_drop"]).matches_event(event())
    assert RefusalFilter.build(family=4).matches_event(event())
    assert not RefusalFilter.build(family=6).matches_event(event())
    assert RefusalFilter.build(netns=[4026531840]).matches_event(event())
    assert not RefusalFilter.build(netns=[4026532000]).matches_event(event())


def test_peer_networks_are_an_or_and_never_cross_families():
    s = RefusalFilter.build(peers=["10.1.0.0/16", "2001:db8::/32"])
    assert s.matches_event(event(peer="10.1.255.255"))
    assert s.matches_event(event(peer="2001:db8:ffff::1", family=6))
    assert not s.matches_event(event(peer="10.2.0.1"))
    assert not s.matches_event(event(peer="2001:db9::1", family=6))
    everything_v6 = RefusalFilter.build(peers=["::/0"])
    assert not everything_v6.matches_event(event(peer="10.1.2.3"))
    assert everything_v6.matches_event(event(peer="::1", family=6))


def test_filters_combine_with_and():
    s = RefusalFilter.build(ports=[443], peers=["10.0.0.0/8"], kinds=["syn_drop"], family=4,
                        netns=[4026531840])
    assert s.matches_event(event())
    assert not s.matches_event(event(local_port=80))
    assert not s.matches_event(event(peer="192.0.2.1"))
    assert not s.matches_event(event(kind=Kind.SYN_COOKIE))
    assert not s.matches_event(event(netns=1))


def test_tally_rows_and_events_share_the_rule():
    s = RefusalFilter.build(ports=[443], peers=["10.1.2.3"])
    assert s.matches(kind=Kind.PAWS, peer="10.1.2.3", family=4, netns=1, local_port=443)
    assert not s.matches(kind=Kind.PAWS, peer="10.1.2.3", family=4, netns=1, local_port=444)
    assert not s.matches(kind=Kind.PAWS, peer="10.1.2.4", family=4, netns=1, local_port=443)


def test_peer_cache_gives_the_same_answer_twice():
    s = RefusalFilter.build(peers=["10.0.0.0/8"])
    assert [s.peer_matches("10.9.9.9"), s.peer_matches("10.9.9.9")] == [True, True]
    assert [s.peer_matches("11.0.0.1"), s.peer_matches("11.0.0.1")] == [False, False]
    assert s == RefusalFilter.build(peers=["10.0.0.0/8"])     # the cache is not part of equality


def test_describe_lists_every_active_filter_in_a_fixed_order():
    s = RefusalFilter.build(ports=[8443, 80], peers=["10.0.0.0/8", "2001:db8::/32"],
                        kinds=["tw_paws", "ack_drop"], family=6, netns=[9, 3])
    assert s.describe() == ("port 80,8443; peer 10.0.0.0/8,2001:db8::/32; "
                            "kind ack_drop,tw_paws; IPv6; netns 3,9")
    assert RefusalFilter.build(family=4).describe() == "IPv4"
