"""`--workers 2`: stages split between two worker processes behind the front.

A real server subprocess with two workers, real aiortc publishers and viewers through
the front, recordings decoded back with PyAV. Which worker answered a request is in
the `X-Stage-Worker` header the front adds.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import sys

import aiohttp
import pytest

from stage.recorder.files import LIVE_SUFFIX

from .peers import Publisher, Viewer, new_pc, only
from .show import check_file
from .test_relay import offer_sdp
from .test_server_stop import free_port

SIZES = {"A": (320, 240), "B": (160, 128)}
CODECS = ("VP8", "H264")


class Front:
    """`python -m stage --workers 2` on a free port, its output kept."""

    def __init__(self, data, *flags: str) -> None:
        self.data = data
        self.flags = flags
        self.base = ""
        self.server: asyncio.subprocess.Process | None = None
        self.log = b""

    async def start(self) -> Front:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.server = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "stage", "--workers", "2", "--port", str(port)),
            *("--data", str(self.data), "--ice-address", "127.0.0.1", *self.flags),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        while b"Stage is running" not in self.log:
            line = await asyncio.wait_for(self.server.stdout.readline(), 60)
            assert line, f"the server ended before it ran: {self.log.decode()}"
            self.log += line
        return self

    @property
    def worker_pids(self) -> list[int]:
        found = re.search(rb"workers serving \(pids (\d+), (\d+)\)", self.log)
        return [int(pid) for pid in found.groups()]

    async def stop(self) -> str:
        """SIGTERM, as a service manager stops it; returns the whole log."""
        if self.server.returncode is None:
            self.server.send_signal(signal.SIGTERM)
            rest, _ = await asyncio.wait_for(self.server.communicate(), 40)
            self.log += rest
        return self.log.decode()

    async def kill(self) -> None:
        if self.server is not None and self.server.returncode is None:
            self.server.kill()
            await self.server.wait()


@pytest.fixture
async def front(tmp_path):
    front = await Front(tmp_path / "data").start()
    yield front
    try:
        await front.stop()  # as a service manager does: the front cleans up after itself
    finally:
        await front.kill()


async def new_stage(http, base: str, name: str) -> dict:
    async with http.post(f"{base}/api/stages", json={"name": name}) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def until(check, timeout=15.0, what="the condition"):
    for _ in range(int(timeout / 0.1)):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not come within {timeout} s")


async def test_malformed_http_through_the_front_is_400_and_one_line_each(front):
    """The front parses the request first: its log says a broken request in one
    line, with no traceback and no ERROR."""
    from .test_server_contract import MALFORMED, status_of_raw

    port = int(front.base.rsplit(":", 1)[1])
    for case, request in MALFORMED.items():
        status = await status_of_raw("127.0.0.1", port, request)
        assert status.split()[1:2] == [b"400"], (case, status)
    log = await front.stop()

    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    brief = [line for line in log.splitlines() if "malformed request from" in line]
    assert len(brief) == len(MALFORMED), log


async def test_two_stages_on_two_workers_next_across_them_until_sigterm(front):
    base = front.base
    publishers, viewers = {}, {}
    async with aiohttp.ClientSession() as http:
        stages = {n: await new_stage(http, base, f"Stage {n}") for n in SIZES}
        try:
            for name, stage in stages.items():
                publisher = Publisher(base, stage["id"], stage["key"])
                publishers[name] = await publisher.start(size=SIZES[name])

            async def listed():
                async with http.get(f"{base}/api/stages") as r:
                    return {s["id"]: s for s in (await r.json())["stages"]}

            async def both_listed():
                return len(await listed()) == 2

            await until(both_listed, what="both stages listed")

            # Each stage is carried by its own worker.
            workers = {}
            for name, stage in stages.items():
                async with http.get(f"{base}/api/stages/{stage['id']}") as r:
                    assert (await r.json())["live"], name
                    workers[name] = r.headers["X-Stage-Worker"]
            assert sorted(workers.values()) == ["0", "1"], workers

            # A viewer of each, on its own stage's picture.
            for name, stage in stages.items():
                viewers[name] = await Viewer(base).start(stage["id"])
                width, height = SIZES[name]
                await viewers[name].wait_video(
                    count=20, where=lambda s, w=width, h=height: s[:2] == (w, h)
                )

            async def counted(expected):
                live = await listed()
                found = {
                    n: live[s["id"]]["viewers"]
                    for n, s in stages.items()
                    if s["id"] in live
                }
                return found == expected

            await until(
                lambda: counted({"A": 1, "B": 1}), what="one viewer on each stage"
            )

            # Next from stage A lands on stage B, carried by the other worker: its
            # frames come over a link, on the viewer's same connection.
            status, body = await viewers["A"].request("POST", "/next")
            assert status == 200, (status, body)
            assert body["stage"]["id"] == stages["B"]["id"], body
            moved = asyncio.get_running_loop().time()
            await viewers["A"].wait_video(
                count=20, since=moved, where=lambda s: s[:2] == SIZES["B"]
            )
            await until(
                lambda: counted({"A": 0, "B": 2}), what="both viewers counted on B"
            )

            # Stage B ends: both its viewers, the mirrored one and its own, move on
            # to stage A, the only one left, each across to the other worker's stage.
            await asyncio.sleep(1)
            ended = asyncio.get_running_loop().time()
            await publishers.pop("B").stop()
            for viewer in viewers.values():
                await viewer.wait_video(
                    count=20, since=ended, where=lambda s: s[:2] == SIZES["A"]
                )
            await until(
                lambda: counted({"A": 2}), what="both viewers counted on A"
            )
            status, body = await viewers["B"].request("GET")
            assert body["stage"]["id"] == stages["A"]["id"], body
            # Stage A is still live, and watched, at SIGTERM; its page is open (an
            # event stream, which must not hold the stop up).
            page = await http.get(f"{base}/api/stages/{stages['A']['id']}/events")
            assert (await page.content.readline()).startswith(b"data: ")
            await asyncio.sleep(1)
            log = await front.stop()
            page.close()
        finally:
            for viewer in viewers.values():
                await viewer.stop(say_goodbye=False)
            for publisher in publishers.values():
                await publisher.stop(say_goodbye=False)

    pids = front.worker_pids
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert "Stage stopping: ending 2 workers" in log, log
    assert "Stage stopping: ending 1 live stages and 1 visits" in log, log
    assert log.count("Stage stopped: every recording closed") == 2, log
    assert "Traceback" not in log, log
    assert not list(front.data.rglob(f"*{LIVE_SUFFIX}*")), "a recording was left open"
    for name, stage in stages.items():
        files = [
            p for p in (front.data / stage["id"]).iterdir() if p.suffix == ".webm"
        ]
        assert len(files) == 1, (name, files)
        checked = check_file(files[0])
        assert checked.counts.get("video", 0) > 30, (name, checked)
        assert checked.audio_seconds > 1, (name, checked)


# Requests that go wrong, each answered the same by one process and through the front.
BAD_REQUESTS = [
    ("GET", "/whep/viewers/nobody", None, None),
    ("POST", "/whep/viewers/nobody/next", None, None),
    ("DELETE", "/whep/viewers/nobody", None, None),
    ("PATCH", "/whep/viewers/nobody", "a=x", "application/trickle-ice-sdpfrag"),
    ("POST", "/whep", "v=0", "text/plain"),
    ("POST", "/whep/nostage", "v=0", "application/sdp"),
    ("POST", "/whip/nostage", "v=0", "application/sdp"),
    ("DELETE", "/whip/nostage/publishers/nobody", None, None),
    ("GET", "/api/stages/nostage", None, None),
    ("GET", "/api/stages/nostage/performances", None, None),
    ("POST", "/api/stages", "name", "text/plain"),
    ("POST", "/api/stages", '{"name": ""}', "application/json"),
    ("GET", "/api/clips/noclip", None, None),
]


async def answers(http, base: str) -> list:
    found = []
    for method, path, body, content_type in BAD_REQUESTS:
        headers = {"Content-Type": content_type} if content_type else {}
        async with http.request(method, base + path, data=body, headers=headers) as r:
            found.append((method, path, r.status, await r.text()))
    return found


async def test_bad_requests_get_the_same_answers_through_the_front(
    front, server, http
):
    single = await answers(http, server.base)
    fronted = await answers(http, front.base)
    assert all(status >= 400 for *_, status, _ in single), single
    assert fronted == single


async def refused(http, url: str) -> tuple[int, dict, str]:
    """A WHEP offer that is not taken: status, JSON error and Retry-After."""
    offer = await offer_sdp()
    headers = {"Content-Type": "application/sdp"}
    async with http.post(url, data=offer, headers=headers) as r:
        return r.status, await r.json(), r.headers.get("Retry-After")


async def test_nothing_live_anywhere_is_said_as_in_one_process(front, http):
    assert await refused(http, f"{front.base}/whep") == (
        409,
        {"error": "Nobody is on stage right now."},
        "3",
    )


async def test_a_worker_that_dies_has_its_shows_closed_and_is_started_again(front):
    """SIGKILL to worker 1: the front closes the show it carried (its recording
    finished, its visits ended) and starts it again; worker 0's show goes on."""
    peers = []
    async with aiohttp.ClientSession() as http:
        stays, dies = [await new_stage(http, front.base, n) for n in ("Stays", "Dies")]
        try:
            for stage in (stays, dies):
                peers.append(
                    await Publisher(front.base, stage["id"], stage["key"]).start()
                )
            async with http.get(f"{front.base}/api/stages/{dies['id']}") as r:
                assert r.headers["X-Stage-Worker"] == "1"
            peers.append(await Viewer(front.base).start(dies["id"]))
            await peers[-1].wait_video(count=30)
            await asyncio.sleep(1)  # a flush of the visit and of the recording

            first, second = front.worker_pids
            os.kill(second, signal.SIGKILL)

            async def restarted():
                line = await asyncio.wait_for(front.server.stdout.readline(), 30)
                front.log += line
                return b"worker 1: serving" in line

            await until(restarted, timeout=30, what="worker 1 started again")
            async with http.get(f"{front.base}/api/stages") as r:
                live = [s["id"] for s in (await r.json())["stages"]]
            assert live == [stays["id"]], live
            # Worker 0's recording was left alone: it is still being written.
            assert list((front.data / stays["id"]).glob(f"*{LIVE_SUFFIX}*"))
        finally:
            for peer in peers:
                await peer.stop(say_goodbye=False)
    log = await front.stop()
    assert f"worker 1: pid {second} ended by itself" in log, log
    assert "worker 1: 1 shows it left closed" in log, log

    with sqlite3.connect(front.data / "stage.db") as db:
        (state, ended), *_ = db.execute(
            "SELECT recording_state, ended_at FROM performances WHERE stage_id=?",
            (dies["id"],),
        ).fetchall()
        open_visits = db.execute(
            "SELECT COUNT(*) FROM watches WHERE ended_at IS NULL"
        ).fetchone()[0]
    assert (state, ended is not None) == ("ready", True), (state, ended)
    assert open_visits == 0
    (recording,) = (front.data / dies["id"]).iterdir()
    assert check_file(recording).counts.get("video", 0) > 20


