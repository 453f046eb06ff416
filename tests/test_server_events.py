"""A page's event stream whose client vanished without a word is noticed and freed.

B28: a browser whose network dies (a firewall dropping its packets, a laptop lid shut,
a phone leaving Wi-Fi) sends no FIN and no RST. The server's writes then wait
unacknowledged, and TCP only gives up after its retries (about 15 minutes), all the
while holding the stream's task, its socket and its place on the bulletin.

The dead network is made for real: the server and its client run in a network
namespace of their own (`unshare -n`, as root), whose loopback is switched off under
them, so every packet is lost and neither side is told. Once in one process, once
through the front (`--workers 2`), which must free its end and have the worker free its.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Two heartbeats of the stream, the most B28 allows.
NOTICED_WITHIN = 15.0

CUT_OFF_CLIENT = """
import asyncio, json, socket, subprocess, sys, time
from pathlib import Path

import aiohttp
from aiohttp import web

from stage.appkeys import VENUE
from stage.config import Settings
from stage.server import create_app


async def main():
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    settings = Settings(data=Path(sys.argv[1]), ice_addresses=("127.0.0.1",))
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    bulletin = app[VENUE].bulletin
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://127.0.0.1:{port}/api/stages", json={"name": "Cut off"}
        ) as r:
            stage = await r.json()

    # A page's event stream, read until its first update.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /api/stages/{stage['id']}/events HTTP/1.1\\r\\n"
        "Host: 127.0.0.1\\r\\n\\r\\n".encode()
    )
    await writer.drain()
    while b"data:" not in await reader.readline():
        pass
    listening = bulletin.listening

    # Every packet is lost from now on, both ways, and no one is told.
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    cut = time.monotonic()
    freed_after = None
    while time.monotonic() - cut < float(sys.argv[2]):
        if bulletin.listening < listening:
            freed_after = time.monotonic() - cut
            break
        await asyncio.sleep(0.25)
    print(json.dumps({"listening": listening, "freed_after": freed_after}), flush=True)
    writer.transport.abort()
    await runner.cleanup()


asyncio.run(main())
"""


def test_an_event_stream_whose_client_vanished_is_freed_within_two_heartbeats(
    tmp_path,
):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace of its own")
    waited = NOTICED_WITHIN + 10
    result = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-c",
            CUT_OFF_CLIENT,
            str(tmp_path / "data"),
            str(waited),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=waited + 60,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"dead client: {seen}")
    assert seen["listening"] == 1, seen
    assert seen["freed_after"] is not None, (
        f"the stream of a client cut off {waited:.0f} s ago is still held: {seen}"
    )
    assert seen["freed_after"] <= NOTICED_WITHIN, (
        f"a vanished client's stream was freed after {seen['freed_after']:.1f} s, "
        f"more than {NOTICED_WITHIN:.0f} s"
    )


# The same through the front (`--workers 2`): the client's TCP connection ends at the
# front, the stream itself is the worker's, behind a Unix socket.
FRONT_CUT_OFF_CLIENT = """
import http.client, json, os, re, signal, socket, subprocess, sys, time

data, log_path, waited = sys.argv[1], sys.argv[2], float(sys.argv[3])
port = 8080  # the namespace is new: every port in it is free


def ss(*query):
    found = subprocess.run(["ss", "-H", *query], capture_output=True, text=True)
    return found.stdout.splitlines()


def front_ends():
    # The front's ends of its clients' TCP connections.
    return len(ss("-tn", "state", "established", f"( sport = :{port} )"))


def worker_ends(path):
    # The worker's ends of the front's connections to it: each stays listed until
    # the worker closes it, whatever the front did with its own end.
    return len(ss("-x", "src", path))


def log():
    with open(log_path) as text:
        return text.read()


subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
server = subprocess.Popen(
    [sys.executable, "-m", "stage", "--workers", "2", "--port", str(port),
     "--data", data, "--ice-address", "127.0.0.1"],
    stdout=open(log_path, "wb"),
    stderr=subprocess.STDOUT,
)
try:
    started = time.monotonic()
    while "Stage is running" not in log():
        if server.poll() is not None or time.monotonic() - started > 60:
            sys.exit("the server did not start")
        time.sleep(0.2)

    api = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    api.request("POST", "/api/stages", json.dumps({"name": "Cut off"}),
                {"Content-Type": "application/json"})
    stage = json.loads(api.getresponse().read())
    api.close()

    # A page's event stream, read until its first update.
    client = socket.create_connection(("127.0.0.1", port), timeout=10)
    client.sendall(
        f"GET /api/stages/{stage['id']}/events HTTP/1.1\\r\\n"
        "Host: 127.0.0.1\\r\\n\\r\\n".encode()
    )
    reader = client.makefile("rb")
    head = b""
    while b"data:" not in (line := reader.readline()):
        head += line
    worker = re.search(rb"X-Stage-Worker: (\\d+)", head).group(1).decode()
    listening = "\\n".join(ss("-xl"))
    path = re.search(rf"(\\S+/worker-{worker}\\.sock)", listening).group(1)
    before = {"front": front_ends(), "worker": worker_ends(path)}

    # Every packet is lost from now on, both ways, and no one is told.
    subprocess.run(["ip", "link", "set", "lo", "down"], check=True)
    cut = time.monotonic()
    gone_after = {"front": None, "worker": None}
    while time.monotonic() - cut < waited and None in gone_after.values():
        now = {"front": front_ends(), "worker": worker_ends(path)}
        for end, count in now.items():
            if gone_after[end] is None and count < before[end]:
                gone_after[end] = time.monotonic() - cut
        time.sleep(0.25)
    print(json.dumps({"before": before, "gone_after": gone_after}), flush=True)
    client.close()
finally:
    server.send_signal(signal.SIGTERM)  # the front stops its workers
    try:
        server.wait(40)
    except subprocess.TimeoutExpired:
        server.kill()  # its workers end when it is gone
        server.wait()
"""


def test_an_event_stream_through_the_front_whose_client_vanished_is_freed(tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare for a network namespace of its own")
    waited = NOTICED_WITHIN + 5
    log = tmp_path / "stage.log"
    result = subprocess.run(
        [
            "unshare",
            "-n",
            sys.executable,
            "-c",
            FRONT_CUT_OFF_CLIENT,
            str(tmp_path / "data"),
            str(log),
            str(waited),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=waited + 120,
    )
    said = log.read_text()[-3000:] if log.exists() else ""
    assert result.returncode == 0, result.stderr[-3000:] + said
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"dead client through the front: {seen}")
    assert seen["before"] == {"front": 1, "worker": 1}, seen
    for end, where in (("front", "the front"), ("worker", "the worker")):
        after = seen["gone_after"][end]
        assert after is not None, (
            f"{where} still holds the stream of a client cut off {waited:.0f} s "
            f"ago: {seen}"
        )
        assert after <= NOTICED_WITHIN, (
            f"{where} freed a vanished client's stream after {after:.1f} s, more "
            f"than {NOTICED_WITHIN:.0f} s: {seen}"
        )
