"""The reference the relay benchmark compares with: aiortc's MediaRelay, as its examples use it.

    python -m bench.mediarelay_server --port 8090

One publisher over WHIP-like HTTP; each viewer gets a peer connection with one sender
per track, fed through `MediaRelay.subscribe`. MediaRelay shares *decoded* frames, so
every viewer's sender encodes its own copy (RELAY-NOTES.md): this is what an aiortc
application does without an encoded pass-through. It speaks just enough of Stage's
HTTP shape for the benchmark's clients (create a stage, WHIP, WHEP, DELETE) and is no
part of Stage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets

from aiohttp import web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

from stage.relay.ice import gather_on

logger = logging.getLogger(__name__)

STAGE = {"id": "reference", "name": "MediaRelay", "key": "reference"}


class Reference:
    def __init__(self) -> None:
        self.relay = MediaRelay()
        self.tracks: dict = {}  # kind -> the publisher's remote track
        self.peers: dict[str, RTCPeerConnection] = {}
        self.drains: list[asyncio.Task] = []

    async def answer(self, pc: RTCPeerConnection, offer: str) -> str:
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def publish(self, request: web.Request) -> web.Response:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

        @pc.on("track")
        def on_track(track) -> None:
            self.tracks[track.kind] = track
            # aiortc decodes every received frame into an unbounded queue; a consumer
            # that discards keeps it drained while nobody watches (MediaBlackhole's job
            # in aiortc's examples).
            self.drains.append(
                asyncio.ensure_future(drain(self.relay.subscribe(track)))
            )

        answer = await self.answer(pc, await request.text())
        resource = secrets.token_hex(4)
        self.peers[resource] = pc
        return web.Response(
            status=201,
            text=answer,
            content_type="application/sdp",
            headers={"Location": f"/whip/resources/{resource}"},
        )

    async def watch(self, request: web.Request) -> web.Response:
        if not self.tracks:
            return web.json_response({"error": "nothing is live"}, status=409)
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await pc.setRemoteDescription(
            RTCSessionDescription(await request.text(), "offer")
        )
        for transceiver in pc.getTransceivers():
            track = self.tracks.get(transceiver.kind)
            if track is not None:
                transceiver.direction = "sendonly"
                transceiver.sender.replaceTrack(self.relay.subscribe(track))
        await pc.setLocalDescription(await pc.createAnswer())
        viewer = secrets.token_hex(4)
        self.peers[viewer] = pc
        return web.Response(
            status=201,
            text=pc.localDescription.sdp,
            content_type="application/sdp",
            headers={"Location": f"/whep/viewers/{viewer}"},
        )

    async def leave(self, request: web.Request) -> web.Response:
        pc = self.peers.pop(request.match_info["id"], None)
        if pc is None:
            return web.json_response({"error": "unknown"}, status=404)
        await pc.close()
        if request.path.startswith("/whip/"):
            self.tracks.clear()
            for task in self.drains:
                task.cancel()
        return web.json_response({})


async def drain(track) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        pass


async def create_stage(request: web.Request) -> web.Response:
    return web.json_response(STAGE, status=201)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    gather_on(("127.0.0.1",))
    reference = Reference()
    app = web.Application()
    app.router.add_post("/api/stages", create_stage)
    app.router.add_post("/whip/{stage}", reference.publish)
    app.router.add_post("/whep", reference.watch)
    app.router.add_post("/whep/{stage}", reference.watch)
    app.router.add_delete("/whip/resources/{id}", reference.leave)
    app.router.add_delete("/whep/viewers/{id}", reference.leave)

    async def close_all(app: web.Application) -> None:
        for pc in list(reference.peers.values()):
            await pc.close()

    app.on_shutdown.append(close_all)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
