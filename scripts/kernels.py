"""The kernel matrix: Debian's own kernels, pinned in kernels/debian.pin, booted under QEMU
(virtme-ng, TCG) with this machine's root file system, to run a command on each.

    scripts/kernels list                          the pins and what is derived from them
    scripts/kernels fetch [SERIES...]             download, unpack, install the tools
    scripts/kernels run [--series S]... [--timeout S] [--out DIR] [--json] -- COMMAND...
    scripts/kernels availability [--series S]... [--json]
    scripts/kernels newest [SERIES...]            the newest builds in Debian's archive

SERIES are the pin file's sections (5.10, 6.1, 6.12); `availability` also takes `host` (the
running kernel, no guest). Needs root. Progress and errors go to stderr, one line each;
stdout carries only results.

fetch: the pinned packages through private apt lists (never /etc/apt), unpacked with
dpkg-deb -x into $KERNELS_CACHE/kernels/RELEASE, with /lib/modules/RELEASE/build and source
linked to the headers there and depmod run; qemu-system-x86 and busybox-static from the
machine's apt; virtme-ng from PyPI in $KERNELS_CACHE/vng. Fast and silent when all is there.

run: `fetch`, then one guest per series, one after the other (TCG, 2 CPUs, 3 GiB, no
network): COMMAND runs as root in the repository (writable; writes vanish), tracefs mounted,
under `timeout` (--timeout minus 120 s for the boot; default --timeout 900 s per guest, after
which the host stops the guest). Its environment: MATRIX_OUT (a writable directory that
reaches the host), MATRIX_SERIES, MATRIX_RELEASE, MATRIX_REPO, and CI when set. Results
in DIR/SERIES/: stdout, stderr, rc, out/ (MATRIX_OUT), console.log (the guest's console),
guest.sh, and DIR/summary.json; DIR defaults to a new directory under $KERNELS_CACHE/runs
(the 20 newest are kept). Exit 0 when COMMAND exited 0 on every kernel, else 1.
The project's .venv works in the guest (./scripts/setup creates it; `availability` runs it).

availability: `.venv/bin/tracer watch --json --duration 3` on each kernel; prints kind x
kernel (yes / no / FAILED), then each kind's session-line status: available (via ...),
unavailable (why), or FAILED (the tracer's one-line error).

Environment:

    KERNELS_CACHE                   where kernels, apt state, virtme-ng and runs live
                                    (default /opt/debian-kernels; never inside the repository)
    KERNELS_DEBIAN_MIRROR           Debian archive base URL (default: taken from this
    KERNELS_DEBIAN_SECURITY_MIRROR  machine's apt sources); the security archive's
    KERNELS_APPEND                  extra guest kernel arguments (e.g. "clocksource=tsc
                                    tsc=reliable": about 15 % faster under TCG than hpet)

Only the standard library: this runs before the project's .venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN_FILE = ROOT / "kernels" / "debian.pin"
DEFAULT_CACHE = Path("/opt/debian-kernels")
ROLES = ("image", "headers", "common", "kbuild")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# Debian packages the host needs to boot the guests: package -> a file it installs.
HOST_PACKAGES = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",       # virtme-ng's initramfs (Debian's 9p is a module)
    "file": "/usr/bin/file",                # virtme-ng reads the image's version with it
    "kmod": "/usr/sbin/depmod",
    "coreutils": "/usr/bin/timeout",
}
GUEST_CPUS = 2
GUEST_MEMORY = "3G"
DEFAULT_TIMEOUT = 900          # seconds per guest, boot included (availability too)
BOOT_ALLOWANCE = 120           # of which the command gets all but this
HOST = "host"                  # the running kernel, in `availability`
KEEP_RUNS = 20                 # result directories kept under $KERNELS_CACHE/runs
PROG = "scripts/kernels"


class PinError(ValueError):
    """The pin file is malformed or inconsistent: `path:line: what`."""


class KernelsError(RuntimeError):
    """A failure worth one line on stderr (exit 1)."""


# ---------------------------------------------------------------------------------------------
# The pin file


@dataclass(frozen=True)
class Package:
    name: str
    version: str

    @property
    def spec(self) -> str:
        """What apt-get download takes: NAME=VERSION."""
        return f"{self.name}={self.version}"

    @property
    def deb_prefix(self) -> str:
        """How the downloaded file's name starts (apt writes NAME_VERSION_ARCH.deb, with an
        epoch's colon as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_"


