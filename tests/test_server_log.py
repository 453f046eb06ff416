"""The server's log is the server's: a client cannot write lines of its own into it."""

from __future__ import annotations

import asyncio

import aiohttp

from .test_server_stop import free_port, start_server

# A path that decodes to a second log line, and a NUL byte (grep would call the log a
# binary file and hide it).
FORGED = "2026-12-05 10:01:39,655 INFO stage.venue: stage forged: ended"


async def test_a_path_with_a_newline_or_nul_stays_on_its_own_log_line(tmp_path):
    port = free_port()
    server, started = await start_server(port, tmp_path / "data")
    try:
        base = f"http://127.0.0.1:{port}"
        forged = FORGED.replace(" ", "%20").replace(",", "%2C")
        async with aiohttp.ClientSession() as http:
            for path in (f"/whep/abc%0a{forged}", "/whep/abc%0d%00zzz"):
                async with http.post(
                    base + path,
                    data="v=0\r\n",
                    headers={"Content-Type": "application/sdp"},
                ) as response:
                    assert response.status == 404, await response.text()
        server.terminate()
        rest, _ = await asyncio.wait_for(server.communicate(), 30)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()

    log = (started + rest).decode()
    lines = log.splitlines()
    assert "\x00" not in log and "\r" not in log, repr(log[-2000:])
    assert not [line for line in lines if line.startswith(FORGED)], log
    assert any("/whep/abc\\n2026-12-05" in line for line in lines), log
    assert any("/whep/abc\\r\\x00zzz" in line for line in lines), log
