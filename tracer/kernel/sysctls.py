"""The sysctls that shape refusals, read as they are now (for the session line and doctor)."""

from __future__ import annotations

import os

REFUSAL_SYSCTLS: tuple[str, ...] = (
    "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_abort_on_overflow", "net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_tw_reuse_delay",
    "net.ipv4.tcp_timestamps", "net.ipv4.tcp_max_tw_buckets", "net.ipv4.tcp_fin_timeout",
    "net.ipv4.ip_local_port_range", "net.ipv4.tcp_rfc1337", "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
)


def read_sysctls(root: str = "/proc/sys",
                 names: tuple[str, ...] = REFUSAL_SYSCTLS) -> dict[str, str]:
    """Dotted name -> value (whitespace collapsed); sysctls this kernel lacks are skipped."""
    out: dict[str, str] = {}
    for name in names:
        try:
            with open(os.path.join(root, *name.split("."))) as f:
                out[name] = " ".join(f.read().split())
        except OSError:
            continue
    return out
