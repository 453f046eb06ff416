"""A process of viewers for the relay benchmark, driven over stdin/stdout.

    python -m bench.viewers --whep BASE COUNT [--decoders K]
    python -m bench.viewers --janus URL --feed ID COUNT [--decoders K]

Starts COUNT viewers of the stage at BASE (WHEP, as Stage and the MediaRelay
reference speak it) or of the publisher ID in Janus's VideoRoom at URL (Janus's HTTP
API: Janus offers, the viewer answers). All but K of them count frames and RTP packets
without decoding: encoded frames are taken where aiortc's decoder queue was, or, with
--light, packets are taken before aiortc's receiver sees them (`LightTap`). K of them
decode, to show that the stream is watchable. Then it prints `ready` and answers one
command per line:

- `sample`: one JSON line, video frames per viewer (decoded ones for the decoders),
  RTP packets in all, and the decoders' frame counts and picture sizes;
- `mark`: start noting when each video packet arrives (`bench/latency.py`); prints `ok`;
- `pair JSON`: given the publisher's send times by key, prints the delays of the
  packets that arrived since `mark`, in µs;
- `stop` (or end of input): the viewers leave, and the process ends.

With `--churn SHORTEST LONGEST`, COUNT places are kept busy by viewers that come and
go, each watching for a random time in that range (the memory soak, `bench/soak.py`);
`sample` then answers how many watch now and how many joined, left and failed.

Receiving in aiortc costs about as much per packet as sending, so viewers are spread
over processes to keep the clients from being the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import re
import sys
import threading
import time

import aiohttp
import pylibsrtp
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtcpReceiverInfo, RtcpRrPacket

from stage.relay.ice import gather_on

from .janus import ROOM, JanusSession
from .latency import ArrivalLog, rtp_payload

logger = logging.getLogger(__name__)

VP8 = re.compile(r"^a=rtpmap:(\d+) VP8/90000", re.MULTILINE | re.IGNORECASE)


class FrameCounter:
    """Stands where a receiver's decoder queue was: counts encoded frames, decodes none.

    `put` runs on the event loop (aiortc's jitter buffer hands over each frame);
    `get` runs in the receiver's decoder thread, which now only waits to be stopped.
    """

    def __init__(self) -> None:
        self.frames = 0
        self._stopped = threading.Event()

    def put(self, item) -> None:
        if item is None:
            self._stopped.set()
        else:
            self.frames += 1

    def get(self):
        self._stopped.wait()
        return None


class LightTap:
    """Takes a connected viewer's SRTP packets before aiortc sees them: counts packets,
    and video frames by the marker bit of their last packet, and decrypts only those
    last packets, for the latency figures. What aiortc's receiver would do for each
    packet (STUN check, queue, SRTP, parsing, jitter buffer, NACK) costs a counting
    viewer about 2 % of a core more here, some 100 µs a packet, and the viewers would
    take a core of their own long before the servers do. STUN (ICE consent), DTLS and RTCP from the server still go to
    aiortc. Once a second the tap sends a receiver report of its own (highest
    sequence number per source, no loss figures), as a browser does; a server may
    take a viewer that reports nothing for gone (Stage does, after 6 s). It sends no
    NACKs, so lost packets stay lost."""

    def __init__(self, viewer: BenchViewer, video_type: int) -> None:
        self.viewer = viewer
        self.video_type = video_type
        self.packets = 0
        self.frames = 0
        self.highest: dict[int, int] = {}  # SSRC -> extended highest sequence number
        receiver = next(iter(viewer.pc.getTransceivers())).receiver
        dtls = receiver.transport
        self.srtp = dtls._rx_srtp
        for protocol in dtls.transport._connection._protocols:
            protocol.datagram_received = self._wrap(protocol.datagram_received)
        self._reports = asyncio.ensure_future(self._report(receiver))

    def _wrap(self, original):
        def datagram_received(data: bytes, addr) -> None:
            # SRTP, not SRTCP (RFC 5761 §4: payload types 64-95 with the marker bit)
            if len(data) > 12 and 127 < data[0] < 192 and not 192 <= data[1] <= 223:
                self.packets += 1
                self._sequence(int.from_bytes(data[8:12]), data[2] << 8 | data[3])
                if data[1] == 0x80 | self.video_type:  # a video frame's last packet
                    self.frames += 1
                    if self.viewer.arrivals.recording:
                        self._note(data)
                return
            original(data, addr)

        return datagram_received

    def _sequence(self, ssrc: int, seq: int) -> None:
        highest = self.highest.get(ssrc)
        if highest is None:
            self.highest[ssrc] = seq
            return
        cycles = highest & ~0xFFFF
        if seq < 0x4000 and highest & 0xFFFF > 0xC000:  # wrapped round
            cycles += 0x10000
        self.highest[ssrc] = max(highest, cycles | seq)

    def _note(self, data: bytes) -> None:
        try:
            packet = self.srtp.unprotect(data)
        except pylibsrtp.Error:
            return
        parsed = rtp_payload(packet)
        if parsed is not None:
            self.viewer.arrivals.note(parsed[2])

    async def _report(self, receiver) -> None:
        own = receiver._RTCRtpReceiver__rtcp_ssrc
        while True:
            await asyncio.sleep(0.5 + random.random())
            reports = [
                RtcpReceiverInfo(
                    ssrc=ssrc,
                    fraction_lost=0,
                    packets_lost=0,
                    highest_sequence=highest,
                    jitter=0,
                    lsr=0,
                    dlsr=0,
                )
                for ssrc, highest in self.highest.items()
            ]
            if reports:
                try:
                    await receiver._send_rtcp(RtcpRrPacket(ssrc=own, reports=reports))
                except ConnectionError:
                    return

    def stop(self) -> None:
        self._reports.cancel()


class BenchViewer:
    def __init__(self, decode: bool, light: bool = False) -> None:
        self.decode = decode
        self.light = light and not decode
        self.tap: LightTap | None = None
        self.video_type: int | None = None
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.counters: dict[str, FrameCounter] = {}
        self.decoded = 0
        self.size = (0, 0)
        self.arrivals = ArrivalLog()
        self.leave = None
        self._readers: list[asyncio.Task] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track) -> None:
        # The track event comes during setRemoteDescription, before the receiver
        # starts its decoder thread, so its queue can still be swapped.
        if self.decode:
            if track.kind == "video":
                self._readers.append(asyncio.ensure_future(self._read(track)))
            return
        for transceiver in self.pc.getTransceivers():
            if transceiver.receiver.track is track:
                counter = FrameCounter()
                transceiver.receiver._RTCRtpReceiver__decoder_queue = counter
                self.counters[track.kind] = counter

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                self.decoded += 1
                self.size = (frame.width, frame.height)
        except MediaStreamError:
            pass

    @property
    def frames(self) -> int:
        if self.decode:
            return self.decoded
        if self.tap is not None:
            return self.tap.frames + self._counted()
        return self._counted()

    def _counted(self) -> int:
        counter = self.counters.get("video")
        return counter.frames if counter else 0

    def _watch_arrivals(self, sdp: str) -> None:
        video = next(t for t in self.pc.getTransceivers() if t.kind == "video").receiver
        self.video_type = int(VP8.search(sdp).group(1))
        self.arrivals.watch(video, self.video_type)

    async def watch_whep(self, base: str, stage: str | None = None) -> None:
        """Watch over WHEP: the roulette's stage, or `stage`."""
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{base}/whep" + (f"/{stage}" if stage else ""),
                data=self.pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as r:
                answer = await r.text()
                if r.status != 201:
                    raise RuntimeError(f"WHEP {r.status}: {answer}")
                location = base + r.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        self._watch_arrivals(answer)

        async def leave() -> None:
            async with aiohttp.ClientSession() as http:
                await http.delete(location)

        self.leave = leave
        await self._connected()

    async def watch_janus(self, url: str, feed: int) -> None:
        session = await JanusSession(url).create()
        self.leave = session.destroy
        handle = await session.attach()
        joined = await session.message(
            handle,
            {
                "request": "join",
                "ptype": "subscriber",
                "room": ROOM,
                "streams": [{"feed": feed}],
            },
        )
        offer = joined["jsep"]["sdp"]
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        self._watch_arrivals(offer)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await session.message(
            handle,
            {"request": "start", "room": ROOM},
            {"type": "answer", "sdp": self.pc.localDescription.sdp, "trickle": False},
        )
        await self._connected()

    async def _connected(self, timeout: float = 30) -> None:
        for _ in range(int(timeout / 0.05)):
            if self.pc.connectionState == "connected":
                if self.light:
                    self.tap = LightTap(self, self.video_type)
                return
            if self.pc.connectionState in ("failed", "closed"):
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"viewer's peer connection is {self.pc.connectionState}")

    def packets(self) -> int:
        """RTP packets received so far on every track, retransmissions included."""
        total = self.tap.packets if self.tap is not None else 0
        for transceiver in self.pc.getTransceivers():
            streams = transceiver.receiver._RTCRtpReceiver__remote_streams
            total += sum(s.packets_received for s in streams.values())
        return total

    async def stop(self) -> None:
        if self.leave is not None:
            try:
                await asyncio.wait_for(self.leave(), 5)
            except (TimeoutError, aiohttp.ClientError) as exc:
                logger.warning("viewer could not say goodbye: %s", exc)
        for reader in self._readers:
            reader.cancel()
        if self.tap is not None:
            self.tap.stop()
        await self.pc.close()


