"""Rotating a stage's key: the new key works, the old one, its sessions and its
publisher do not, and the stage's viewers move on."""

from __future__ import annotations

from aiohttp import ClientSession, CookieJar

from stage.appkeys import VENUE
from tests.peers import Publisher, Viewer
from tests.test_server_contract import (
    UNKNOWN_STAGE,
    assert_error,
    bearer,
    call,
    sending_offer,
    wait_live,
    whip,
)
from tests.test_server_contract import closing as closing  # the fixture


async def rotate(server, http, stage_id, headers=None):
    return await call(
        http, "POST", f"{server.base}/api/stages/{stage_id}/key", headers=headers or {}
    )


async def performances_status(server, http, stage_id, headers=None) -> int:
    status, _, _ = await call(
        http,
        "GET",
        f"{server.base}/api/stages/{stage_id}/performances",
        headers=headers or {},
    )
    return status


async def test_rotating_gives_a_new_key_and_the_old_one_and_its_sessions_stop(
    server, http, new_stage
):
    stage = await new_stage()
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as dashboard:
        status, _, _ = await call(
            dashboard,
            "POST",
            f"{server.base}/api/stages/{stage['id']}/session",
            json={"key": stage["key"]},
        )
        assert status == 204
        assert await performances_status(server, dashboard, stage["id"]) == 200

        status, _, body = await rotate(server, http, stage["id"], bearer(stage["key"]))
        assert status == 200, body
        new_key = body["key"]
        assert isinstance(new_key, str) and len(new_key) >= 32, body
        assert new_key != stage["key"]

        assert await performances_status(server, dashboard, stage["id"]) == 401, (
            "a dashboard session opened with the old key still works"
        )
    old = await performances_status(server, http, stage["id"], bearer(stage["key"]))
    new = await performances_status(server, http, stage["id"], bearer(new_key))
    assert (old, new) == (401, 200), f"old key -> {old}, new key -> {new}"


async def test_rotating_from_the_dashboard_session_keeps_that_dashboard_open(
    server, new_stage
):
    stage = await new_stage()
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as dashboard:
        await call(
            dashboard,
            "POST",
            f"{server.base}/api/stages/{stage['id']}/session",
            json={"key": stage["key"]},
        )
        status, _, body = await rotate(server, dashboard, stage["id"])
        assert status == 200, f"rotate with the session cookie: {status} {body!r}"
        assert await performances_status(server, dashboard, stage["id"]) == 200, (
            "the dashboard that rotated the key lost its session"
        )
        status, _, _ = await rotate(server, dashboard, stage["id"])
        assert status == 200, "the renewed session cannot rotate again"


async def test_rotating_ends_the_publisher_and_viewers_move_on(
    server, http, new_stage, closing
):
    stage, other = await new_stage("Rotated"), await new_stage("Other")
    publisher = closing(await Publisher(server.base, stage["id"], stage["key"]).start())
    closing(await Publisher(server.base, other["id"], other["key"]).start())
    viewer = closing(await Viewer(server.base).start(stage_id=stage["id"]))
    await viewer.wait_video(count=5)

    status, _, body = await rotate(server, http, stage["id"], bearer(stage["key"]))
    assert status == 200, body
    new_key = body["key"]
    await wait_live(server, http, stage["id"], live=False)
    status, summary = await viewer.request("GET")
    assert summary["stage"]["id"] == other["id"], f"the viewer stayed: {summary}"
    assert not any(
        p.stage_id == stage["id"] for p in server.app[VENUE].publishers.values()
    ), "a publisher of the rotated stage is still running"

    # The old key can neither end nor start anything; the new one publishes.
    status, _, body = await call(
        http, "DELETE", server.base + publisher.location, headers=bearer(stage["key"])
    )
    assert_error(status, body, 401, "DELETE with the rotated key")
    pc, offer = await sending_offer(closing)
    status, _, body = await whip(server, http, stage, offer)
    assert_error(status, body, 401, "WHIP with the rotated key")
    pc, offer = await sending_offer(closing)
    status, _, answer = await whip(server, http, {**stage, "key": new_key}, offer)
    assert status == 201, f"WHIP with the new key: {status} {answer!r}"


async def test_rotating_needs_the_key(server, http, new_stage):
    stage = await new_stage()
    status, _, body = await rotate(server, http, stage["id"])
    assert_error(status, body, 401, "rotate without a key")
    status, _, body = await rotate(server, http, stage["id"], bearer("wrong"))
    assert_error(status, body, 401, "rotate with a wrong key")
    status, _, body = await rotate(server, http, UNKNOWN_STAGE, bearer(stage["key"]))
    assert_error(status, body, 404, "rotate an unknown stage")
    assert (
        await performances_status(server, http, stage["id"], bearer(stage["key"]))
        == 200
    ), "a refused rotation changed the key"