@dataclass(frozen=True)
class Series:
    name: str                  # 5.10
    dist: str                  # bullseye
    packages: dict[str, Package]
    line: int = 0              # where its section starts, for messages

    @property
    def image(self) -> Package:
        return self.packages["image"]

    @property
    def version(self) -> str:
        return self.image.version

    @property
    def release(self) -> str:
        """The kernel release (`uname -r`), from the image package's name."""
        name = self.image.name.removeprefix("linux-image-")
        return name.removesuffix("-unsigned")

    @property
    def flavour(self) -> str:
        return self.release.rsplit("-", 1)[1]

    @property
    def abi(self) -> str:
        """RELEASE without its flavour: 5.10.0-46, 6.12.118+deb13."""
        return self.release.rsplit("-", 1)[0]

    @property
    def suites(self) -> tuple[str, str, str]:
        return (self.dist, f"{self.dist}-updates", f"{self.dist}-security")

    def specs(self) -> list[str]:
        return [self.packages[r].spec for r in ROLES]

    def stamp(self) -> str:
        """What an unpacked kernel records, to tell whether it is still the pinned one."""
        return "".join(f"{r} {self.packages[r].spec}\n" for r in ROLES)

    def section(self) -> str:
        lines = [f"[{self.name}]", f"dist    = {self.dist}"]
        lines += [f"{r:<7} = {self.packages[r].spec}" for r in ROLES]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Pins:
    series: dict[str, Series]
    tools: dict[str, str] = field(default_factory=dict)
    path: str = "kernels/debian.pin"

    def select(self, names: Sequence[str]) -> list[Series]:
        if not names:
            return list(self.series.values())
        unknown = [n for n in names if n not in self.series]
        if unknown:
            raise KernelsError(f"no series {', '.join(unknown)} in {self.path} "
                               f"(pinned: {', '.join(self.series)})")
        return [self.series[n] for n in dict.fromkeys(names)]


SECTION = re.compile(r"^\[([^\]\s]+)\]$")
ASSIGN = re.compile(r"^([a-z][a-z0-9-]*)\s*=\s*(\S+)$")
SERIES_NAME = re.compile(r"^[0-9]+\.[0-9]+$")
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
VERSION = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*$")
DIST = re.compile(r"^[a-z]+$")


def parse_pins(text: str, path: str = "kernels/debian.pin") -> Pins:
    """Parse and check the pin file (format: its header comment)."""
    raw: dict[str, dict[str, tuple[str, int]]] = {}
    starts: dict[str, int] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        if m := SECTION.match(line):
            current = m.group(1)
            if current in raw:
                raise PinError(f"{where}: section [{current}] appears twice")
            if current != "tools" and not SERIES_NAME.match(current):
                raise PinError(f"{where}: [{current}] is neither a series (like [6.1]) "
                               "nor [tools]")
            raw[current], starts[current] = {}, number
            continue
        m = ASSIGN.match(line)
        if not m:
            raise PinError(f"{where}: expected `key = value`, got {line!r}")
        if current is None:
            raise PinError(f"{where}: `{m.group(1)}` before any [section]")
        key, value = m.groups()
        if key in raw[current]:
            raise PinError(f"{where}: {key} given twice in [{current}]")
        raw[current][key] = (value, number)

    tools = {k: v for k, (v, _) in raw.pop("tools", {}).items()}
    series = {name: _series(name, keys, starts[name], path) for name, keys in raw.items()}
    if not series:
        raise PinError(f"{path}: no [SERIES] section")
    return Pins(series=series, tools=tools, path=path)


def _series(name: str, keys: dict[str, tuple[str, int]], start: int, path: str) -> Series:
    expected = {"dist", *ROLES}
    missing = sorted(expected - keys.keys())
    if missing:
        raise PinError(f"{path}:{start}: [{name}] lacks {', '.join(missing)}")
    for key, (_, number) in keys.items():
        if key not in expected:
            raise PinError(f"{path}:{number}: unknown key {key!r} in [{name}] "
                           f"(known: dist, {', '.join(ROLES)})")
    dist, number = keys["dist"]
    if not DIST.match(dist):
        raise PinError(f"{path}:{number}: dist {dist!r} is not a Debian codename")
    packages: dict[str, Package] = {}
    for role in ROLES:
        value, number = keys[role]
        pkg, sep, version = value.partition("=")
        if not sep or not PACKAGE_NAME.match(pkg) or not VERSION.match(version):
            raise PinError(f"{path}:{number}: {role} must be NAME=VERSION, got {value!r}")
        packages[role] = Package(pkg, version)
    s = Series(name=name, dist=dist, packages=packages, line=start)

    def bad(role: str, why: str) -> PinError:
        return PinError(f"{path}:{keys[role][1]}: [{name}] {role} {packages[role].name}: {why}")

    image = packages["image"].name
    if not image.startswith("linux-image-") or "-" not in s.release.removeprefix(name):
        raise bad("image", "expected linux-image-RELEASE-unsigned or linux-image-RELEASE")
    if not (s.release == name or s.release.startswith((name + ".", name + "-"))):
        raise bad("image", f"release {s.release} is not of series {name}")
    if image.endswith(("-dbg", "-signed-template")):
        raise bad("image", "not a kernel image package")
    if packages["headers"].name != f"linux-headers-{s.release}":
        raise bad("headers", f"expected linux-headers-{s.release}")
    if packages["common"].name != f"linux-headers-{s.abi}-common":
        raise bad("common", f"expected linux-headers-{s.abi}-common")
    if not packages["kbuild"].name.startswith(f"linux-kbuild-{name}"):
        raise bad("kbuild", f"expected linux-kbuild-{name}...")
    for role in ROLES[1:]:
        if packages[role].version != s.version:
            raise bad(role, f"version {packages[role].version} differs from the image's "
                      f"{s.version} (raise all four together)")
    return s


