"""The kernel matrix's pin file (kernels/debian.pin) and what scripts/kernels derives from it:
package names, apt specs and lists, cache paths, the guest's script, the availability table.
No network, no root, no QEMU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("kernel_matrix", ROOT / "scripts/kernels.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


km = _load()

GOOD = """\
# a comment
[5.10]
dist    = bullseye
image   = linux-image-5.10.0-46-amd64-unsigned=5.10.262-1   # trailing comment
headers = linux-headers-5.10.0-46-amd64=5.10.262-1
common  = linux-headers-5.10.0-46-common=5.10.262-1
kbuild  = linux-kbuild-5.10=5.10.262-1

[6.12]
dist    = trixie
image   = linux-image-6.12.118+deb13-amd64=6.12.118-1
headers = linux-headers-6.12.118+deb13-amd64=6.12.118-1
common  = linux-headers-6.12.118+deb13-common=6.12.118-1
kbuild  = linux-kbuild-6.12.118+deb13=6.12.118-1

[tools]
virtme-ng = 1.42
"""


@pytest.fixture
def pins():
    return km.parse_pins(GOOD, "pins")


# --- the repository's own pin file ---------------------------------------------------------

def test_the_repository_pins_the_three_debian_series():
    pins = km.load_pins()
    assert pins.path == "kernels/debian.pin"
    assert list(pins.series) == ["5.10", "6.1", "6.12"]
    assert {s.dist for s in pins.series.values()} == {"bullseye", "bookworm", "trixie"}
    assert pins.tools["virtme-ng"]
    for s in pins.series.values():
        assert s.release.startswith(s.name + ".")
        assert s.flavour == "amd64"
        assert len({p.version for p in s.packages.values()}) == 1


def test_the_pin_file_documents_its_format_at_the_top():
    head = (ROOT / "kernels/debian.pin").read_text().split("\n[", 1)[0]
    for word in ("Format", "dist", "image", "headers", "common", "kbuild", "virtme-ng"):
        assert word in head


# --- names derived from a series -----------------------------------------------------------

def test_release_abi_and_flavour_come_from_the_image_name(pins):
    old, new = pins.series["5.10"], pins.series["6.12"]
    assert (old.release, old.abi, old.flavour) == ("5.10.0-46-amd64", "5.10.0-46", "amd64")
    # a signed image (no -unsigned suffix) gives the same release
    assert (new.release, new.abi) == ("6.12.118+deb13-amd64", "6.12.118+deb13")
    assert old.version == "5.10.262-1"


def test_apt_specs_suites_and_stamp(pins):
    s = pins.series["5.10"]
    assert s.specs() == ["linux-image-5.10.0-46-amd64-unsigned=5.10.262-1",
                         "linux-headers-5.10.0-46-amd64=5.10.262-1",
                         "linux-headers-5.10.0-46-common=5.10.262-1",
                         "linux-kbuild-5.10=5.10.262-1"]
    assert s.suites == ("bullseye", "bullseye-updates", "bullseye-security")
    assert s.stamp().splitlines()[0] == "image linux-image-5.10.0-46-amd64-unsigned=5.10.262-1"
    assert len(s.stamp().splitlines()) == 4


def test_downloaded_file_names_escape_an_epoch():
    assert km.Package("linux-kbuild-5.10", "5.10.262-1").deb_prefix == \
        "linux-kbuild-5.10_5.10.262-1_"
    assert km.Package("qemu-system-x86", "1:7.2+dfsg-7").deb_prefix == \
        "qemu-system-x86_1%3a7.2+dfsg-7_"


def test_section_round_trips(pins):
    s = pins.series["6.12"]
    again = km.parse_pins(s.section(), "x").series["6.12"]
    assert again == km.Series(s.name, s.dist, s.packages, line=1)


def test_private_sources_list_has_the_dist_its_updates_and_security(pins):
    text = km.sources_list(pins.series["5.10"], "http://mirror.invalid/debian/",
                           "http://mirror.invalid/debian-security", keyring="/k.gpg")
    assert text.splitlines() == [
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bullseye main",
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bullseye-updates main",
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian-security "
        "bullseye-security main",
    ]


def test_apt_options_never_use_the_machines_sources_or_state(tmp_path):
    opts = km.apt_options(tmp_path / "apt" / "bullseye")
    settings = dict(o.split("=", 1) for o in opts if o != "-o")
    assert settings["Dir::Etc::SourceList"] == str(tmp_path / "apt/bullseye/sources.list")
    assert settings["Dir::Etc::SourceParts"] == "/dev/null"
    assert settings["Dir::State::Lists"] == str(tmp_path / "apt/bullseye/lists")
    assert settings["Dir::Cache"] == str(tmp_path / "apt/bullseye/cache")
    assert not any("/etc/apt" in o or "/var/lib/apt" in o for o in opts)


def test_mirrors_come_from_the_machines_apt_index_targets():
    text = ("http://mirror.invalid/debian/\tbookworm\tDebian\n"
            "http://mirror.invalid/debian/\tbookworm-updates\tDebian\n"
            "http://other.invalid/nodistro/\tnodistro\tnode\n"
            "http://mirror.invalid/debian-security/\tbookworm-security\tDebian-Security\n")
    assert km.mirrors_from_indextargets(text) == ("http://mirror.invalid/debian",
                                                  "http://mirror.invalid/debian-security")
    # lists not downloaded yet: no labels, the paths still tell
    bare = "http://m.invalid/debian/\tbookworm\t\nhttp://m.invalid/debian-security/\tbookworm-security\t\n"
    assert km.mirrors_from_indextargets(bare) == ("http://m.invalid/debian",
                                                  "http://m.invalid/debian-security")
    assert km.mirrors_from_indextargets("") == (None, None)


# --- cache paths ---------------------------------------------------------------------------

def test_cache_paths(pins, tmp_path):
    layout = km.Layout(tmp_path)
    s = pins.series["5.10"]
    top = tmp_path / "kernels/5.10.0-46-amd64"
    assert layout.kernel_dir(s) == top
    assert layout.vmlinuz(s) == top / "boot/vmlinuz-5.10.0-46-amd64"
    assert layout.headers(s) == top / "usr/src/linux-headers-5.10.0-46-amd64"
    assert layout.common(s) == top / "usr/src/linux-headers-5.10.0-46-common"
    assert layout.modules(s) == top / "lib/modules/5.10.0-46-amd64"
    assert layout.apt_dir("bullseye") == tmp_path / "apt/bullseye"
    assert layout.vng == tmp_path / "vng/bin/vng"
    assert layout.stamp(s) == top / ".pinned"


def test_merged_usr_packages_keep_their_modules_under_usr(pins, tmp_path):
    layout = km.Layout(tmp_path)
    s = pins.series["6.12"]
    merged = layout.kernel_dir(s) / "usr/lib/modules" / s.release
    merged.mkdir(parents=True)
    assert layout.modules(s) == merged


def test_is_fetched_needs_the_same_pins_the_image_and_the_headers_link(pins, tmp_path):
    layout = km.Layout(tmp_path)
    s = pins.series["5.10"]
    assert not km.is_fetched(layout, s)
    layout.vmlinuz(s).parent.mkdir(parents=True)
    layout.vmlinuz(s).write_text("")
    (layout.headers(s) / "include").mkdir(parents=True)
    layout.modules(s).mkdir(parents=True)
    (layout.modules(s) / "build").symlink_to(layout.headers(s))
    layout.stamp(s).write_text(s.stamp())
    assert km.is_fetched(layout, s)
    layout.stamp(s).write_text(s.stamp().replace("5.10.262-1", "5.10.261-1"))
    assert not km.is_fetched(layout, s)


def test_the_cache_defaults_to_opt_and_never_lies_in_the_repository():
    assert km.Layout.from_env({}).cache == Path("/opt/debian-kernels")
    assert km.Layout.from_env({"KERNELS_CACHE": "/var/tmp/k"}).cache == Path("/var/tmp/k")
    with pytest.raises(km.KernelsError, match="inside the repository"):
        km.Layout.from_env({"KERNELS_CACHE": str(ROOT / "cache")})


def test_selecting_series(pins):
    assert [s.name for s in pins.select([])] == ["5.10", "6.12"]
    assert [s.name for s in pins.select(["6.12", "6.12"])] == ["6.12"]
    with pytest.raises(km.KernelsError, match="no series 4.19 in pins"):
        pins.select(["4.19"])


# --- malformed pin files -------------------------------------------------------------------

@pytest.mark.parametrize(("edit", "message"), [
    (("dist    = bullseye\n", ""), r"pins:2: \[5.10\] lacks dist"),
    (("kbuild  = linux-kbuild-5.10=5.10.262-1\n", "kbuild  = linux-kbuild-5.10=5.10.262-1\n"
      "flavour = amd64\n"), r"pins:8: unknown key 'flavour'"),
    (("[6.12]", "[5.10]"), r"pins:9: section \[5.10\] appears twice"),
    (("[6.12]", "[six]"), r"pins:9: \[six\] is neither a series"),
    (("kbuild  = linux-kbuild-5.10=5.10.262-1", "kbuild  = linux-kbuild-5.10"),
     r"pins:7: kbuild must be NAME=VERSION"),
    (("headers = linux-headers-5.10.0-46-amd64=", "headers = linux-headers-5.10.0-45-amd64="),
     r"pins:5: \[5.10\] headers .*expected linux-headers-5.10.0-46-amd64"),
    (("common  = linux-headers-5.10.0-46-common", "common  = linux-headers-5.10.0-45-common"),
     r"pins:6: \[5.10\] common .*expected linux-headers-5.10.0-46-common"),
    (("kbuild  = linux-kbuild-5.10=", "kbuild  = linux-kbuild-6.1="),
     r"pins:7: \[5.10\] kbuild .*expected linux-kbuild-5.10"),
    (("common  = linux-headers-5.10.0-46-common=5.10.262-1",
      "common  = linux-headers-5.10.0-46-common=5.10.261-1"),
     r"pins:6: .*version 5.10.261-1 differs .*raise all four together"),
    (("image   = linux-image-5.10.0-46-amd64-unsigned", "image   = linux-image-6.1.0-46-amd64"),
     r"pins:4: .*release 6.1.0-46-amd64 is not of series 5.10"),
    (("image   = linux-image-5.10.0-46-amd64-unsigned", "image   = linux-headers-5.10.0-46-amd64"),
     r"pins:4: .*expected linux-image-RELEASE"),
    (("dist    = bullseye", "dist    = Bullseye 11"), r"pins:3: expected `key = value`"),
    (("# a comment\n", "dist = x\n"), r"pins:1: `dist` before any \[section\]"),
])
def test_malformed_pins_name_the_line(edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(km.PinError, match=message):
        km.parse_pins(GOOD.replace(old, new, 1), "pins")


def test_a_file_without_series_is_refused():
    with pytest.raises(km.PinError, match="no \\[SERIES\\] section"):
        km.parse_pins("[tools]\nvirtme-ng = 1.42\n", "pins")


# --- the guest -----------------------------------------------------------------------------

def test_the_guest_script_mounts_tracefs_and_runs_the_command_from_the_repo(pins, tmp_path):
    s = pins.series["6.12"]
    text = km.guest_script(s, tmp_path / "g", ["sh", "-c", "echo 'a b' > $MATRIX_OUT/x"], 600,
                           repo=Path("/src/repo"), env={"CI": "true"})
    assert "mount -t tracefs nodev /sys/kernel/tracing" in text
    assert f"export MATRIX_OUT={tmp_path}/g/out" in text
    assert "export MATRIX_RELEASE=6.12.118+deb13-amd64" in text
    assert "export CI=true" in text
    assert "cd /src/repo" in text
    assert "timeout -k 10 600 sh -c 'echo '\"'\"'a b'\"'\"' > $MATRIX_OUT/x'" in text
    assert text.index('"$d/started"') < text.index("timeout -k")      # boot time ends here
    assert text.rstrip().endswith("sync")
    assert 'mv "$d/rc.tmp" "$d/rc"' in text


def test_the_guest_boots_under_tcg_with_two_cpus_and_a_shared_results_dir(pins, tmp_path):
    s = pins.series["5.10"]
    layout = km.Layout(tmp_path)
    cmd = km.vng_command(layout, s, tmp_path / "run/5.10", repo=Path("/src/repo"))
    assert cmd[0] == str(tmp_path / "vng/bin/vng")
    assert cmd[cmd.index("--run") + 1] == str(layout.vmlinuz(s))
    assert "--disable-kvm" in cmd
    assert cmd[cmd.index("--cpus") + 1] == "2"
    assert cmd[cmd.index("--memory") + 1] == "3G"
    assert cmd[cmd.index("--rwdir") + 1] == str(tmp_path / "run/5.10")
    assert cmd[cmd.index("--overlay-rwdir") + 1] == "/src/repo"
    assert cmd[-1] == f"/bin/bash {tmp_path / 'run/5.10/guest.sh'}"


# --- availability --------------------------------------------------------------------------

SESSION = {"type": "session", "kernel": "6.1.0-57-amd64", "kinds": {
    "syn_drop": {"available": False, "via": "skb:consume_skb",
                 "why": "skb:consume_skb has no location field (Linux 6.3+)"},
    "tw_reuse_out": {"available": True, "via": "timer:timer_cancel"}}}


def test_the_session_line_gives_the_kinds():
    out = json.dumps(SESSION) + '\n{"type":"end"}\n'
    assert km.parse_watch(out, "6 warnings generated.\n", 0) == (SESSION["kinds"], "")


def test_without_a_session_line_the_tracers_one_line_error_is_kept():
    err = "In file included from x.h\ntracer: this kernel's BTF lacks a field: sk_buff.foo\n"
    assert km.parse_watch("", err, 1) == (None, "tracer: this kernel's BTF lacks a field: "
                                                "sk_buff.foo")
    assert km.parse_watch("", "Traceback\nKeyError: 'x'\n", 1) == (None, "KeyError: 'x'")
    assert km.parse_watch("", "", 1)[1] == "exit 1, no session line and no error"


def test_the_table_has_a_row_per_kernel_and_kind_and_one_per_failed_kernel():
    results = [km.Availability("6.1", "6.1.0-57-amd64", SESSION["kinds"]),
               km.Availability("5.10", "5.10.0-46-amd64", None, "tracer: it broke")]
    text = km.format_availability(results)
    lines = text.splitlines()
    assert lines[0].split() == ["KERNEL", "RELEASE", "KIND", "STATUS"]
    assert lines[1].split(None, 3) == ["6.1", "6.1.0-57-amd64", "syn_drop",
                                       "unavailable (skb:consume_skb has no location field "
                                       "(Linux 6.3+))"]
    assert lines[2].endswith("available (via timer:timer_cancel)")
    assert lines[3].split(None, 3) == ["5.10", "5.10.0-46-amd64", "*", "FAILED (tracer: it broke)"]
    matrix = km.format_matrix(results).splitlines()
    assert matrix[0].split() == ["KIND", "6.1", "5.10"]
    assert matrix[1].split() == ["syn_drop", "no", "FAILED"]
    assert matrix[2].split() == ["tw_reuse_out", "yes", "FAILED"]


def test_versions_order_naturally():
    assert km.version_key("5.10.262-1") > km.version_key("5.10.99-1")
    assert km.version_key("6.1.192-3") > km.version_key("6.1.192-2")


def test_notes_name_kernels_whose_tracer_started_but_wrote_to_stderr():
    warn = "In file included from x.h:1:\nx.h:77:8: warning: 'nocf_check' attribute ignored\n"
    results = [km.Availability("6.12", "r", SESSION["kinds"], stderr=warn, where="/runs/1/6.12"),
               km.Availability("6.1", "r", SESSION["kinds"], stderr=""),
               km.Availability("5.10", "r", None, "tracer: no", stderr="tracer: no\n")]
    assert km.format_notes(results) == (
        "6.12: the tracer wrote 2 lines on stderr, e.g. x.h:77:8: warning: 'nocf_check' "
        "attribute ignored (all in /runs/1/6.12/stderr)\n")


def test_group_members_finds_what_is_left_of_a_guests_process_group():
    child = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert km.group_members(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert km.group_members(child.pid) == []