async def test_a_full_worker_sends_viewers_to_the_other_until_both_are_full(tmp_path):
    """Caps are per worker: with one viewer each, a stage's second viewer watches it
    from the other worker, and a third is told that Stage is full."""
    front = await Front(tmp_path / "data", "--max-viewers", "1").start()
    viewers, publisher = [], None
    try:
        async with aiohttp.ClientSession() as http:
            stage = await new_stage(http, front.base, "Packed")
            publisher = Publisher(front.base, stage["id"], stage["key"])
            await publisher.start(size=SIZES["B"])
            for _ in range(2):
                viewer = Viewer(front.base)
                viewers.append(viewer)
                await viewer.start(stage["id"])
                await viewer.wait_video(count=10, where=lambda s: s[:2] == SIZES["B"])
                await asyncio.sleep(0.6)  # the workers' reports reach the front

            async def both_counted():
                async with http.get(f"{front.base}/api/stages/{stage['id']}") as r:
                    return (await r.json())["viewers"] == 2

            await until(both_counted, what="two viewers, one per worker")
            assert await refused(http, f"{front.base}/whep/{stage['id']}") == (
                503,
                {"error": "Stage is full right now. Try again in a moment."},
                "15",
            )
    finally:
        for viewer in viewers:
            await viewer.stop(say_goodbye=False)
        if publisher is not None:
            await publisher.stop(say_goodbye=False)
        log = await front.stop()
        await front.kill()
    assert "mirrored from worker" in log, log