def sample(viewers: list[BenchViewer]) -> dict:
    return {
        # When the counts were read, by this process: rates are counts over the time
        # between two samples, not over the bench's window (the two differ by the
        # time it took to ask every process, which grows with their load).
        "at": time.monotonic(),
        "frames": [v.frames for v in viewers],
        "packets": sum(v.packets() for v in viewers),
        "packets_each": [v.packets() for v in viewers],
        "decoded": [[v.decoded, *v.size] for v in viewers if v.decode],
    }


class Churn:
    """COUNT places that viewers keep taking and leaving: each viewer watches for a
    random time between the two lifetimes, leaves, and another takes its place."""

    def __init__(self, args) -> None:
        self.args = args
        self.random = random.Random()
        self.viewers: set[BenchViewer] = set()
        self.joined = self.left = self.failed = 0
        self._places: list[asyncio.Task] = []

    def start(self) -> None:
        self._places = [
            asyncio.ensure_future(self._place()) for _ in range(self.args.count)
        ]

    async def _place(self) -> None:
        shortest, longest = self.args.churn
        await asyncio.sleep(self.random.uniform(0, longest))
        while True:
            viewer = BenchViewer(decode=False, light=self.args.light)
            try:
                try:
                    await asyncio.wait_for(watch(viewer, self.args), 30)
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as exc:
                    logger.warning("a viewer could not join: %s", exc)
                    self.failed += 1
                    await asyncio.sleep(1)
                    continue
                self.joined += 1
                self.viewers.add(viewer)
                await asyncio.sleep(self.random.uniform(shortest, longest))
                self.left += 1
            finally:
                self.viewers.discard(viewer)
                await viewer.stop()

    def sample(self) -> dict:
        return {
            "active": len(self.viewers),
            "joined": self.joined,
            "left": self.left,
            "failed": self.failed,
        }

    async def stop(self) -> None:
        for place in self._places:
            place.cancel()
        await asyncio.gather(*self._places, return_exceptions=True)


