"""symbol_ranges: [start, next higher text symbol) from crafted /proc/kallsyms lines."""

from __future__ import annotations

import pytest

from tracer.errors import EnvironmentProblem
from tracer.probe import kallsyms

LINES = """\
ffffffff81000000 T _stext
ffffffff81001000 T tcp_v4_do_rcv
ffffffff81001000 T __pfx_alias_of_do_rcv
ffffffff81001000 t do_rcv_alias
ffffffff81001800 t tcp_rcv_state_process
ffffffff81002000 D some_data
ffffffff81003000 W weak_fn
ffffffff81003400 T cookie_v4_check
ffffffff81003400 T cookie_v4_check
ffffffff81004000 r some_rodata
ffffffff81004000 b some_bss
ffffffff81005000 A absolute_sym
ffffffffc0100000 t tw_timer_handler\t[some_module]
ffffffffc0100200 t tcp_v6_do_rcv\t[ipv6]
""".splitlines(keepends=True)


def test_ranges_end_at_the_next_distinct_text_address():
    got = kallsyms.symbol_ranges(["tcp_v4_do_rcv", "tcp_rcv_state_process",
                                  "cookie_v4_check", "tw_timer_handler", "tcp_v6_do_rcv"],
                                 LINES)
    assert got == {
        # aliases at 0x...1000 are skipped: the range ends at the next higher address
        "tcp_v4_do_rcv": (0xFFFFFFFF81001000, 0xFFFFFFFF81001800),
        # data symbols (D) are not boundaries; weak text symbols (W) are
        "tcp_rcv_state_process": (0xFFFFFFFF81001800, 0xFFFFFFFF81003000),
        "cookie_v4_check": (0xFFFFFFFF81003400, 0xFFFFFFFFC0100000),
        "tw_timer_handler": (0xFFFFFFFFC0100000, 0xFFFFFFFFC0100200),
        # the last text symbol: a 64 KiB range
        "tcp_v6_do_rcv": (0xFFFFFFFFC0100200, 0xFFFFFFFFC0110200),
    }


def test_an_alias_asked_for_by_name_shares_the_range():
    got = kallsyms.symbol_ranges(["do_rcv_alias", "tcp_v4_do_rcv"], LINES)
    assert got["do_rcv_alias"] == got["tcp_v4_do_rcv"] == (0xFFFFFFFF81001000,
                                                           0xFFFFFFFF81001800)


def test_first_definition_wins_for_duplicate_names():
    lines = ["ffffffff81000000 t dup\n", "ffffffff81000100 t other\n",
             "ffffffff82000000 t dup\n", "ffffffff82000100 t last\n"]
    assert kallsyms.symbol_ranges(["dup"], lines) == {"dup": (0xFFFFFFFF81000000,
                                                              0xFFFFFFFF81000100)}


def test_missing_names_and_non_text_symbols_are_left_out():
    assert kallsyms.symbol_ranges(["nope", "some_data", "weak_fn"], LINES) == {
        "weak_fn": (0xFFFFFFFF81003000, 0xFFFFFFFF81003400)}
    assert kallsyms.symbol_ranges([], LINES) == {}
    assert kallsyms.symbol_ranges(["x"], []) == {}


def test_malformed_lines_are_skipped():
    lines = ["\n", "garbage\n", "ffffffff81000000 T\n", "ffffffff81000000 T a\n",
             "ffffffff81000040 T b\n"]
    assert kallsyms.symbol_ranges(["a"], lines) == {"a": (0xFFFFFFFF81000000,
                                                          0xFFFFFFFF81000040)}


def test_unsorted_input_is_handled():
    lines = ["ffffffff81000300 T c\n", "ffffffff81000100 T a\n", "ffffffff81000200 T b\n"]
    assert kallsyms.symbol_ranges(["a", "b", "c"], lines) == {
        "a": (0xFFFFFFFF81000100, 0xFFFFFFFF81000200),
        "b": (0xFFFFFFFF81000200, 0xFFFFFFFF81000300),
        "c": (0xFFFFFFFF81000300, 0xFFFFFFFF81010300)}


def test_zeroed_addresses_kptr_restrict_are_an_environment_problem():
    zeroed = [line.replace(line.split()[0], "0" * 16) for line in LINES]
    with pytest.raises(EnvironmentProblem) as exc:
        kallsyms.symbol_ranges(["tcp_v4_do_rcv"], zeroed)
    assert exc.value.exit_code == 1
    assert str(exc.value) == ("kernel symbol addresses read as zero in /proc/kallsyms: "
                              "run as root, or lower kernel.kptr_restrict")


def test_zeroed_addresses_without_a_wanted_symbol_are_not_an_error():
    assert kallsyms.symbol_ranges(["absent"], ["0000000000000000 T a\n"]) == {}


def test_load_ranges_reads_a_file(tmp_path):
    path = tmp_path / "kallsyms"
    path.write_text("".join(LINES))
    assert kallsyms.load_ranges(["tw_timer_handler"], str(path)) == {
        "tw_timer_handler": (0xFFFFFFFFC0100000, 0xFFFFFFFFC0100200)}