async def test_a_stage_page_hears_its_stage_go_live_on_the_other_worker(front):
    """The events of a stage not yet live come from the home worker: they stream
    through the front as they are written, and say when the stage went live on the
    other worker, from the directory."""
    publishers = []
    async with aiohttp.ClientSession() as http:
        first, second = [await new_stage(http, front.base, n) for n in ("X", "Y")]
        try:
            publishers.append(
                await Publisher(front.base, first["id"], first["key"]).start()
            )
            url = f"{front.base}/api/stages/{second['id']}/events"
            async with http.get(url) as events:
                assert events.headers["X-Stage-Worker"] == "0"

                async def next_event() -> dict:
                    while True:
                        line = await asyncio.wait_for(events.content.readline(), 10)
                        if line.startswith(b"data: "):
                            return json.loads(line[6:])

                assert (await next_event())["live"] is False
                publishers.append(
                    await Publisher(front.base, second["id"], second["key"]).start()
                )
                while not (event := await next_event())["live"]:
                    pass
                assert event["recording"]["state"] == "recording", event
            async with http.get(f"{front.base}/api/stages/{second['id']}") as r:
                assert r.headers["X-Stage-Worker"] == "1"
        finally:
            for publisher in publishers:
                await publisher.stop()


async def test_while_the_home_worker_starts_again_pages_and_the_api_say_so(front):
    """Pages and most of the API are answered by worker 0. While it starts again
    after dying, a browser gets a page that says so and looks again by itself, and
    a script the same sentence as JSON; then both are served as before."""
    first, _ = front.worker_pids
    os.kill(first, signal.SIGKILL)
    await asyncio.sleep(0.2)  # the front notices at once: its report socket closed
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{front.base}/", headers={"Accept": "text/html"}) as r:
            page = (r.status, r.content_type, await r.text())
        async with http.get(f"{front.base}/api/stages") as r:
            api = (r.status, await r.json(), r.headers.get("Retry-After"))
        sentence = (
            "This part of Stage is starting again after a failure. "
            "Try again in a moment."
        )
        assert page[0] in (502, 503) and page[1] == "text/html", page
        assert sentence in page[2] and 'http-equiv="refresh"' in page[2], page
        assert api[0] in (502, 503) and api[1:] == ({"error": sentence}, "3"), api

        async def served():
            async with http.get(f"{front.base}/", headers={"Accept": "text/html"}) as r:
                return r.status == 200

        await until(served, timeout=30, what="the home page served again")


