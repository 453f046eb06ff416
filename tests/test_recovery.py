"""A killed server loses at most about a second of a performance, and says so on restart."""

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import av

from tests.peers import Publisher

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_server(data: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stage",
            "--port",
            str(port),
            "--data",
            str(data),
            "--ice-address",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/api/stages") as r:
                    if r.status == 200:
                        return process
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    process.kill()
    raise AssertionError("server did not start")


async def test_sigkill_mid_show_keeps_all_but_about_a_second(tmp_path):
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    server = await start_server(data, port)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/stages", json={"name": "Crash"}) as r:
                stage = await r.json()
        publisher = await Publisher(base, stage["id"], stage["key"]).start()
        live_at = time.monotonic()
        await asyncio.sleep(6)
        os.kill(server.pid, signal.SIGKILL)
        killed_after = time.monotonic() - live_at
        server.wait()
        await publisher.pc.close()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()

    server = await start_server(data, port)
    try:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {stage['key']}"}
            url = f"{base}/api/stages/{stage['id']}/performances"
            async with http.get(url, headers=headers) as r:
                (performance,) = (await r.json())["performances"]
            recording = performance["recording"]
            assert recording["state"] == "ready", performance
            async with http.get(base + recording["url"], headers=headers) as r:
                assert r.status == 200
                payload = await r.read()
            async with http.get(f"{base}/api/stages") as r:
                assert (await r.json())["stages"] == [], (
                    "nothing is live after a restart"
                )
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)

    with av.open(io.BytesIO(payload)) as container:
        assert container.duration, "the repaired file states its duration"
        duration = container.duration / 1e6
        frames = sum(1 for _ in container.decode(video=0))
    # The performance went live a moment after the publisher connected, so the file is
    # a little shorter than the time we measured even before the kill cost anything.
    lost = killed_after - duration
    print(
        f"killed after {killed_after:.2f} s, recovered {duration:.2f} s ({frames} frames)"
    )
    assert lost < 1.6, f"lost {lost:.2f} s of {killed_after:.2f} s"
    assert frames > 25 * duration * 0.8
    assert abs(performance["duration"] - duration) < 0.5, performance