def load_pins(path: Path = PIN_FILE) -> Pins:
    try:
        text = path.read_text()
    except OSError as e:
        raise KernelsError(f"cannot read {path}: {e.strerror}") from e
    shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    return parse_pins(text, shown)


# ---------------------------------------------------------------------------------------------
# Where things live


@dataclass(frozen=True)
class Layout:
    """The cache's layout: everything outside the repository."""

    cache: Path

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ = os.environ) -> Layout:
        cache = Path(env.get("KERNELS_CACHE") or DEFAULT_CACHE).absolute()
        if cache == ROOT or cache.is_relative_to(ROOT):
            raise KernelsError(f"KERNELS_CACHE={cache} is inside the repository: "
                               "put it elsewhere (default /opt/debian-kernels)")
        return cls(cache)

    @property
    def lock(self) -> Path:
        return self.cache / ".lock"

    @property
    def vng_venv(self) -> Path:
        return self.cache / "vng"

    @property
    def vng(self) -> Path:
        return self.vng_venv / "bin" / "vng"

    @property
    def runs(self) -> Path:
        return self.cache / "runs"

    def apt_dir(self, dist: str) -> Path:
        return self.cache / "apt" / dist

    def kernel_dir(self, s: Series) -> Path:
        """The unpacked packages (`dpkg -x`), one tree per release."""
        return self.cache / "kernels" / s.release

    def vmlinuz(self, s: Series) -> Path:
        return self.kernel_dir(s) / "boot" / f"vmlinuz-{s.release}"

    def modules(self, s: Series) -> Path:
        """Where virtme-ng finds the modules next to the image."""
        return modules_in(self.kernel_dir(s), s.release)

    def headers(self, s: Series) -> Path:
        """Target of /lib/modules/RELEASE/build (the same path in the guest)."""
        return self.kernel_dir(s) / "usr" / "src" / f"linux-headers-{s.release}"

    def common(self, s: Series) -> Path:
        """Target of /lib/modules/RELEASE/source."""
        return self.kernel_dir(s) / "usr" / "src" / s.packages["common"].name

    def stamp(self, s: Series) -> Path:
        return self.kernel_dir(s) / ".pinned"


def modules_in(top: Path, release: str) -> Path:
    """lib/modules/RELEASE of an unpacked tree, or usr/lib/modules/RELEASE where the packages
    ship merged-/usr paths (virtme-ng looks in both)."""
    merged = top / "usr" / "lib" / "modules" / release
    if merged.is_dir() and not (top / "lib" / "modules" / release).is_dir():
        return merged
    return top / "lib" / "modules" / release


def sources_list(s: Series, mirror: str, security: str, keyring: str = KEYRING) -> str:
    """The private apt list for a series' dist: DIST, DIST-updates, DIST-security (main)."""
    opt = f"[arch=amd64 signed-by={keyring}]"
    dist, updates, sec = s.suites
    return (f"deb {opt} {mirror.rstrip('/')} {dist} main\n"
            f"deb {opt} {mirror.rstrip('/')} {updates} main\n"
            f"deb {opt} {security.rstrip('/')} {sec} main\n")


def apt_options(apt_dir: Path) -> list[str]:
    """apt-get/apt-cache options that keep a dist's sources, lists and caches private: the
    machine's own sources and lists are never read or written (its apt.conf, e.g. a proxy,
    still applies)."""
    return ["-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
            "-o", f"Dir::Cache={apt_dir / 'cache'}",
            "-o", "APT::Sandbox::User=root",
            "-o", "Acquire::Languages=none"]


def mirrors_from_indextargets(text: str) -> tuple[str | None, str | None]:
    """Debian's archive and security archive from `apt-get indextargets` records (as
    formatted by find_mirrors): the machine's own, as its apt is set up."""
    main = security = None
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        uri, release, label = parts[0].rstrip("/"), parts[1], parts[2]
        if label == "Debian-Security" or uri.endswith("/debian-security"):
            security = security or uri
        elif (label == "Debian" or uri.endswith("/debian")) and "-" not in release:
            main = main or uri
    return main, security


def find_mirrors() -> tuple[str, str]:
    main = os.environ.get("KERNELS_DEBIAN_MIRROR")
    security = os.environ.get("KERNELS_DEBIAN_SECURITY_MIRROR")
    if not (main and security):
        out = subprocess.run(
            ["apt-get", "indextargets", "--format", "$(REPO_URI)\t$(RELEASE)\t$(LABEL)",
             "Identifier: Packages"], capture_output=True, text=True, check=False).stdout
        found_main, found_security = mirrors_from_indextargets(out)
        main, security = main or found_main, security or found_security
    if not main or not security:
        raise KernelsError("this machine's apt sources name no Debian archive (and security "
                           "archive): set KERNELS_DEBIAN_MIRROR and "
                           "KERNELS_DEBIAN_SECURITY_MIRROR to their base URLs")
    return main, security


# ---------------------------------------------------------------------------------------------
# Small helpers


