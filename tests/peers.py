"""Real aiortc peers for tests: publishers and viewers that talk to the server over HTTP.

Nothing here imitates the server: these are ordinary WHIP/WHEP clients, like the
browser pages, built on aiortc.
"""

from __future__ import annotations

import asyncio
import fractions
import time

import aiohttp
import av
import numpy
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from stage.relay.frames import describe_video
from stage.relay.publisher import FrameTap

VIDEO_RATE = 90000


class PatternTrack(MediaStreamTrack):
    """Moving video: a bright bar sweeping across a colour that identifies the source."""

    kind = "video"

    def __init__(self, width=320, height=240, fps=30, shade=0) -> None:
        super().__init__()
        self.width, self.height, self.fps, self.shade = width, height, fps, shade
        self._count = 0
        self._start = None

    async def recv(self) -> av.VideoFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count / self.fps
        await asyncio.sleep(max(0, due - time.monotonic()))
        image = numpy.full((self.height, self.width, 3), self.shade, numpy.uint8)
        x = (self._count * 8) % self.width
        image[:, x : x + 16] = 255
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(self._count * VIDEO_RATE / self.fps)
        frame.time_base = fractions.Fraction(1, VIDEO_RATE)
        self._count += 1
        return frame


class ToneTrack(MediaStreamTrack):
    """A steady tone (440 Hz unless told) in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0) -> None:
        super().__init__()
        self.frequency = frequency
        self._count = 0
        self._start = None

    async def recv(self) -> av.AudioFrame:
        if self._start is None:
            self._start = time.monotonic()
        due = self._start + self._count * 0.02
        await asyncio.sleep(max(0, due - time.monotonic()))
        t = (numpy.arange(960) + self._count * 960) / 48000
        samples = (numpy.sin(2 * numpy.pi * self.frequency * t) * 8000).astype(
            numpy.int16
        )
        frame = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = 48000
        frame.pts = self._count * 960
        frame.time_base = fractions.Fraction(1, 48000)
        self._count += 1
        return frame


def only(transceiver, video_codec: str) -> None:
    """Offer only `video_codec` (and RTX) on a video transceiver."""
    codecs = RTCRtpReceiver.getCapabilities("video").codecs
    transceiver.setCodecPreferences(
        [c for c in codecs if c.mimeType in (f"video/{video_codec}", "video/rtx")]
    )


def new_pc() -> RTCPeerConnection:
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


async def wait_connected(pc: RTCPeerConnection, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while pc.connectionState != "connected":
        if pc.connectionState in ("failed", "closed") or time.monotonic() > deadline:
            raise AssertionError(f"peer connection is {pc.connectionState}")
        await asyncio.sleep(0.05)


class Publisher:
    def __init__(self, base: str, stage_id: str, key: str) -> None:
        self.base, self.stage_id, self.key = base, stage_id, key
        self.pc = new_pc()
        self.location: str | None = None

    async def start(
        self, audio=True, video=True, shade=0, tracks=(), video_codec=None, size=None
    ) -> Publisher:
        """Publish a tone and a pattern, or the given `tracks` instead.

        `video_codec` ("VP8" or "H264") offers only that codec for the pattern, and
        `size` (width, height) sets the pattern's size.
        """
        if tracks:
            for track in tracks:
                self.pc.addTransceiver(track, direction="sendonly")
        else:
            if audio:
                self.pc.addTransceiver(ToneTrack(), direction="sendonly")
            if video:
                width, height = size or (320, 240)
                pattern = PatternTrack(width=width, height=height, shade=shade)
                transceiver = self.pc.addTransceiver(pattern, direction="sendonly")
                if video_codec:
                    only(transceiver, video_codec)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.base}/whip/{self.stage_id}",
                data=self.pc.localDescription.sdp,
                headers={
                    "Content-Type": "application/sdp",
                    "Authorization": f"Bearer {self.key}",
                },
            ) as response:
                text = await response.text()
                assert response.status == 201, (response.status, text)
                self.location = response.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        await wait_connected(self.pc)
        return self

    async def stop(self, say_goodbye=True) -> None:
        if say_goodbye and self.location:
            async with aiohttp.ClientSession() as http:
                async with http.delete(
                    self.base + self.location,
                    headers={"Authorization": f"Bearer {self.key}"},
                ) as response:
                    assert response.status == 200, response.status
        await self.pc.close()


class Viewer:
    """A WHEP viewer that decodes what it gets and notes when each frame came."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.pc = new_pc()
        self.location: str | None = None
        self.frames = {"audio": [], "video": []}  # (arrival, frame summary)
        self._readers: list[asyncio.Task] = []
        self.cookies = aiohttp.CookieJar(unsafe=True)

    async def start(
        self, stage_id: str | None = None, audio=True, video=True, video_codec=None
    ) -> Viewer:
        """Watch; `video_codec` ("VP8" or "H264") offers only that video codec."""
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")
        if video:
            transceiver = self.pc.addTransceiver("video", direction="recvonly")
            if video_codec:
                only(transceiver, video_codec)
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        url = f"{self.base}/whep" + (f"/{stage_id}" if stage_id else "")
        async with aiohttp.ClientSession(cookie_jar=self.cookies) as http:
            async with http.post(
                url,
                data=self.pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as response:
                text = await response.text()
                assert response.status == 201, (response.status, text)
                self.location = response.headers["Location"]
        await self.pc.setRemoteDescription(RTCSessionDescription(text, "answer"))
        await wait_connected(self.pc)
        return self

    def _on_track(self, track) -> None:
        self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        try:
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    image = frame.to_ndarray(format="rgb24")
                    summary = (frame.width, frame.height, int(image[:, :, 0].mean()))
                else:
                    summary = frame.samples
                self.frames[track.kind].append((time.monotonic(), summary))
        except MediaStreamError:
            pass

    def video_since(self, moment: float) -> list:
        return [s for t, s in self.frames["video"] if t >= moment]

    async def wait_video(
        self, count=1, since=0.0, timeout=10.0, where=lambda s: True
    ) -> float:
        """Wait until `count` video frames matching `where` came after `since`."""
        deadline = time.monotonic() + timeout
        while True:
            matching = [
                (t, s) for t, s in self.frames["video"] if t >= since and where(s)
            ]
            if len(matching) >= count:
                return matching[count - 1][0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"only {len(matching)} of {count} video frames within {timeout} s"
                )
            await asyncio.sleep(0.02)

    async def request(self, method: str, path: str = "", **kwargs):
        async with aiohttp.ClientSession(cookie_jar=self.cookies) as http:
            async with http.request(
                method, self.base + self.location + path, **kwargs
            ) as r:
                body = (
                    await r.json()
                    if r.content_type == "application/json"
                    else await r.text()
                )
                return r.status, body

    async def stop(self, say_goodbye=True) -> None:
        if say_goodbye and self.location:
            await self.request("DELETE")
        for reader in self._readers:
            reader.cancel()
        await self.pc.close()


class CountingViewer:
    """A WHEP viewer that counts encoded frames as they arrive, decoding nothing."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.pc = new_pc()
        self.frames = {"audio": 0, "video": 0}
        self.keyframes = 0
        self.location = None

    async def start(self, stage_id: str | None = None) -> CountingViewer:
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")

        def count(kind):
            def on_frame(codec, frame):
                self.frames[kind] += 1
                if kind == "video" and describe_video(codec.name, frame.data)[0]:
                    self.keyframes += 1

            return on_frame

        def on_track(track):
            for t in self.pc.getTransceivers():
                if t.receiver.track is track:
                    t.receiver._RTCRtpReceiver__decoder_queue = FrameTap(
                        t.receiver, count(track.kind)
                    )

        self.pc.on("track", on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{self.base}/whep" + (f"/{stage_id}" if stage_id else ""),
                data=self.pc.localDescription.sdp,
                headers={"Content-Type": "application/sdp"},
            ) as r:
                assert r.status == 201, await r.text()
                self.location = r.headers["Location"]
                answer = await r.text()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await wait_connected(self.pc)
        return self

    def packets(self) -> int:
        """RTP packets received so far on every track, retransmissions included."""
        total = 0
        for transceiver in self.pc.getTransceivers():
            streams = transceiver.receiver._RTCRtpReceiver__remote_streams
            total += sum(s.packets_received for s in streams.values())
        return total

    async def next(self) -> dict:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.base}{self.location}/next") as r:
                assert r.status == 200, await r.text()
                return await r.json()

    async def stop(self) -> None:
        async with aiohttp.ClientSession() as http:
            await http.delete(self.base + self.location)
        await self.pc.close()


def record_rtp(viewer: Viewer, retransmissions=False) -> dict[str, list]:
    """Note (arrival, sequence number, timestamp) of every media packet received.

    Retransmissions (RTX) are left out unless asked for; they carry the timestamp of
    the packet they repeat, and the RTX stream's own sequence number.
    """
    seen = {"audio": [], "video": []}
    for transceiver in viewer.pc.getTransceivers():
        receiver, kind = transceiver.receiver, transceiver.kind
        handle = receiver._handle_rtp_packet
        primary = {c.payloadType for c in transceiver._codecs if c.name != "rtx"}

        async def noting(
            packet, arrival_time_ms, handle=handle, kind=kind, primary=primary
        ):
            if retransmissions or packet.payload_type in primary:
                seen[kind].append(
                    (time.monotonic(), packet.sequence_number, packet.timestamp)
                )
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = noting
    return seen
