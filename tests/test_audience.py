"""The numbers artists see, against what really happened: real HTTP to the real app,
real aiortc publishers, and viewers that arrive, press Next and leave through WHEP.

The expected counts come from a log the test keeps of its own requests. A request's
effect happens at the server somewhere between sending it and getting the answer, so
each visit's length is known to lie between two bounds; visits are made either clearly
shorter or clearly longer than the view time, and a test that cannot tell says so
instead of guessing.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import random
import re
import signal
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import CookieJar

from stage import venue as venue_module
from stage.appkeys import VENUE
from stage.config import Settings
from stage.server import create_app
from tests.peers import CountingViewer, Publisher, Viewer, new_pc
from tests.test_recovery import free_port, start_server
from tests.test_server_contract import cut_network

VIEW_SECONDS = 6.0
# Long visits stay this long, well past the view time; short ones leave at once.
LONG = VIEW_SECONDS + 1.5
# Most visits in flight at once: the peak can never be higher.
IN_FLIGHT = 40
SDP = {"Content-Type": "application/sdp"}


@pytest.fixture
def settings(tmp_path):
    return Settings(
        data=tmp_path / "data", ice_addresses=("127.0.0.1",), view_seconds=VIEW_SECONDS
    )


@pytest.fixture
async def peers(server):
    """Peers to close at the end, before the server goes."""
    items: list = []
    yield items.append
    for item in reversed(items):
        try:
            if isinstance(item, CountingViewer):
                await item.pc.close()
            else:
                await item.stop(say_goodbye=False)
        except Exception:
            pass


async def receive_offer() -> str:
    """A real aiortc viewer's offer (audio and video, receive only)."""
    pc = new_pc()
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    offer = pc.localDescription.sdp
    await pc.close()
    return offer