async def draw(http, base: str, video_codec: str) -> tuple[str, str]:
    """`POST /whep` with an offer of one video codec only: the stage the roulette
    gave and the worker that took the viewer. The visit ends at once."""
    pc = new_pc()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        only(pc.addTransceiver("video", direction="recvonly"), video_codec)
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        async with http.post(
            f"{base}/whep", data=pc.localDescription.sdp, headers=headers
        ) as r:
            assert r.status == 201, (r.status, await r.text())
            location, worker = r.headers["Location"], r.headers["X-Stage-Worker"]
        async with http.get(base + location) as r:
            stage = (await r.json())["stage"]
        async with http.delete(base + location) as r:
            assert r.status == 200, r.status
        return stage["id"] if stage else None, worker
    finally:
        await pc.close()


async def one_codec_draws(
    base: str, codecs: tuple[str, ...], draws: int = 10
) -> tuple[dict, dict]:
    """A live stage per codec in `codecs` (in that order, each placed by the front),
    then `draws` draws of `POST /whep` by players offering only VP8, and as many by
    players offering only H.264. Returns each stage with its codec and worker, and the
    (stage, worker) of every draw by codec."""
    publishers, stages = [], {}
    async with aiohttp.ClientSession() as http:
        try:
            for number, codec in enumerate(codecs):
                stage = await new_stage(http, base, f"In {codec} ({number})")
                publisher = Publisher(base, stage["id"], stage["key"])
                publishers.append(await publisher.start(video_codec=codec))
                async with http.get(f"{base}/api/stages/{stage['id']}") as r:
                    assert (await r.json())["live"], stage
                    stages[stage["id"]] = (codec, r.headers["X-Stage-Worker"])
            landed = {
                codec: [await draw(http, base, codec) for _ in range(draws)]
                for codec in CODECS
            }
        finally:
            for publisher in publishers:
                await publisher.stop()
    return stages, landed


def astray(stages: dict, landed: dict) -> list:
    """Draws that landed on a stage of another codec, or on a worker other than the
    stage's own (watching a mirror of it, stage/links.py)."""
    return [
        (codec, stage_id, worker, stages.get(stage_id))
        for codec, draws in landed.items()
        for stage_id, worker in draws
        if stages.get(stage_id) != (codec, worker)
    ]


async def test_the_fronts_roulette_draws_among_stages_the_viewer_can_decode(front):
    """A VP8 stage on one worker, an H.264 stage on the other. A player that offers
    only VP8 (or only H.264) is drawn among the stages it can decode, as one process
    draws: it lands on the stage of its codec, on that stage's own worker, never on
    the other worker to watch a mirror of it."""
    stages, landed = await one_codec_draws(front.base, CODECS)
    assert sorted(worker for _, worker in stages.values()) == ["0", "1"], stages
    wrong = astray(stages, landed)
    assert not wrong, f"{len(wrong)} of 2 x 10 draws went astray: {wrong}"


async def test_a_worker_with_stages_of_both_codecs_seats_a_viewer_on_its_own(front):
    """VP8 and H.264 stages on one worker, another H.264 stage on the other: an
    H.264-only player drawn to the first is seated on its H.264 stage, not on a
    mirror of the other worker's, and a VP8-only one always on the VP8 stage.

    (Were the worker to draw among all its stages and seat the viewer by codec only
    afterwards, an H.264-only draw would go astray one time in eight: 40 draws
    catch that but for half a percent of runs.)"""
    stages, landed = await one_codec_draws(
        front.base, ("VP8", "H264", "H264"), draws=40
    )
    by_worker = {}
    for codec, worker in stages.values():
        by_worker.setdefault(worker, set()).add(codec)
    assert set(CODECS) in by_worker.values(), stages
    wrong = astray(stages, landed)
    assert not wrong, f"{len(wrong)} of 2 x 40 draws went astray: {wrong}"