async def watch(viewer: BenchViewer, args) -> None:
    if args.janus:
        await viewer.watch_janus(args.janus, args.feed)
    else:
        await viewer.watch_whep(args.whep, args.stage)


async def main(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    gather_on(("127.0.0.1",))
    if args.churn:
        churn = Churn(args)
        churn.start()
        viewers = []
    else:
        viewers = [
            BenchViewer(decode=n < args.decoders, light=args.light)
            for n in range(args.count)
        ]
        try:
            for viewer in viewers:
                await watch(viewer, args)
        except Exception as exc:  # the bench notes it and goes on
            print(f"failed: {exc!r}", flush=True)
            await asyncio.gather(*(v.stop() for v in viewers))
            return
    print("ready", flush=True)

    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        command, _, rest = line.partition(" ")
        if command == "sample" and args.churn:
            print(json.dumps(churn.sample()), flush=True)
        elif command == "sample":
            print(json.dumps(sample(viewers)), flush=True)
        elif command == "mark":
            for viewer in viewers:
                viewer.arrivals.start()
            print("ok", flush=True)
        elif command == "pair":
            sent = json.loads(rest)
            delays, arrived = [], []
            for viewer in viewers:
                some, count = viewer.arrivals.pair(sent)
                delays += some
                arrived.append([len(some), count])
            print(json.dumps({"delays": delays, "arrived": arrived}), flush=True)
        else:  # "stop", or the benchmark went away
            break
    if args.churn:
        await churn.stop()
    await asyncio.gather(*(v.stop() for v in viewers))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--whep", metavar="BASE")
    where.add_argument("--janus", metavar="URL")
    parser.add_argument("--feed", type=int)
    parser.add_argument("--stage", help="watch this stage (WHEP), not the roulette's")
    parser.add_argument("--decoders", type=int, default=0)
    parser.add_argument(
        "--light",
        action="store_true",
        help="counting viewers take their packets before aiortc does (LightTap)",
    )
    parser.add_argument(
        "--churn",
        type=float,
        nargs=2,
        metavar=("SHORTEST", "LONGEST"),
        help="viewers come and go, each watching this many seconds",
    )
    parser.add_argument("count", type=int)
    asyncio.run(main(parser.parse_args()))