async def get_json(http, url, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, (url, response.status, await response.text())
        return await response.json()


async def performance_of(server, http, stage) -> dict:
    listed = await get_json(
        http, f"{server.base}/api/stages/{stage['id']}/performances", stage["key"]
    )
    return listed["performances"][0]


async def watches_csv(server, http, stage, performance) -> list[dict]:
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(server.base + performance["watches_url"], headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/csv"
        assert "attachment" in r.headers["Content-Disposition"]
        return list(csv.DictReader(io.StringIO(await r.text())))


async def chart_of(server, http, stage, performance) -> ET.Element:
    """A performance's viewer chart, parsed (the owner's key)."""
    headers = {"Authorization": f"Bearer {stage['key']}"}
    async with http.get(server.base + performance["chart_url"], headers=headers) as r:
        assert r.status == 200 and r.content_type == "image/svg+xml"
        return ET.fromstring(await r.text())


async def wait_for(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        await asyncio.sleep(0.2)


# the ground-truth log


@dataclass
class Visit:
    stage: str
    visitor: int
    start: tuple[float, float]  # the request that began it: sent, answered
    end: tuple[float, float] = (0.0, 0.0)  # the request that ended it

    @property
    def shortest(self) -> float:
        return self.end[0] - self.start[1]

    @property
    def longest(self) -> float:
        return self.end[1] - self.start[0]


@dataclass
class Log:
    visits: list[Visit] = field(default_factory=list)

    def on(self, stage: str) -> list[Visit]:
        return [v for v in self.visits if v.stage == stage]

    def expected(self, stage: str) -> dict:
        visits = self.on(stage)
        for visit in visits:
            assert visit.shortest >= VIEW_SECONDS or visit.longest < VIEW_SECONDS, (
                f"the machine was too slow to tell this visit's kind: {visit}"
            )
        per_visitor: dict[int, list[float]] = {}
        for visit in visits:
            bounds = per_visitor.setdefault(visit.visitor, [0.0, 0.0])
            bounds[0] += visit.shortest
            bounds[1] += visit.longest
        for visitor, (low, high) in per_visitor.items():
            assert low >= VIEW_SECONDS or high < VIEW_SECONDS, (
                f"visitor {visitor} watched between {low:.2f} and {high:.2f} s"
            )
        return {
            "visits": len(visits),
            "visitors": len(per_visitor),
            "views": sum(1 for low, _ in per_visitor.values() if low >= VIEW_SECONDS),
            "nexted": sum(1 for v in visits if v.longest < VIEW_SECONDS),
            "watch_seconds": (
                sum(v.shortest for v in visits),
                sum(v.longest for v in visits),
            ),
        }


class Browser:
    """One visitor: its own cookie jar, so its visits share one viewer cookie."""

    def __init__(self, base: str, number: int, offer: str, log: Log) -> None:
        self.base, self.number, self.offer, self.log = base, number, offer, log
        self.http = aiohttp.ClientSession(cookie_jar=CookieJar(unsafe=True))
        # One visit at a time, like reloads: a brand-new browser that sent two first
        # requests at once would get two cookies, and the server could not know.
        self.busy = asyncio.Lock()

    async def arrive(self, stage: dict) -> tuple[str, Visit]:
        sent = time.monotonic()
        async with self.http.post(
            f"{self.base}/whep/{stage['id']}", data=self.offer, headers=SDP
        ) as r:
            assert r.status == 201, (r.status, await r.text())
            location = r.headers["Location"]
        visit = Visit(stage["id"], self.number, (sent, time.monotonic()))
        self.log.visits.append(visit)
        return location, visit

    async def next(self, location: str, visit: Visit, to: dict) -> Visit:
        sent = time.monotonic()
        async with self.http.post(f"{self.base}{location}/next") as r:
            assert r.status == 200, (r.status, await r.text())
            landed = (await r.json())["stage"]["id"]
        answered = time.monotonic()
        assert landed == to["id"], f"Next landed on {landed}, not {to['id']}"
        visit.end = (sent, answered)
        following = Visit(to["id"], self.number, (sent, answered))
        self.log.visits.append(following)
        return following

    async def leave(self, location: str, visit: Visit) -> None:
        sent = time.monotonic()
        async with self.http.delete(f"{self.base}{location}") as r:
            assert r.status == 200, (r.status, await r.text())
        visit.end = (sent, time.monotonic())


async def read_while_counting(server, stages, stop: asyncio.Event) -> list[dict]:
    """Parallel readers: every number, many times over, while visits come and go."""
    seen = []
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            requests = []
            for stage in stages:
                url = f"{server.base}/api/stages/{stage['id']}"
                requests.append(get_json(http, url))
                requests.append(get_json(http, url + "/performances", stage["key"]))
            seen.append(await asyncio.gather(*requests))
            await asyncio.sleep(0.05)
    return seen


def assert_never_lost(seen: list) -> None:
    """Counts of what has happened only ever grow, whoever reads them and when."""
    last: dict = {}
    for reading in seen:
        for answer in reading:
            if "performances" in answer:
                for p in answer["performances"]:
                    for name in ("visits", "visitors", "views", "nexted"):
                        before = last.get((p["id"], name), 0)
                        assert p[name] >= before, f"{name} fell {before} -> {p[name]}"
                        last[(p["id"], name)] = p[name]
                    before = last.get((p["id"], "watch"), 0.0)
                    assert p["watch_seconds"] >= before - 0.002, (before, p)
                    last[(p["id"], "watch")] = p["watch_seconds"]
            else:
                before = last.get((answer["id"], "all-time"), 0)
                assert answer["views"] >= before, (before, answer)
                last[(answer["id"], "all-time")] = answer["views"]


async def test_200_visits_at_once_give_exactly_the_counts_of_the_log(
    server, http, new_stage, settings, peers, aiohttp_server
):
    a, b = await new_stage("Stage A"), await new_stage("Stage B")
    for stage in (a, b):
        peers(await Publisher(server.base, stage["id"], stage["key"]).start())
    offer = await receive_offer()
    log = Log()
    rng = random.Random(6)
    browsers = [Browser(server.base, n, offer, log) for n in range(130)]
    stop = asyncio.Event()
    readers = asyncio.ensure_future(read_while_counting(server, (a, b), stop))
    try:
        # 40 browsers on A at the same moment, then all leave (they only signal, so
        # they are visits but never watching at once: see the peak below).
        together = asyncio.Barrier(IN_FLIGHT)

        async def stay_together(browser):
            location, visit = await browser.arrive(a)
            await together.wait()
            await asyncio.sleep(LONG)
            await browser.leave(location, visit)

        await asyncio.gather(*(stay_together(b_) for b_ in browsers[:IN_FLIGHT]))

        # Then 160 more WHEP visits, at most 40 in flight: quick looks (nexted),
        # long stays, reloads by browsers already counted, and Next from A to B.
        plan = (
            [("short", a, n) for n in range(40, 90)]  # 50 new browsers
            + [("long", a, n) for n in range(0, 30)]  # reloads of counted browsers
            + [("next", a, n) for n in range(40, 60)]  # a quick look at A, then B
            + [("short", b, n) for n in range(10, 40)]
            + [("long", b, n) for n in range(90, 120)]
        )
        rng.shuffle(plan)
        assert len(plan) + IN_FLIGHT == 200
        gate = asyncio.Semaphore(IN_FLIGHT)

        async def visit(kind, stage, number):
            browser = browsers[number]
            async with browser.busy, gate:
                location, visit = await browser.arrive(stage)
                if kind == "long":
                    await asyncio.sleep(LONG)
                elif kind == "next":
                    visit = await browser.next(location, visit, b)
                    await asyncio.sleep(LONG)
                await browser.leave(location, visit)

        await asyncio.gather(*(visit(*step) for step in plan))
    finally:
        stop.set()
        seen = await readers
        for browser in browsers:
            await browser.http.close()

    assert len(seen) > 10, f"only {len(seen)} rounds of parallel reads"
    assert_never_lost(seen)

    numbers = {}
    for stage in (a, b):
        info = await get_json(http, f"{server.base}/api/stages/{stage['id']}")
        assert info["viewers"] == 0, info
        performance = await performance_of(server, http, stage)
        expected = log.expected(stage["id"])
        low, high = expected.pop("watch_seconds")
        got = {name: performance[name] for name in expected}
        assert got == expected, f"stage {stage['id']}: counted {got}, log {expected}"
        assert performance["watching"] == 0, performance
        assert low - 0.01 <= performance["watch_seconds"] <= high + 0.01, (
            f"watch time {performance['watch_seconds']} outside [{low}, {high}]"
        )
        assert performance["average_watch_seconds"] == pytest.approx(
            performance["watch_seconds"] / performance["visitors"], abs=0.002
        )
        assert info["views"] == performance["views"], (info, performance)
        rows = await watches_csv(server, http, stage, performance)
        assert len(rows) == expected["visits"]
        assert len({r["viewer"] for r in rows}) == expected["visitors"]
        assert sum(r["nexted"] == "yes" for r in rows) == expected["nexted"]
        assert all(r["ended_by"] == "viewer" for r in rows), rows
        assert sum(float(r["seconds"]) for r in rows) == pytest.approx(
            performance["watch_seconds"], abs=0.01 * len(rows)
        )
        numbers[stage["id"]] = performance
        quick = max(v.longest for v in log.on(stage["id"]) if v.longest < VIEW_SECONDS)
        print(
            f"stage {stage['id']}: {got}, peak {performance['peak_viewers']},"
            f" watch {performance['watch_seconds']:.1f} s in [{low:.1f}, {high:.1f}];"
            f" longest quick look {quick:.2f} s"
        )

    # These browsers only signal (their ICE never starts): up to 40 landed on A at
    # once, but none was ever watching. The peak counts only viewers whose connection
    # came up, so it stays 0, where counting landings would give 40. A connected
    # crowd's peak: test_a_connected_crowd_makes_the_peak_and_leaves_no_one_watching.
    assert numbers[a["id"]]["peak_viewers"] == 0, numbers[a["id"]]
    assert numbers[b["id"]]["peak_viewers"] == 0, numbers[b["id"]]
    # A browser counted once on A, its reloads, and 30 visits there: never a 2nd view.
    assert numbers[a["id"]]["visitors"] == 40 + 50

    # A restart: every number comes back from the rows as it was.
    await server.close()
    restarted = await aiohttp_server(create_app(settings), host="127.0.0.1")
    restarted.base = str(restarted.make_url("")).rstrip("/")
    for stage in (a, b):
        after = await performance_of(restarted, http, stage)
        names = ("visits", "visitors", "views", "nexted", "peak_viewers")
        assert {n: after[n] for n in names} == {
            n: numbers[stage["id"]][n] for n in names
        }, f"numbers changed over a restart: {numbers[stage['id']]} -> {after}"
        assert after["watch_seconds"] == pytest.approx(
            numbers[stage["id"]]["watch_seconds"], abs=0.002
        )


# Viewers connected to one stage at the same moment, each a browser of its own.
CROWD = 16


async def test_a_connected_crowd_makes_the_peak_and_leaves_no_one_watching(
    server, http, new_stage, settings, peers, aiohttp_server
):
    stage = await new_stage("Crowd")
    peers(await Publisher(server.base, stage["id"], stage["key"]).start())
    url = f"{server.base}/api/stages/{stage['id']}"

    async def watching(count):
        async def check():
            info = await get_json(http, url)
            performance = await performance_of(server, http, stage)
            return (info["viewers"], performance["watching"]) == (count, count)

        await wait_for(check, 15, f"{count} watching")

    async def arrive(count):
        viewers = [CountingViewer(server.base) for _ in range(count)]
        for viewer in viewers:
            peers(viewer)
        gate = asyncio.Semaphore(4)  # a few connecting at a time, like a crowd

        async def start(viewer):
            async with gate:
                await viewer.start(stage_id=stage["id"])

        await asyncio.gather(*(start(viewer) for viewer in viewers))
        return viewers

    # The crowd is all there at once, every one receiving the show.
    crowd = await arrive(CROWD)
    await watching(CROWD)

    async def all_receiving():
        return all(viewer.frames["video"] >= 10 for viewer in crowd)

    await wait_for(all_receiving, 10, "every viewer of the crowd receiving video")
    performance = await performance_of(server, http, stage)
    assert performance["peak_viewers"] == CROWD, performance

    # Half leave and a few others come: more visits, fewer at once than before.
    leaving, staying = crowd[: CROWD // 2], crowd[CROWD // 2 :]
    await asyncio.gather(*(viewer.stop() for viewer in leaving))
    later = await arrive(4)
    now_on = len(staying) + len(later)
    await watching(now_on)
    performance = await performance_of(server, http, stage)
    assert (performance["peak_viewers"], performance["visits"]) == (
        CROWD,
        CROWD + 4,
    ), performance

    await asyncio.gather(*(viewer.stop() for viewer in staying + later))
    await watching(0)
    performance = await performance_of(server, http, stage)
    print(f"\ncrowd of {CROWD}, then {now_on}: {performance}")
    assert performance["peak_viewers"] == CROWD, performance
    assert (performance["visits"], performance["visitors"]) == (
        CROWD + 4,
        CROWD + 4,
    ), performance
    svg = await chart_of(server, http, stage, performance)
    labels = [
        t.text
        for t in svg.iter("{http://www.w3.org/2000/svg}text")
        if (t.text or "").startswith("peak")
    ]
    assert len(labels) == 1 and re.fullmatch(rf"peak {CROWD} at 0:\d\d", labels[0]), (
        labels
    )

    # The peak comes back from the rows after a restart.
    await server.close()
    restarted = await aiohttp_server(create_app(settings), host="127.0.0.1")
    restarted.base = str(restarted.make_url("")).rstrip("/")
    after = await performance_of(restarted, http, stage)
    assert (after["peak_viewers"], after["watching"]) == (CROWD, 0), after


async def test_reloads_by_one_browser_make_one_viewer(server, http, new_stage, peers):
    stage = await new_stage()
    peers(await Publisher(server.base, stage["id"], stage["key"]).start())
    jar = CookieJar(unsafe=True)
    for _ in range(3):
        viewer = Viewer(server.base)
        viewer.cookies = jar
        peers(viewer)
        await viewer.start(stage_id=stage["id"])
        await viewer.wait_video(count=1)
        await viewer.stop()
    performance = await performance_of(server, http, stage)
    assert (performance["visits"], performance["visitors"]) == (3, 1), performance
    assert performance["watching"] == 0, performance
    rows = await watches_csv(server, http, stage, performance)
    assert len({r["viewer"] for r in rows}) == 1, rows
    assert stage["key"] not in str(rows) and len(rows[0]["viewer"]) == 12


async def test_performer_cut_off_moves_viewers_on_and_counts_fall_to_zero(
    server, http, new_stage, peers
):
    a, b = await new_stage("Cut off"), await new_stage("Still on")
    publisher_a = await Publisher(server.base, a["id"], a["key"]).start()
    peers(publisher_a)
    peers(await Publisher(server.base, b["id"], b["key"]).start())
    viewers = []
    for _ in range(3):
        viewer = Viewer(server.base)
        peers(viewer)
        viewers.append(await viewer.start(stage_id=a["id"]))
    performance = await performance_of(server, http, a)
    assert performance["watching"] == 3, performance

    # The performer's network goes silent: no DELETE, no DTLS close.
    cut_network(publisher_a.pc)
    cut_at = time.monotonic()

    async def a_is_empty():
        info = await get_json(http, f"{server.base}/api/stages/{a['id']}")
        return info["viewers"] == 0 and not info["live"]

    await wait_for(a_is_empty, 30, "watching-now on the cut-off stage back to 0")
    print(
        f"watching-now on the cut-off stage was 0 after {time.monotonic() - cut_at:.1f} s"
    )
    for viewer in viewers:
        status, body = await viewer.request("GET")
        assert status == 200 and body["stage"]["id"] == b["id"], body

    ended = await performance_of(server, http, a)
    assert ended["ended_at"] is not None, ended
    assert (ended["watching"], ended["visits"], ended["nexted"]) == (0, 3, 0), ended
    assert ended["peak_viewers"] == 3, ended
    rows = await watches_csv(server, http, a, ended)
    assert [r["ended_by"] for r in rows] == ["show"] * 3, rows
    moved = await performance_of(server, http, b)
    assert (moved["watching"], moved["visits"]) == (3, 3), moved
    since = time.monotonic()
    for viewer in viewers:
        await viewer.wait_video(count=5, since=since, timeout=15)


# time on a held stage: the performer is lost and the viewers wait on a frozen picture

# The hold, shortened so that the tests below take seconds (stage/config.py has no
# setting for it; the venue reads RECONNECT_WINDOW each time it holds a stage).
HOLD = 6.0
# How far the server's last frame from a publisher may be from the moment the test cut
# it off (packets already on their way), and how far the server's moments may be from
# the test's when a request was sent or answered.
SLACK = 0.5
# Seconds of show a viewer watches before its performer is lost: short of the view
# time, which the hold would take it past.
BEFORE = 2.5


@pytest.fixture
def short_hold(monkeypatch):
    monkeypatch.setattr(venue_module, "RECONNECT_WINDOW", HOLD)


async def wait_held(http, server, stage, timeout=10.0) -> float:
    async def held():
        info = await get_json(http, f"{server.base}/api/stages/{stage['id']}")
        return info["reconnecting"]

    await wait_for(held, timeout, f"stage {stage['id']} held")
    return time.monotonic()


async def watched_before_the_loss(server, stage, peers):
    """A performer live and one viewer who has watched BEFORE seconds of it; returns
    them with the moments the viewer's offer was sent and answered."""
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    peers(publisher)
    viewer = Viewer(server.base)
    peers(viewer)
    sent = time.monotonic()
    await viewer.start(stage_id=stage["id"])
    answered = time.monotonic()
    await viewer.wait_video(count=30)
    await asyncio.sleep(max(0.0, sent + BEFORE - time.monotonic()))
    return publisher, viewer, sent, answered


async def the_one_csv_row_agrees(server, http, stage, performance, ended_by: str):
    """The performance's export has one visit, ended so, with its watch time."""
    [row] = await watches_csv(server, http, stage, performance)
    assert row["ended_by"] == ended_by, row
    assert float(row["seconds"]) == pytest.approx(
        performance["watch_seconds"], abs=0.002
    )


def silence(publisher: Publisher):
    """The performer's media stops (a hung encoder) while its ICE still answers; the
    function returned lets it flow again on the same connection."""
    transports = {sender.transport for sender in publisher.pc.getSenders()}

    async def swallow(data):
        pass

    for transport in transports:
        transport._send_rtp = swallow

    def resume():
        for transport in transports:
            del transport._send_rtp

    return resume


def assert_between(what: str, value: float, low: float, high: float) -> None:
    assert low <= value <= high, (
        f"{what}: {value:.2f} s, not in [{low:.2f}, {high:.2f}]"
    )


async def test_a_held_stage_s_viewers_are_not_watching_while_nobody_comes_back(
    server, http, new_stage, peers, short_hold
):
    stage = await new_stage("Killed")
    publisher, viewer, sent, answered = await watched_before_the_loss(
        server, stage, peers
    )

    # Killed: no DELETE, no DTLS close. The viewer stays on the held stage.
    cut_network(publisher.pc)
    cut = time.monotonic()
    low, high = cut - answered - 1.0, cut - sent + SLACK
    await wait_held(http, server, stage)

    # While held, the watch time stands still, live as it will be stored.
    during = await performance_of(server, http, stage)
    assert during["ended_at"] is None and during["watching"] == 1, during
    assert_between("watch time while held", during["watch_seconds"], low, high)
    await asyncio.sleep(1.0)
    later = await performance_of(server, http, stage)
    assert later["ended_at"] is None, f"the hold ended within a second: {later}"
    assert later["watch_seconds"] == pytest.approx(during["watch_seconds"], abs=0.01), (
        f"watch time grew on a held stage: {during} -> {later}"
    )

    async def ended():
        performance = await performance_of(server, http, stage)
        return performance if performance["ended_at"] else None

    performance = await wait_for(ended, HOLD + 5, "the held show ended")
    ended_at = time.monotonic()
    assert ended_at - cut > HOLD - 1, "the show ended before the hold was over"
    print(
        f"\nwatched {performance['watch_seconds']:.2f} s in [{low:.2f}, {high:.2f}];"
        f" on the stage {ended_at - sent:.1f} s; show {performance['duration']:.2f} s"
    )
    assert_between("watch time", performance["watch_seconds"], low, high)
    assert performance["average_watch_seconds"] == performance["watch_seconds"]
    assert (performance["visits"], performance["visitors"]) == (1, 1), performance
    assert (performance["views"], performance["nexted"]) == (0, 0), performance
    assert performance["peak_viewers"] == 1 and performance["watching"] == 0
    info = await get_json(http, f"{server.base}/api/stages/{stage['id']}")
    assert info["views"] == 0, info
    await the_one_csv_row_agrees(server, http, stage, performance, ended_by="show")


async def test_media_that_comes_back_within_the_hold_resumes_the_same_visit(
    server, http, new_stage, peers, short_hold
):
    stage = await new_stage("Hung encoder")
    publisher, viewer, sent, answered = await watched_before_the_loss(
        server, stage, peers
    )

    resume = silence(publisher)
    quiet = time.monotonic()
    await wait_held(http, server, stage)
    await asyncio.sleep(1.0)
    resume()
    back = time.monotonic()

    async def live_again():
        info = await get_json(http, f"{server.base}/api/stages/{stage['id']}")
        return info["live"] and not info["reconnecting"]

    await wait_for(live_again, 5, "the stage live again")
    await viewer.wait_video(count=10, since=time.monotonic())
    await asyncio.sleep(1.0)
    leaving = time.monotonic()
    await viewer.stop()
    left = time.monotonic()

    # One visit of one show, watched before the media stopped and after it came back
    # (a few hundred ms to notice the comeback), not in between.
    [performance] = (
        await get_json(
            http, f"{server.base}/api/stages/{stage['id']}/performances", stage["key"]
        )
    )["performances"]
    low = (quiet - answered) + (leaving - back) - 1.0
    high = (quiet - sent) + (left - back) + SLACK
    print(
        f"\nwatched {performance['watch_seconds']:.2f} s in [{low:.2f}, {high:.2f}];"
        f" on the stage {left - sent:.1f} s, {back - quiet:.1f} s of it without media"
    )
    assert (performance["visits"], performance["ended_at"]) == (1, None), performance
    assert_between("watch time", performance["watch_seconds"], low, high)
    await the_one_csv_row_agrees(server, http, stage, performance, ended_by="viewer")


async def test_a_performer_back_within_the_hold_starts_a_visit_from_the_comeback(
    server, http, new_stage, peers, short_hold
):
    stage = await new_stage("Reloaded")
    first, viewer, sent, answered = await watched_before_the_loss(
        server, stage, peers
    )

    cut_network(first.pc)
    cut = time.monotonic()
    await wait_held(http, server, stage)
    await asyncio.sleep(1.0)
    coming = time.monotonic()
    second = await Publisher(server.base, stage["id"], stage["key"]).start()
    peers(second)
    came = time.monotonic()
    await viewer.wait_video(count=10, since=came)
    await asyncio.sleep(1.0)
    leaving = time.monotonic()
    await viewer.stop()
    left = time.monotonic()

    newer, older = (
        await get_json(
            http, f"{server.base}/api/stages/{stage['id']}/performances", stage["key"]
        )
    )["performances"]
    print(
        f"\nfirst show watched {older['watch_seconds']:.2f} s"
        f" (cut {cut - sent:.1f} s after arriving, back {coming - cut:.1f} s later);"
        f" second {newer['watch_seconds']:.2f} s"
    )
    assert (older["visits"], newer["visits"]) == (1, 1), (older, newer)
    assert_between(
        "first show's watch time",
        older["watch_seconds"],
        cut - answered - 1.0,
        cut - sent + SLACK,
    )
    assert_between(
        "second show's watch time",
        newer["watch_seconds"],
        leaving - came - SLACK,
        left - coming,
    )
    [row] = await watches_csv(server, http, stage, older)
    assert row["ended_by"] == "show", row


async def test_browser_that_never_connects_is_a_visit_but_no_view(
    server, http, new_stage, peers, monkeypatch
):
    monkeypatch.setattr(venue_module, "VIEWER_CONNECT_TIMEOUT", 1.0)
    stage = await new_stage()
    peers(await Publisher(server.base, stage["id"], stage["key"]).start())
    # An offer whose maker never takes the answer: its ICE never starts.
    async with http.post(
        f"{server.base}/whep/{stage['id']}", data=await receive_offer(), headers=SDP
    ) as r:
        assert r.status == 201, await r.text()

    async def gone():
        return not server.app[VENUE].viewers

    await wait_for(gone, 10, "the unconnected viewer given up on")
    performance = await performance_of(server, http, stage)
    assert performance["visits"] == 1, performance
    assert (performance["views"], performance["nexted"]) == (0, 0), performance
    assert performance["watch_seconds"] == 0, performance
    [row] = await watches_csv(server, http, stage, performance)
    assert row["ended_by"] == "unconnected", row


async def test_viewers_whose_connection_never_came_up_make_no_peak(
    server, http, new_stage, peers
):
    """Landings whose ICE never started are visits, but never watching or the peak."""
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    peers(publisher)
    unconnected = 5
    for _ in range(unconnected):
        async with http.post(
            f"{server.base}/whep/{stage['id']}", data=await receive_offer(), headers=SDP
        ) as r:
            assert r.status == 201, await r.text()
    viewer = Viewer(server.base)
    peers(viewer)
    await viewer.start(stage_id=stage["id"])

    # The landings are still open (VIEWER_CONNECT_TIMEOUT is 10 s): not watching.
    assert len(server.app[VENUE].viewers) == unconnected + 1
    info = await get_json(http, f"{server.base}/api/stages/{stage['id']}")
    assert info["viewers"] == 1, info
    performance = await performance_of(server, http, stage)
    assert (performance["watching"], performance["peak_viewers"]) == (1, 1), performance
    status, body = await viewer.request("GET")
    assert body["stage"]["viewers"] == 1, body

    # The show ends with them still not connected.
    await publisher.stop()
    ended = await performance_of(server, http, stage)
    assert ended["visits"] == unconnected + 1, ended
    assert (ended["peak_viewers"], ended["watching"]) == (1, 0), ended
    svg = await chart_of(server, http, stage, ended)
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert (
        [t for t in texts if t and t.startswith("peak")]
        == [t for t in texts if t and re.fullmatch(r"peak 1 at 0:0\d", t)]
        != []
    ), texts


async def test_the_chart_labels_only_the_first_rise_to_the_peak(
    server, http, new_stage, peers
):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    peers(publisher)
    # The one viewer comes, goes and comes back three times: the peak, 1, is reached
    # three times, spread over the show (so the labels would not even overlap).
    for _ in range(3):
        viewer = Viewer(server.base)
        peers(viewer)
        await viewer.start(stage_id=stage["id"])
        await viewer.stop()
        await asyncio.sleep(1.0)
    await publisher.stop()
    performance = await performance_of(server, http, stage)
    assert (performance["peak_viewers"], performance["visits"]) == (1, 3), performance
    svg = await chart_of(server, http, stage, performance)
    dots = list(svg.iter("{http://www.w3.org/2000/svg}circle"))
    labels = [
        t.text
        for t in svg.iter("{http://www.w3.org/2000/svg}text")
        if (t.text or "").startswith("peak")
    ]
    assert len(dots) == 3, ET.tostring(svg)
    assert len(labels) == 1 and re.fullmatch(r"peak 1 at 0:0\d", labels[0]), labels


async def test_chart_and_export_are_the_owners_only(server, http, new_stage, peers):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    peers(publisher)
    viewer = Viewer(server.base)
    peers(viewer)
    await viewer.start(stage_id=stage["id"])
    await viewer.stop()
    performance = await performance_of(server, http, stage)
    other = await new_stage("Someone else")

    for url in (performance["chart_url"], performance["watches_url"]):
        for headers in ({}, {"Authorization": f"Bearer {other['key']}"}):
            async with http.get(server.base + url, headers=headers) as r:
                assert r.status == 401, (url, headers, r.status)
                assert "error" in await r.json()
        unknown = url.replace(performance["id"], "0" * 16)
        async with http.get(
            server.base + unknown, headers={"Authorization": f"Bearer {stage['key']}"}
        ) as r:
            assert r.status == 404, (unknown, r.status)
            assert "error" in await r.json()

    svg = await chart_of(server, http, stage, performance)
    texts = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
    assert any(re.fullmatch(r"peak 1 at 0:0\d", t or "") for t in texts), texts
    assert svg.find("{http://www.w3.org/2000/svg}path") is not None


async def test_killed_server_keeps_counts_and_ends_open_watches_before_the_kill(
    tmp_path, monkeypatch
):
    """SIGKILL with a viewer on: after the restart its watch ends no later than the
    kill (not at the restart), and every visit written before it is still there."""
    monkeypatch.setenv("STAGE_VIEW_SECONDS", "1")
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    server = await start_server(data, port)
    peers = []
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/stages", json={"name": "Kill"}) as r:
                stage = await r.json()
        peers.append(await Publisher(base, stage["id"], stage["key"]).start())
        stays, goes = Viewer(base), Viewer(base)
        peers += [stays, goes]
        await stays.start(stage_id=stage["id"])
        await goes.start(stage_id=stage["id"])
        await asyncio.sleep(1.5)
        await goes.stop()
        left_at = time.time()
        await asyncio.sleep(1.5)  # past a flush
        killed_at = time.time()
        os.kill(server.pid, signal.SIGKILL)
        server.wait()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        for peer in peers:
            await peer.pc.close()

    await asyncio.sleep(2.0)  # so that "ended at the restart" would show
    server = await start_server(data, port)
    try:
        async with aiohttp.ClientSession() as http:
            restarted = SimpleNamespace(base=base)
            performance = await performance_of(restarted, http, stage)
            rows = await watches_csv(restarted, http, stage, performance)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)

    assert (performance["visits"], performance["visitors"]) == (2, 2), performance
    assert (performance["watching"], performance["views"]) == (0, 2), performance
    by = sorted(r["ended_by"] for r in rows)
    assert by == ["server", "viewer"], rows
    [open_one] = [r for r in rows if r["ended_by"] == "server"]
    ended = datetime.fromisoformat(open_one["ended_at"]).timestamp()
    assert ended <= killed_at, f"ended {ended - killed_at:.2f} s after the kill: {rows}"
    # The flush that wrote the other viewer's leave vouched for a later moment.
    assert ended >= left_at - 0.1, f"ended {left_at - ended:.2f} s before: {rows}"


async def test_two_workers_hand_out_watch_ids_that_never_meet(tmp_path):
    """Each worker writes its own watch rows: lanes of ids keep them apart."""
    from stage.audience import Audience
    from stage.store import Store

    store = Store(tmp_path / "stage.db", 3.0)
    stage, _ = store.create_stage("Lanes")
    performance = store.start_performance(stage.id, time.time())
    first = Audience(store.path, 3.0, lane=(0, 2))
    second = Audience(store.path, 3.0, lane=(1, 2))
    ids = [
        audience.open_watch(performance, f"v{n}")
        for n in range(5)
        for audience in (first, second)
    ]
    first.flush()
    second.flush()
    late = Audience(store.path, 3.0, lane=(1, 2))  # worker 1, started again
    ids.append(late.open_watch(performance, "v9"))
    late.flush()
    assert len(set(ids)) == len(ids), ids
    assert {i % 2 for i in ids[:10:2]} == {0}
    assert {i % 2 for i in ids[1:10:2] + ids[10:]} == {1}
    for audience in (first, second, late):
        await audience.close()
    store.close()


async def test_dead_worker_visits_end_at_its_own_last_flush_not_a_survivor_s(tmp_path):
    """Two workers write watches; one dies and the other keeps flushing. The dead
    one's open visits end when it last wrote, not when the survivor last did; the
    survivor's stay open, and a later whole crash ends them at the survivor's mark."""
    from stage.audience import BY_SERVER, Audience
    from stage.store import Store

    store = Store(tmp_path / "stage.db", 3.0)
    stage, _ = store.create_stage("Lanes")
    performance = store.start_performance(stage.id, time.time())
    survivor = Audience(store.path, 3.0, lane=(0, 2))
    dying = Audience(store.path, 3.0, lane=(1, 2))
    kept = survivor.open_watch(performance, "kept")
    lost = dying.open_watch(performance, "lost")
    survivor.flush()
    dying.flush()
    dying_wrote = time.time()
    dying._db.close()  # killed: it never writes again

    await asyncio.sleep(0.3)
    survivor.flush()  # nothing new, but a watch is open: the survivor vouches anew
    survivor_wrote = time.time()

    recovery = Audience(store.path, 3.0, lane=(1, 2))  # the front, for worker 1
    assert recovery.close_interrupted(lane_only=True) == 1
    ends = {w.id: w for w in recovery.watches(performance)}
    assert ends[lost].ended_by == BY_SERVER, ends
    assert ends[lost].ended_at <= dying_wrote, (
        f"ended {ends[lost].ended_at - dying_wrote:.3f} s after the dead worker's"
        f" last flush: {ends[lost]}"
    )
    assert ends[lost].ended_at > ends[lost].started_at, ends[lost]
    assert ends[kept].ended_at is None, ends[kept]
    await recovery.close()

    survivor._db.close()  # then the whole server is killed
    whole = Audience(store.path, 3.0)
    assert whole.close_interrupted() == 1
    ends = {w.id: w for w in whole.watches(performance)}
    assert dying_wrote < ends[kept].ended_at <= survivor_wrote, (
        dying_wrote,
        survivor_wrote,
        ends[kept],
    )
    assert ends[lost].ended_at <= dying_wrote, ends[lost]
    await whole.close()
    store.close()
