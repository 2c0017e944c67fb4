"""The full-screen commands refuse a non-terminal, and record refuses to clobber a file,
before anything touches the kernel."""

from __future__ import annotations

import pytest

from tracer import cli


def invoke(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("args, hint", [(["live"], "tracer watch"),
                                        (["demo"], "--headless"),
                                        (["replay", "x.ndjson"], "--json")])
def test_board_commands_need_a_terminal(capsys, args, hint):
    code, err = invoke(args, capsys)
    assert code == 2 and "not a terminal" in err and hint in err
    assert len(err.strip().splitlines()) == 1


def test_record_refuses_an_existing_file_before_loading_anything(capsys, tmp_path):
    target = tmp_path / "keep.ndjson"
    target.write_text("precious")
    code, err = invoke(["record", "-o", str(target)], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert target.read_text() == "precious"


def test_report_errors(capsys, tmp_path):
    code, err = invoke(["report", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err
    code, err = invoke(["report", str(tmp_path / "missing.ndjson")], capsys)
    assert code == 1 and "cannot read" in err
    (tmp_path / "junk").write_bytes(b"\x00\x01\x02")
    code, err = invoke(["report", str(tmp_path / "junk")], capsys)
    assert code == 1 and "nothing usable" in err
    code, err = invoke(["report", str(tmp_path / "junk"), "--since", "whenever"], capsys)
    assert code == 2 and "cannot read the time" in err