def say(msg: str) -> None:
    print(f"kernels: {msg}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | Path], what: str, **kw) -> subprocess.CompletedProcess:
    """Run quietly; on failure, one line with the command's last line of output."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False,
                       stdin=subprocess.DEVNULL, **kw)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise KernelsError(f"{what} failed (exit {r.returncode}): {tail[0]}")
    return r


@contextlib.contextmanager
def locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Fetches exclude each other and runs; runs share."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def version_key(v: str) -> list:
    """A natural-order key, close enough to Debian's for choosing the newest build."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.findall(r"\d+|[^\d]+", v)]


# ---------------------------------------------------------------------------------------------
# fetch


def installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                       text=True, check=False)
    return "install ok installed" in r.stdout


def ensure_host_packages() -> None:
    missing = [p for p, f in HOST_PACKAGES.items() if not (installed(p) and Path(f).exists())]
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq",
           "--no-install-recommends", *missing]
    say(f"installing {' '.join(missing)}")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False,
                       stdin=subprocess.DEVNULL)
    if r.returncode != 0:     # the machine's lists may be missing or stale: update once
        run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], "apt-get update",
            env=env)
        run(cmd, f"apt-get install {' '.join(missing)}", env=env)


def ensure_vng(layout: Layout, pins: Pins) -> None:
    want = pins.tools.get("virtme-ng")
    if not want:
        raise KernelsError(f"{pins.path} pins no virtme-ng version ([tools] virtme-ng = X)")
    stamp = layout.vng_venv / ".pinned"
    if layout.vng.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    say(f"installing virtme-ng {want} into {layout.vng_venv}")
    shutil.rmtree(layout.vng_venv, ignore_errors=True)
    run(["/usr/bin/python3", "-m", "venv", layout.vng_venv], "python3 -m venv")
    run([layout.vng_venv / "bin/pip", "install", "-q", "--disable-pip-version-check",
         f"virtme-ng=={want}"], f"pip install virtme-ng=={want}")
    stamp.write_text(want + "\n")


def is_fetched(layout: Layout, s: Series) -> bool:
    st = layout.stamp(s)
    return (st.exists() and st.read_text() == s.stamp() and layout.vmlinuz(s).exists()
            and (layout.modules(s) / "build" / "include").is_dir())


