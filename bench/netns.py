"""A private network for a benchmark run: its own loopback and a veth holding 127.0.0.1/32.

Janus (libnice) refuses to gather candidates on interfaces flagged loopback and would
then gather on the machine's real ones. Inside `unshare -n` the only interfaces are a
fresh `lo` and the veth pair made here; the veth end `stage0` carries 127.0.0.1/32 and
is not flagged loopback, so Janus gathers 127.0.0.1 on it (`ice_enforce_list`), and
nothing in the namespace can reach any other host. The namespace, and the veth pair
with it, disappears when the last process in it exits.

`reexec_inside()` runs the current command again inside a new namespace (as root) and
returns its exit status; the inner run sees `inside()` true and calls `set_up()`.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

MARK = "STAGE_BENCH_NETNS"
INTERFACE = "stage0"
PEER = "stage1"


def _namespace() -> str:
    return os.readlink("/proc/self/ns/net")


def inside() -> bool:
    """Whether this process runs in a namespace that `reexec_inside` made."""
    outer = os.environ.get(MARK)
    return outer is not None and outer != _namespace()


def set_up() -> None:
    """Bring up lo and the veth pair; no IPv6, so no link-local addresses to gather."""
    commands = [
        ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"],
        ["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"],
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", INTERFACE, "type", "veth", "peer", "name", PEER],
        ["ip", "addr", "add", "127.0.0.1/32", "dev", INTERFACE],
        ["ip", "link", "set", INTERFACE, "up"],
        ["ip", "link", "set", PEER, "up"],
    ]
    for command in commands:
        subprocess.run(command, check=True)
    addresses = subprocess.run(
        ["ip", "-o", "addr"], check=True, capture_output=True, text=True
    ).stdout
    for line in addresses.splitlines():
        address = line.split()[3]
        if not address.startswith("127."):
            raise RuntimeError(f"unexpected address in the bench namespace: {line}")


def reexec_inside(module: str, args: list[str], timeout: float) -> int:
    """Run `python -m module args` in a new network namespace; kill it after `timeout`.

    The inner run is killed by its PID; its own children die with it (the inner run
    starts them with a parent-death signal)."""
    if os.geteuid() != 0:
        raise SystemExit("the bench namespace needs root (unshare -n)")
    if not Path("/usr/bin/unshare").exists():
        raise SystemExit("unshare (util-linux) is missing")
    process = subprocess.Popen(
        ["unshare", "-n", "--", sys.executable, "-m", module, *args],
        env={**os.environ, MARK: _namespace()},
    )
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.error(
            "the bench ran past its hard limit of %.0f s: stopping it", timeout
        )
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        return process.wait()


def die_with_parent() -> None:
    """For `preexec_fn`: the child gets SIGKILL when the process that started it ends."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
