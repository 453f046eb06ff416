"""Stopping the server as a service manager does (SIGTERM) ends every show cleanly:
it says so in its log, and the recording being made is finished, not left half-written."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys

import aiohttp

from stage.recorder.files import LIVE_SUFFIX

from .peers import Publisher
from .show import check_file


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def start_server(port: int, data) -> tuple[asyncio.subprocess.Process, bytes]:
    """`python -m stage` on 127.0.0.1:`port`, its log in its stdout; returns it once
    it says it runs, with what it logged until then."""
    server = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "stage", "--port", str(port), "--data", str(data)),
        *("--ice-address", "127.0.0.1"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started = b""
    try:
        while b"Stage is running" not in started:
            line = await asyncio.wait_for(server.stdout.readline(), 60)
            assert line, f"the server ended before it ran: {started.decode()}"
            started += line
    except BaseException:
        server.kill()
        await server.wait()
        raise
    return server, started


async def test_sigterm_ends_the_shows_and_finishes_their_recordings(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    server, started = await start_server(port, data)
    publisher = None
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/stages", json={"name": "Last Set"}) as r:
                assert r.status == 201, await r.text()
                stage = await r.json()
            publisher = await Publisher(base, stage["id"], stage["key"]).start()
            for _ in range(100):
                async with http.get(f"{base}/api/stages") as r:
                    if any(s["id"] == stage["id"] for s in (await r.json())["stages"]):
                        break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the stage never went live")
        await asyncio.sleep(3)

        server.send_signal(signal.SIGTERM)
        rest, _ = await asyncio.wait_for(server.communicate(), 30)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        if publisher is not None:
            await publisher.stop(say_goodbye=False)

    log = (started + rest).decode()
    assert "Stage stopping: ending 1 live stages and 0 visits" in log, log
    assert "Stage stopped: every recording closed" in log, log
    assert not list(data.rglob(f"*{LIVE_SUFFIX}")), "a recording was left unfinished"
    recordings = [p for p in data.rglob("*") if p.suffix in (".webm", ".mkv")]
    assert len(recordings) == 1, recordings
    checked = check_file(recordings[0])
    assert checked.counts.get("video", 0) > 30, checked
    assert checked.audio_seconds > 2, checked