def prepare_apt(layout: Layout, s: Series) -> list[str]:
    apt_dir = layout.apt_dir(s.dist)
    (apt_dir / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (apt_dir / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    mirror, security = find_mirrors()
    (apt_dir / "sources.list").write_text(sources_list(s, mirror, security))
    opts = apt_options(apt_dir)
    run(["apt-get", *opts, "update", "-qq"], f"apt-get update of Debian's {s.dist}")
    return opts


def newest_image(opts: list[str], s: Series) -> Package | None:
    """The newest image of the same series and flavour in the private lists."""
    unsigned = s.image.name.endswith("-unsigned")
    pattern = (rf"^linux-image-{re.escape(s.name)}\.[0-9]+[-+][^ ]*-{re.escape(s.flavour)}"
               + ("-unsigned$" if unsigned else "$"))
    out = subprocess.run(["apt-cache", *opts, "search", "--names-only", pattern],
                         capture_output=True, text=True, check=False).stdout
    names = [line.split(" ", 1)[0] for line in out.splitlines() if line.strip()]
    if not names:
        return None
    out = subprocess.run(["apt-cache", *opts, "madison", *names], capture_output=True,
                         text=True, check=False).stdout
    found = [Package(*(f.strip() for f in line.split("|")[:2]))
             for line in out.splitlines() if line.count("|") >= 2]
    return max(found, key=lambda p: version_key(p.version), default=None)


def check_available(opts: list[str], s: Series, pins: Pins) -> None:
    for role in ROLES:
        pkg = s.packages[role]
        r = subprocess.run(["apt-cache", *opts, "show", pkg.spec], capture_output=True,
                           text=True, check=False)
        if r.returncode == 0 and r.stdout.strip():
            continue
        hint = ""
        newest = newest_image(opts, s)
        if newest and newest != s.image:
            hint = f" (newest there: {newest.spec}; `{PROG} newest {s.name}` prints the section)"
        raise KernelsError(f"{pins.path} [{s.name}] {role} = {pkg.spec} is not in Debian's "
                           f"{s.dist} archive: raise the [{s.name}] pin{hint}")


def fetch_series(layout: Layout, s: Series, pins: Pins) -> float:
    """Download and unpack one pinned kernel; returns the seconds spent (0 if cached)."""
    if is_fetched(layout, s):
        return 0.0
    t0 = time.monotonic()
    say(f"fetching {s.name} ({s.release}, {s.version}) from Debian's {s.dist}")
    opts = prepare_apt(layout, s)
    check_available(opts, s, pins)
    (layout.cache / "kernels").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{s.release}-", dir=layout.cache / "kernels") as t:
        tmp = Path(t)
        debs, tree = tmp / "debs", tmp / "tree"
        debs.mkdir()
        run(["apt-get", *opts, "download", "-qq", *s.specs()], f"apt-get download {s.name}",
            cwd=debs)
        files = {}
        for role in ROLES:
            pkg = s.packages[role]
            found = sorted(debs.glob(pkg.deb_prefix + "*.deb"))
            if len(found) != 1:
                raise KernelsError(f"apt-get download gave no {pkg.deb_prefix}*.deb")
            files[role] = found[0]
        check_dependencies(files["headers"], s, pins)
        for role in ROLES:
            run(["dpkg-deb", "-x", files[role], tree], f"dpkg-deb -x {files[role].name}")
        if not (tree / "boot" / f"vmlinuz-{s.release}").exists():
            raise KernelsError(f"{s.image.name} has no boot/vmlinuz-{s.release}")
        moddir = modules_in(tree, s.release)
        if not moddir.is_dir():
            raise KernelsError(f"{s.image.name} has no lib/modules/{s.release}")
        # bcc finds the headers through these links. They point at the tree's final place,
        # which is the same path inside the guest (its root is this machine's).
        final = layout.kernel_dir(s)
        for link, target in (("build", layout.headers(s)), ("source", layout.common(s))):
            if not (tree / target.relative_to(final)).is_dir():
                raise KernelsError(f"{s.name}: the packages lack {target.relative_to(final)}")
            (moddir / link).unlink(missing_ok=True)
            (moddir / link).symlink_to(target)
        run(["depmod", "-b", moddir.parents[2], s.release], f"depmod {s.release}")
        (tree / ".pinned").write_text(s.stamp())
        if final.exists():
            shutil.rmtree(final)
        tree.rename(final)
    return time.monotonic() - t0


def check_dependencies(headers_deb: Path, s: Series, pins: Pins) -> None:
    """The flavour's headers must depend on the pinned common headers and kbuild."""
    depends = run(["dpkg-deb", "-f", headers_deb, "Depends"], "dpkg-deb -f").stdout
    names = {d.strip().split(" ", 1)[0] for d in re.split(r"[,|]", depends) if d.strip()}
    for role in ("common", "kbuild"):
        if s.packages[role].name not in names:
            raise KernelsError(f"{pins.path} [{s.name}] {role} = {s.packages[role].name}, but "
                               f"{s.packages['headers'].name} depends on: {depends.strip()}")


def fetch(layout: Layout, pins: Pins, selected: list[Series]) -> dict[str, float]:
    if os.geteuid() != 0:
        raise KernelsError("needs root (apt-get, and booting guests with this machine's root)")
    with locked(layout.lock, exclusive=True):
        for stale in (layout.cache / "kernels").glob(".*"):      # a killed fetch's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        ensure_host_packages()
        ensure_vng(layout, pins)
        return {s.name: fetch_series(layout, s, pins) for s in selected}


# ---------------------------------------------------------------------------------------------
# run


@dataclass
class GuestResult:
    series: str
    release: str
    rc: int | None                  # the command's exit code; None: it never finished
    dir: Path
    boot_s: float | None = None     # vng start -> command start
    command_s: float | None = None  # command start -> exit code written
    wall_s: float = 0.0             # vng start -> guest gone
    note: str = ""                  # why there is no rc (timeout, boot failure)

    def to_json(self) -> dict:
        return {"series": self.series, "release": self.release, "rc": self.rc,
                "dir": str(self.dir), "boot_s": _r(self.boot_s), "command_s": _r(self.command_s),
                "wall_s": _r(self.wall_s), "note": self.note}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def guest_script(s: Series, gdir: Path, command: Sequence[str], command_timeout: int,
                 repo: Path = ROOT, env: dict[str, str] | None = None) -> str:
    """What virtme-ng runs as root in the guest: mounts, environment, the command under a
    timeout, its exit code into the shared directory."""
    d = shlex.quote(str(gdir))
    exports = {"MATRIX_OUT": str(gdir / "out"), "MATRIX_SERIES": s.name,
               "MATRIX_RELEASE": s.release, "MATRIX_REPO": str(repo), "HOME": "/root",
               "LANG": "C.UTF-8", "TERM": "dumb",
               "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    exports.update(env or {})
    lines = [
        "#!/bin/bash",
        f"# written by {PROG} run for {s.name} ({s.release}); runs as root in the guest",
        f"d={d}",
        'date +%s.%N > "$d/started"; cat /proc/uptime > "$d/uptime"; uname -r > "$d/uname"',
        "exec </dev/null",
        'mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing '
        '2>>"$d/setup.err"',
        "mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug "
        "2>/dev/null",
        "mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf 2>/dev/null",
        *(f"export {k}={shlex.quote(v)}" for k, v in exports.items()),
        'mkdir -p "$MATRIX_OUT"',
        f"cd {shlex.quote(str(repo))} || exit 125",
        f"timeout -k 10 {int(command_timeout)} {shlex.join(command)} "
        '>"$d/stdout" 2>"$d/stderr"',
        'echo $? > "$d/rc.tmp" && mv "$d/rc.tmp" "$d/rc"',
        "sync",
        "",
    ]
    return "\n".join(lines)


def vng_command(layout: Layout, s: Series, gdir: Path, repo: Path = ROOT) -> list[str]:
    return [str(layout.vng), "--run", str(layout.vmlinuz(s)), "--disable-kvm",
            "--disable-microvm", "--disable-monitor", "--verbose",
            "--cpus", str(GUEST_CPUS), "--memory", GUEST_MEMORY, "--user", "root",
            "--rwdir", str(gdir), "--overlay-rwdir", str(repo), "--cwd", str(repo),
            *(a for x in shlex.split(os.environ.get("KERNELS_APPEND", ""))
              for a in ("--append", x)),
            "--exec", f"/bin/bash {gdir / 'guest.sh'}"]


def group_members(pgid: int) -> list[int]:
    """The processes still in a process group (vng's: virtme-run, qemu)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def boot_one(layout: Layout, s: Series, command: Sequence[str], out: Path,
             timeout: int) -> GuestResult:
    gdir = out / s.name
    gdir.mkdir(parents=True)
    (gdir / "out").mkdir()
    passthrough = {k: os.environ[k] for k in ("CI",) if k in os.environ}
    (gdir / "guest.sh").write_text(guest_script(
        s, gdir, command, max(30, timeout - BOOT_ALLOWANCE), env=passthrough))
    cmd = vng_command(layout, s, gdir)
    (gdir / "vng.cmd").write_text(shlex.join(cmd) + "\n")
    env = dict(os.environ, PATH=f"{layout.vng_venv / 'bin'}:{os.environ.get('PATH', '')}")
    res = GuestResult(s.name, s.release, None, gdir)
    t0 = time.monotonic()
    with open(gdir / "console.log", "wb") as console:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, env=env, cwd=gdir,
                                start_new_session=True)
        try:
            while proc.poll() is None:
                now = time.monotonic() - t0
                if res.boot_s is None and (gdir / "started").exists():
                    res.boot_s = now
                if res.command_s is None and (gdir / "rc").exists() and res.boot_s is not None:
                    res.command_s = now - res.boot_s
                if now > timeout:
                    res.note = f"timed out after {timeout} s"
                    _kill_group(proc)
                    break
                time.sleep(0.2)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            for pid in group_members(proc.pid):   # nothing of the guest outlives it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    res.wall_s = time.monotonic() - t0
    if res.boot_s is None and (gdir / "started").exists():
        res.boot_s = res.wall_s
    rc_file = gdir / "rc"
    if rc_file.exists():
        try:
            res.rc = int(rc_file.read_text().strip())
        except ValueError:
            res.note = f"unreadable exit code {rc_file.read_text()!r}"
        if res.command_s is None and res.boot_s is not None:
            res.command_s = res.wall_s - res.boot_s
        if res.rc == 124:
            res.note = f"the command timed out in the guest ({max(30, timeout - BOOT_ALLOWANCE)} s)"
    elif not res.note:
        res.note = ("the guest never started the command: " if res.boot_s is None else
                    "the command never finished: ") + console_tail(gdir / "console.log")
    return res


def console_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no console output"
    return lines[-1][:300] if lines else "no console output"


def new_run_dir(layout: Layout, out: str | None) -> Path:
    if out:
        path = Path(out).absolute()
        if path.exists() and any(path.iterdir()):
            raise KernelsError(f"--out {path} is not empty")
        if path.is_relative_to(ROOT):
            raise KernelsError(f"--out {path} is inside the repository, which the guest "
                               "sees through an overlay: choose a directory outside it")
        path.mkdir(parents=True, exist_ok=True)
        return path
    layout.runs.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in layout.runs.iterdir() if p.is_dir())
    for stale in old[:max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=layout.runs))


def run_matrix(layout: Layout, pins: Pins, selected: list[Series], command: Sequence[str],
               out: Path, timeout: int) -> list[GuestResult]:
    fetch(layout, pins, selected)
    results = []
    with locked(layout.lock, exclusive=False):
        for s in selected:
            say(f"booting {s.name} ({s.release}) for: {shlex.join(command)}")
            r = boot_one(layout, s, command, out, timeout)
            say(f"{s.name}: " + (f"exit {r.rc}" if r.rc is not None else r.note)
                + f" (boot {_fmt(r.boot_s)}, command {_fmt(r.command_s)}, wall {_fmt(r.wall_s)})")
            results.append(r)
    (out / "summary.json").write_text(json.dumps([r.to_json() for r in results], indent=1) + "\n")
    return results


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def format_results(results: Iterable[GuestResult]) -> str:
    rows = [("SERIES", "RELEASE", "EXIT", "BOOT", "COMMAND", "WALL", "OUTPUT")]
    for r in results:
        rows.append((r.series, r.release, str(r.rc) if r.rc is not None else "-",
                     _fmt(r.boot_s), _fmt(r.command_s), _fmt(r.wall_s),
                     str(r.dir) + (f"  ({r.note})" if r.note else "")))
    return table(rows)


def table(rows: list[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)),
                                r[-1]]).rstrip() for r in rows) + "\n"


# ---------------------------------------------------------------------------------------------
# availability


WATCH = [".venv/bin/tracer", "watch", "--json", "--duration", "3"]


@dataclass
class Availability:
    kernel: str                 # series name or "host"
    release: str
    kinds: dict[str, dict] | None   # the session line's kinds; None when it failed
    error: str = ""             # the tracer's one-line error (or why nothing ran)
    seconds: float = 0.0
    stderr: str = ""            # what the tracer wrote on stderr
    where: str = ""             # where its output is kept

    def to_json(self) -> dict:
        return {"kernel": self.kernel, "release": self.release, "kinds": self.kinds,
                "error": self.error or None, "seconds": round(self.seconds, 1),
                "stderr_lines": len([ln for ln in self.stderr.splitlines() if ln.strip()])}


def parse_watch(stdout: str, stderr: str, rc: int | None) -> tuple[dict | None, str]:
    """The session line's kinds, or the tracer's one-line error."""
    for line in stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "session":
            return rec.get("kinds") or {}, ""
    errors = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    tracer_lines = [ln for ln in errors if ln.startswith("tracer:")]
    if tracer_lines:
        return None, tracer_lines[-1]
    if errors:
        return None, errors[-1]
    return None, f"exit {rc}, no session line and no error" if rc is not None else "no result"


def host_availability(timeout: int) -> Availability:
    t0 = time.monotonic()
    release = os.uname().release
    try:
        r = subprocess.run(WATCH, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        return Availability(HOST, release, None, f"{WATCH[0]} missing: run ./scripts/setup")
    except subprocess.TimeoutExpired:
        return Availability(HOST, release, None, f"timed out after {timeout} s",
                            time.monotonic() - t0)
    kinds, err = parse_watch(r.stdout, r.stderr, r.returncode)
    return Availability(HOST, release, kinds, err, time.monotonic() - t0, r.stderr)


def guest_availability(res: GuestResult) -> Availability:
    def read(name: str) -> str:
        try:
            return (res.dir / name).read_text(errors="replace")
        except OSError:
            return ""
    if res.rc is None and not (res.dir / "stdout").exists():
        return Availability(res.series, res.release, None, res.note, res.wall_s)
    kinds, err = parse_watch(read("stdout"), read("stderr"), res.rc)
    if kinds is None and res.note:
        err = f"{err} ({res.note})"
    return Availability(res.series, res.release, kinds, err, res.command_s or 0.0,
                        read("stderr"), str(res.dir))


def describe(kind: dict) -> str:
    if kind.get("available"):
        return f"available (via {kind.get('via') or '?'})"
    return f"unavailable ({kind.get('why') or 'no reason given'})"


def format_availability(results: list[Availability]) -> str:
    kinds: list[str] = []
    for a in results:
        for k in a.kinds or {}:
            if k not in kinds:
                kinds.append(k)
    rows: list[Sequence[str]] = [("KERNEL", "RELEASE", "KIND", "STATUS")]
    for a in results:
        if a.kinds is None:
            rows.append((a.kernel, a.release, "*", f"FAILED ({a.error})"))
            continue
        for k in kinds:
            rows.append((a.kernel, a.release, k,
                         describe(a.kinds[k]) if k in a.kinds else "not reported"))
    return table(rows)


def format_notes(results: list[Availability]) -> str:
    """Kernels on which the tracer started but still wrote to stderr (e.g. compiler
    warnings), with the first such line."""
    out = []
    for a in results:
        lines = [ln.strip() for ln in a.stderr.splitlines() if ln.strip()]
        if a.kinds is None or not lines:
            continue
        first = next((ln for ln in lines if "warning" in ln or "error" in ln), lines[0])
        where = f" (all in {a.where}/stderr)" if a.where else ""
        out.append(f"{a.kernel}: the tracer wrote {len(lines)} lines on stderr, "
                   f"e.g. {first[:160]}{where}\n")
    return "".join(out)


def format_matrix(results: list[Availability]) -> str:
    """The compact view: kind × kernel, yes / no / FAILED."""
    kinds: list[str] = []
    for a in results:
        for k in a.kinds or {}:
            if k not in kinds:
                kinds.append(k)
    rows: list[Sequence[str]] = [("KIND", *(f"{a.kernel}" for a in results))]
    for k in kinds:
        cells = []
        for a in results:
            if a.kinds is None:
                cells.append("FAILED")
            elif k not in a.kinds:
                cells.append("?")
            else:
                cells.append("yes" if a.kinds[k].get("available") else "no")
        rows.append((k, *cells))
    rows = [(*r, "") for r in rows]
    return table(rows)


# ---------------------------------------------------------------------------------------------
# newest


def newest(layout: Layout, pins: Pins, selected: list[Series]) -> str:
    """The pin sections the newest builds in Debian's archive would give."""
    out = []
    with locked(layout.lock, exclusive=True):
        for s in selected:
            opts = prepare_apt(layout, s)
            img = newest_image(opts, s)
            if img is None:
                raise KernelsError(f"no {s.name} image in Debian's {s.dist} archive")
            release = img.name.removeprefix("linux-image-").removesuffix("-unsigned")
            headers = f"linux-headers-{release}"
            show = run(["apt-cache", *opts, "show", f"{headers}={img.version}"],
                       f"apt-cache show {headers}").stdout
            depends = next((ln for ln in show.splitlines() if ln.startswith("Depends:")), "")
            kbuild = re.search(r"(linux-kbuild-[^ ,]+)", depends)
            abi = release.rsplit("-", 1)[0]
            new = Series(s.name, s.dist, {
                "image": img, "headers": Package(headers, img.version),
                "common": Package(f"linux-headers-{abi}-common", img.version),
                "kbuild": Package(kbuild.group(1) if kbuild else "?", img.version)})
            mark = "" if new.stamp() == s.stamp() else "   # differs from the pin"
            out.append(new.section().replace("\n", mark + "\n", 1))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the pins and the names and paths derived from them")
    p = sub.add_parser("fetch", help="download and unpack the pinned kernels, install tools")
    p.add_argument("series", nargs="*")
    p = sub.add_parser("newest", help="print pin sections for the newest builds in the archive")
    p.add_argument("series", nargs="*")
    p = sub.add_parser("run", help="run COMMAND as root in a guest of each pinned kernel")
    p.add_argument("--series", action="append", default=[], metavar="S")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                   help=f"seconds per guest, boot included (default {DEFAULT_TIMEOUT})")
    p.add_argument("--out", help="results directory (default: a new one under "
                   "$KERNELS_CACHE/runs)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("availability",
                       help="which kinds the tracer offers on each kernel (tracer watch)")
    p.add_argument("--series", action="append", default=[], metavar="S",
                   help="a pinned series or `host` (default: host and every pin)")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT, help="seconds per kernel")
    p.add_argument("--out", help="results directory")
    p.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt   # unwinds through boot_one, which stops its guest
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        pins = load_pins()
        layout = Layout.from_env()
        if args.cmd == "list":
            for s in pins.series.values():
                print(f"[{s.name}] {s.dist}: release {s.release}, version {s.version}")
                for r in ROLES:
                    print(f"  {r:<8}{s.packages[r].spec}")
                print(f"  vmlinuz {layout.vmlinuz(s)}")
                print(f"  build   {layout.headers(s)}")
                print(f"  source  {layout.common(s)}")
                print(f"  fetched {'yes' if is_fetched(layout, s) else 'no'}")
            return 0
        if args.cmd == "fetch":
            t0 = time.monotonic()
            spent = fetch(layout, pins, pins.select(args.series))
            done = [n for n, t in spent.items() if t]
            if done:
                say(f"fetched {', '.join(done)} in {time.monotonic() - t0:.1f} s")
            return 0
        if args.cmd == "newest":
            print(newest(layout, pins, pins.select(args.series)), end="")
            return 0
        if args.cmd == "run":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                ap.error("run needs a command after --")
            out = new_run_dir(layout, args.out)
            results = run_matrix(layout, pins, pins.select(args.series), command, out,
                                 args.timeout)
            for r in results:
                if r.rc != 0:          # the end of a failed command's stderr, for CI logs
                    tail = (r.dir / "stderr").read_text(errors="replace").splitlines()[-5:] \
                        if (r.dir / "stderr").exists() else []
                    for line in tail:
                        print(f"{r.series}| {line}", file=sys.stderr)
            if args.json:
                print(json.dumps([r.to_json() for r in results], indent=1))
            else:
                print(format_results(results), end="")
            return 0 if all(r.rc == 0 for r in results) else 1
        if args.cmd == "availability":
            return availability(layout, pins, args)
    except (PinError, KernelsError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 2


def availability(layout: Layout, pins: Pins, args: argparse.Namespace) -> int:
    wanted = args.series or [HOST, *pins.series]
    if os.geteuid() == 0:          # the tracer and its .venv, as ./scripts/run would have them
        r = subprocess.run([ROOT / "scripts" / "setup"], stdout=sys.stderr, check=False,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise KernelsError(f"scripts/setup failed (exit {r.returncode})")
    guests = pins.select([n for n in wanted if n != HOST]) if any(
        n != HOST for n in wanted) else []
    t0 = time.monotonic()
    results: list[Availability] = []
    if HOST in wanted:
        say(f"host ({os.uname().release}): {shlex.join(WATCH)}")
        results.append(host_availability(args.timeout))
    out = None
    if guests:
        out = new_run_dir(layout, args.out)
        for r in run_matrix(layout, pins, guests, WATCH, out, args.timeout):
            results.append(guest_availability(r))
    total = time.monotonic() - t0
    if out:
        (out / "availability.json").write_text(
            json.dumps([a.to_json() for a in results], indent=1) + "\n")
    if args.json:
        print(json.dumps({"total_s": round(total, 1), "kernels": [a.to_json() for a in results]},
                         indent=1))
    else:
        print(format_matrix(results))
        print(format_availability(results), end="")
        if notes := format_notes(results):
            print("\n" + notes, end="")
    say(f"availability: {len(results)} kernels in {total:.1f} s"
        + (f"; outputs in {out}" if out else ""))
    return 0 if all(a.kinds is not None for a in results) else 1


if __name__ == "__main__":
    sys.exit(main())
