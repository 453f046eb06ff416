"""The relay end to end: real aiortc publishers and viewers against the real server."""

import asyncio
import os
import struct
import time

import pytest
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtcpPsfbPacket, RtcpSrPacket

from stage.appkeys import VENUE

from tests.peers import Publisher, Viewer, record_rtp


async def test_viewer_sees_the_publisher(server, new_stage):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    await viewer.wait_video(count=30, timeout=10)
    sizes = {s[:2] for s in viewer.video_since(0)}
    assert sizes == {(320, 240)}
    assert len(viewer.frames["audio"]) > 20
    await viewer.stop()
    await publisher.stop()


def dark(summary) -> bool:
    return summary[2] < 100


def bright(summary) -> bool:
    return summary[2] >= 180


async def test_next_moves_to_the_other_stage_on_the_same_connection(server, new_stage):
    a, b = await new_stage("Dark"), await new_stage("Bright")
    pa = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    pb = await Publisher(server.base, b["id"], b["key"]).start(shade=200)
    viewer = await Viewer(server.base).start(stage_id=a["id"])
    await viewer.wait_video(count=10, where=dark)

    for round_ in range(4):
        target, other = (b, bright) if round_ % 2 == 0 else (a, dark)
        pressed = time.monotonic()
        status, body = await viewer.request("POST", "/next")
        assert status == 200, body
        assert body["stage"]["id"] == target["id"]
        first = await viewer.wait_video(count=1, since=pressed, where=other, timeout=5)
        await viewer.wait_video(count=15, since=first, where=other, timeout=5)
        stale = [s for s in viewer.video_since(first) if not other(s)]
        assert stale == [], (
            f"frames of the previous stage after the switch: {stale[:3]}"
        )

    assert viewer.pc.connectionState == "connected"
    await viewer.stop()
    await pa.stop()
    await pb.stop()


async def test_nothing_live_gives_409_with_retry_after(server, http):
    offer = await offer_sdp()
    async with http.post(
        f"{server.base}/whep", data=offer, headers={"Content-Type": "application/sdp"}
    ) as response:
        assert response.status == 409
        assert int(response.headers["Retry-After"]) > 0
        assert "Nobody is on stage" in (await response.json())["error"]


async def offer_sdp(audio=True, video=True) -> str:
    from tests.peers import new_pc

    pc = new_pc()
    if audio:
        pc.addTransceiver("audio", direction="recvonly")
    if video:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_when_the_performer_ends_viewers_move_on(server, new_stage):
    a, b = await new_stage("Dark"), await new_stage("Bright")
    pa = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    pb = await Publisher(server.base, b["id"], b["key"]).start(shade=200)
    viewer = await Viewer(server.base).start(stage_id=a["id"])
    await viewer.wait_video(count=5, where=dark)

    ended = time.monotonic()
    await pa.stop()
    await viewer.wait_video(count=10, since=ended, where=bright, timeout=5)
    status, body = await viewer.request("GET")
    assert body["stage"]["id"] == b["id"]

    # The last stage ends too: the viewer waits, still connected, and is seated again
    # as soon as someone goes live.
    await pb.stop()
    for _ in range(50):
        status, body = await viewer.request("GET")
        if body["stage"] is None:
            break
        await asyncio.sleep(0.1)
    assert body["stage"] is None
    back = time.monotonic()
    pa2 = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    await viewer.wait_video(count=5, since=back, where=dark, timeout=5)
    status, body = await viewer.request("GET")
    assert body["stage"]["id"] == a["id"]
    await viewer.stop()
    await pa2.stop()


async def test_a_second_publish_with_the_same_key_replaces_the_first(
    server, new_stage, http
):
    stage = await new_stage()
    first = await Publisher(server.base, stage["id"], stage["key"]).start(shade=0)
    viewer = await Viewer(server.base).start()
    await viewer.wait_video(count=5, where=dark)

    replaced = time.monotonic()
    second = await Publisher(server.base, stage["id"], stage["key"]).start(shade=200)
    await viewer.wait_video(count=10, since=replaced, where=bright, timeout=5)
    for _ in range(50):
        if first.pc.connectionState == "closed" or first.pc.connectionState == "failed":
            break
        await asyncio.sleep(0.1)
    async with http.get(f"{server.base}/api/stages") as response:
        live = (await response.json())["stages"]
    assert [s["id"] for s in live] == [stage["id"]], "one stage, no ghost"
    assert live[0]["viewers"] == 1
    await viewer.stop()
    await second.stop()
    async with http.get(f"{server.base}/api/stages") as response:
        assert (await response.json())["stages"] == []


async def test_five_viewers_joining_at_once_all_get_video(server, new_stage):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewers = [Viewer(server.base) for _ in range(5)]
    await asyncio.gather(*(v.start() for v in viewers))
    joined = time.monotonic()
    waits = [v.wait_video(count=20, since=joined, timeout=3) for v in viewers]
    await asyncio.gather(*waits)
    await asyncio.gather(*(v.stop() for v in viewers))
    await publisher.stop()


async def test_audio_only_performer_is_heard(server, new_stage):
    stage = await new_stage("Unplugged")
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start(
        video=False
    )
    viewer = await Viewer(server.base).start()
    for _ in range(50):
        if len(viewer.frames["audio"]) > 25:
            break
        await asyncio.sleep(0.1)
    assert len(viewer.frames["audio"]) > 25
    assert viewer.frames["video"] == []
    await viewer.stop()
    await publisher.stop()


def _client_socket(viewer: Viewer):
    """The UDP transport an aiortc test viewer receives its media on."""
    dtls = viewer.pc.getReceivers()[0].transport
    return dtls.transport._connection._nominated[1].protocol.transport


async def test_slow_viewer_does_not_stall_others(server, new_stage):
    from stage.appkeys import VENUE

    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    fast = await Viewer(server.base).start()
    slow = await Viewer(server.base).start()
    await fast.wait_video(count=5)
    await slow.wait_video(count=5)

    # The slow viewer stops reading its socket, as a starved link or a frozen tab
    # would: everything the server sends it is lost for 3 s.
    socket = _client_socket(slow)
    socket.pause_reading()
    started = time.monotonic()
    await asyncio.sleep(3)
    fast_frames = len(fast.video_since(started + 0.5))
    assert fast_frames > 60, f"the fast viewer got {fast_frames} frames in 2.5 s"
    venue = server.app[VENUE]
    stalled = venue.viewers[slow.location.rsplit("/", 1)[1]]
    assert stalled.tracks["video"].forwarded > 0

    # Reading again, it asks for what it missed and for a picture, and is back.
    socket.resume_reading()
    resumed = time.monotonic()
    for _ in range(50):
        if len(slow.video_since(resumed)) >= 10:
            break
        await asyncio.sleep(0.1)
    assert len(slow.video_since(resumed)) >= 10, "the slow viewer never recovered"
    await fast.stop()
    await slow.stop()
    await publisher.stop()


def counted_keyframe_requests(senders) -> list[float]:
    """When any of these senders was asked for a keyframe (its keyframe hook ran)."""
    requests = []
    for sender in senders:
        original = sender._send_keyframe

        def counted(original=original):
            requests.append(time.monotonic())
            original()

        sender._send_keyframe = counted
    return requests


def keyframe_requests(publisher: Publisher) -> list[float]:
    """When the publisher's video sender was asked for a keyframe (a PLI or FIR)."""
    return counted_keyframe_requests(
        s for s in publisher.pc.getSenders() if s.track and s.track.kind == "video"
    )


async def test_viewer_keyframe_requests_reach_the_publisher_coalesced(
    server, new_stage
):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    requests = keyframe_requests(publisher)
    viewers = [await Viewer(server.base).start() for _ in range(3)]
    await asyncio.gather(*(v.wait_video(count=5) for v in viewers))
    await asyncio.sleep(1.5)

    requests.clear()
    for _ in range(10):
        for viewer in viewers:
            receiver = next(
                t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video"
            )
            ssrc = receiver.getSynchronizationSources()[0].source
            await receiver._send_rtcp_pli(ssrc)
        await asyncio.sleep(0.02)
    await asyncio.sleep(1.0)
    # 30 PLIs from viewers within ~0.3 s: the publisher hears of it, but only a few times.
    assert 1 <= len(requests) <= 3, (
        f"{len(requests)} keyframe requests reached the publisher"
    )
    for viewer in viewers:
        await viewer.stop()
    await publisher.stop()


def video_receiver(viewer: Viewer):
    return next(t.receiver for t in viewer.pc.getTransceivers() if t.kind == "video")


def viewer_keyframe_requests(server) -> list[float]:
    """When the server heard a PLI or FIR from one of its viewers (its video sender's
    keyframe hook ran); the hub's own periodic requests are not counted."""
    return counted_keyframe_requests(
        served.tracks["video"].outlet.sender
        for served in server.app[VENUE].viewers.values()
    )


async def one_viewer_heard(server, new_stage):
    """A live stage with one aiortc viewer on it, whose keyframe requests the server
    hears are counted from now on: (publisher, viewer, requests)."""
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    await viewer.wait_video(count=5)
    return publisher, viewer, viewer_keyframe_requests(server)


async def test_a_viewers_fir_reaches_the_publisher(server, new_stage):
    """RFC 5104 FIR: the media SSRC field is 0 and the FCI names the source. aiortc
    routes feedback by the media SSRC, so a FIR from a browser used to be dropped."""
    publisher, viewer, requests = await one_viewer_heard(server, new_stage)
    receiver = video_receiver(viewer)
    source = receiver.getSynchronizationSources()[0].source
    fir = RtcpPsfbPacket(
        fmt=4, ssrc=1234, media_ssrc=0, fci=struct.pack("!IB3x", source, 1)
    )
    await receiver._send_rtcp(fir)
    await asyncio.sleep(0.5)
    assert len(requests) == 1, f"{len(requests)} keyframe requests heard from one FIR"
    await viewer.stop()
    await publisher.stop()


async def test_malformed_or_forged_viewer_rtcp_is_ignored(server, new_stage):
    """RTCP that does not decrypt, or whose lengths run past its end, asks for no
    keyframe, and the viewer's next PLI still works."""
    publisher, viewer, requests = await one_viewer_heard(server, new_stage)
    receiver = video_receiver(viewer)
    source = receiver.getSynchronizationSources()[0].source
    dtls = receiver.transport
    ice = dtls.transport._connection
    # A PLI whose length says 40 words, and a NACK cut short, both encrypted.
    too_long = struct.pack("!BBHII", 0x81, 206, 40, 1234, source)
    cut_nack = struct.pack("!BBHIIH", 0x81, 205, 3, 1234, source, 7)
    for raw in (too_long, cut_nack):
        await dtls._send_rtp(raw)
    # A PLI that does not decrypt: right header, random bytes for the rest.
    forged = struct.pack("!BBHII", 0x81, 206, 2, 1234, source) + os.urandom(30)
    await ice.send(forged)
    await asyncio.sleep(0.3)
    assert not requests, f"{len(requests)} keyframe requests from bad RTCP"

    await receiver._send_rtcp_pli(source)
    await asyncio.sleep(0.5)
    assert len(requests) == 1, "a PLI after the bad RTCP was not heard"
    await viewer.stop()
    await publisher.stop()


def note_reports(viewer: Viewer) -> dict[str, list]:
    """Per kind, in arrival order: ("rtp", wall time, timestamp, payload bytes) for
    each media packet and ("sr", wall time, report) for each sender report."""
    seen = {"audio": [], "video": []}
    for transceiver in viewer.pc.getTransceivers():
        receiver, kind = transceiver.receiver, transceiver.kind
        primary = {c.payloadType for c in transceiver._codecs if c.name != "rtx"}
        handle_rtp = receiver._handle_rtp_packet
        handle_rtcp = receiver._handle_rtcp_packet

        async def on_rtp(
            packet, arrival_time_ms, kind=kind, handle=handle_rtp, primary=primary
        ):
            if packet.payload_type in primary:
                note = ("rtp", time.time(), packet.timestamp, len(packet.payload))
                seen[kind].append(note)
            await handle(packet, arrival_time_ms)

        async def on_rtcp(packet, kind=kind, handle=handle_rtcp):
            if isinstance(packet, RtcpSrPacket):
                seen[kind].append(("sr", time.time(), packet))
            await handle(packet)

        receiver._handle_rtp_packet = on_rtp
        receiver._handle_rtcp_packet = on_rtcp
    return seen


def ntp_seconds(ntp: int) -> float:
    return (ntp >> 32) - 2208988800 + (ntp & 0xFFFFFFFF) / 2**32


@pytest.mark.alone  # real-time: see pytest.ini
async def test_sender_reports_map_timestamps_to_wall_clock_and_count(
    server, new_stage
):
    """Browsers line audio up with video through each stream's sender reports: the
    NTP time and RTP timestamp of one moment, and the packets and octets sent."""
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = await Viewer(server.base).start()
    seen = note_reports(viewer)
    await asyncio.sleep(4)

    for kind, events in seen.items():
        reports = [e for e in events if e[0] == "sr"]
        # One report per 0.5-1.5 s (RFC 3550): 2 to 8 in 4 s.
        assert 2 <= len(reports) <= 8, f"{kind}: {len(reports)} sender reports in 4 s"
        positions = [i for i, e in enumerate(events) if e[0] == "sr"]
        for start, end in zip(positions, positions[1:]):
            first, second = events[start][2], events[end][2]
            media = [e for e in events[start:end] if e[0] == "rtp"]
            counted = second.sender_info.packet_count - first.sender_info.packet_count
            octets = second.sender_info.octet_count - first.sender_info.octet_count
            assert counted == len(media), (
                f"{kind}: reports count {counted} packets, {len(media)} came between"
            )
            assert octets == sum(e[3] for e in media), f"{kind}: octet counts differ"
        for position in positions:
            report = events[position][2]
            stamp = report.sender_info.rtp_timestamp
            earlier = [e for e in events[:position] if e[0] == "rtp"]
            if not earlier:
                continue
            # The report names the last frame sent before it, and when it was sent.
            assert stamp == earlier[-1][2], f"{kind}: report for timestamp {stamp}"
            arrived = next(e[1] for e in earlier if e[2] == stamp)
            sent = ntp_seconds(report.sender_info.ntp_timestamp)
            assert -0.05 < arrived - sent < 0.1, (
                f"{kind}: frame sent at {sent:.3f} (report), arrived {arrived:.3f}"
            )
    await viewer.stop()
    await publisher.stop()


def assert_continuous(packets: list, rate: int, what: str) -> None:
    for (seq_a, ts_a), (seq_b, ts_b) in zip(packets, packets[1:], strict=False):
        assert (seq_b - seq_a) % 65536 == 1, f"{what}: sequence {seq_a} -> {seq_b}"
        step = (ts_b - ts_a) % (1 << 32)
        assert step < rate, f"{what}: timestamp jumps {step} ticks ({ts_a} -> {ts_b})"


async def test_outgoing_rtp_stays_continuous_across_next_and_a_new_publisher(
    server, new_stage
):
    a, b = await new_stage("Dark"), await new_stage("Bright")
    pa = await Publisher(server.base, a["id"], a["key"]).start(shade=0)
    pb = await Publisher(server.base, b["id"], b["key"]).start(shade=200)
    viewer = await Viewer(server.base).start(stage_id=a["id"])
    seen = record_rtp(viewer)
    await viewer.wait_video(count=5, where=dark)

    for where in (bright, dark, bright):
        pressed = time.monotonic()
        status, body = await viewer.request("POST", "/next")
        assert status == 200, body
        await viewer.wait_video(count=5, since=pressed, where=where)

    # The performer of the stage the viewer is on reconnects: a new publisher, with a
    # new SSRC and new RTP bases, takes over; the viewer's stream carries on.
    replaced = time.monotonic()
    pb2 = await Publisher(server.base, b["id"], b["key"]).start(shade=120)
    await viewer.wait_video(
        count=5, since=replaced, where=lambda s: 100 < s[2] < 180, timeout=3
    )
    await asyncio.sleep(1)
    for kind, rate in (("video", 90000), ("audio", 48000)):
        assert_continuous([(s, ts) for _, s, ts in seen[kind]], rate, kind)
    assert len(seen["video"]) > 20 and len(seen["audio"]) > 20, seen
    await viewer.stop()
    await pa.stop()
    await pb2.stop()
    await pb.pc.close()


async def test_fifty_viewers_nexting_onto_one_stage_cause_few_keyframe_requests(
    server, new_stage
):
    from tests.peers import CountingViewer

    target, source = await new_stage("Target"), await new_stage("Source")
    publisher = await Publisher(server.base, target["id"], target["key"]).start()
    other = await Publisher(server.base, source["id"], source["key"]).start(shade=200)
    requests = keyframe_requests(publisher)

    # Existing viewers of the target stage, and 50 viewers on the other stage.
    audience = [
        await Viewer(server.base).start(stage_id=target["id"]) for _ in range(2)
    ]
    crowd = []
    for _ in range(5):
        batch = [CountingViewer(server.base) for _ in range(10)]
        await asyncio.gather(*(v.start(stage_id=source["id"]) for v in batch))
        crowd += batch
    await audience[0].wait_video(count=10)
    await asyncio.sleep(1)

    requests.clear()
    before = {id(v): v.frames["video"] for v in crowd}
    storm = time.monotonic()
    moved = await asyncio.gather(*(v.next() for v in crowd))
    assert {m["stage"]["id"] for m in moved} == {target["id"]}
    took = time.monotonic() - storm
    await asyncio.sleep(2)

    # Everyone got pictures of the new stage; the publisher was asked for a keyframe
    # a handful of times at most (the hub also refreshes its kept picture every 45
    # frames, which may fall in this window).
    assert all(v.frames["video"] - before[id(v)] > 20 for v in crowd), [
        v.frames["video"] - before[id(v)] for v in crowd
    ]
    assert len(requests) <= 3, f"{len(requests)} keyframe requests for 50 Nexts"
    # The stage's own viewers kept their picture through it: as many frames in the
    # two seconds after the storm as in the two before (this process decodes them,
    # so the comparison, not an absolute rate, is what holds on a busy machine).
    for viewer in audience:
        times = [t for t, _ in viewer.frames["video"]]
        before = sum(1 for t in times if storm - 2 <= t < storm)
        during = sum(1 for t in times if storm <= t < storm + 2)
        assert during >= 0.7 * before > 0, f"frames before {before}, during {during}"
    print(f"50 Nexts in {took:.2f} s, {len(requests)} keyframe requests upstream")
    await asyncio.gather(*(v.stop() for v in crowd + audience))
    await publisher.stop()
    await other.stop()


class Losses:
    """Loses a few of a viewer's video packets on the way in, before SRTP sees them,
    as a network would; notes every packet that reaches the receiver, and what the
    server sends again for the lost ones: over RTX (the original sequence number leads
    the payload, RFC 4588) or, without RTX, the same packet once more."""

    def __init__(self, viewer: Viewer, count: int) -> None:
        transceiver = next(t for t in viewer.pc.getTransceivers() if t.kind == "video")
        codecs = transceiver._codecs
        self.media_types = {c.payloadType for c in codecs if c.name != "rtx"}
        self.rtx_types = {c.payloadType for c in codecs if c.name == "rtx"}
        self.count = count
        self.lost: list[int] = []
        self.received: dict[int, int] = {}  # seq -> timestamp, first copies
        self.again: dict[int, int] = {}  # lost seq -> timestamp of the copy sent again
        receiver = transceiver.receiver
        ice = receiver.transport.transport
        self._recv = ice._recv
        ice._recv = self._next_datagram
        self._handle_packet = receiver._handle_rtp_packet
        receiver._handle_rtp_packet = self._on_packet

    async def _next_datagram(self) -> bytes:
        while True:
            data = await self._recv()
            # SRTP leaves the RTP header in the clear (RFC 3711): the payload type
            # and sequence number can be read before decryption.
            media = 127 < data[0] < 192 and data[1] & 0x7F in self.media_types
            seq = int.from_bytes(data[2:4], "big")
            if not media or len(self.lost) == self.count or seq in self.lost:
                return data
            self.lost.append(seq)

    async def _on_packet(self, packet, arrival_time_ms: int) -> None:
        seq = packet.sequence_number
        if packet.payload_type in self.media_types:
            if seq in self.lost:
                self.again[seq] = packet.timestamp
            else:
                self.received[seq] = packet.timestamp
        elif packet.payload_type in self.rtx_types and len(packet.payload) >= 2:
            original = int.from_bytes(packet.payload[:2], "big")
            if original in self.lost:
                self.again[original] = packet.timestamp
        await self._handle_packet(packet, arrival_time_ms)

    def misplaced(self) -> list[int]:
        """Lost packets sent again with a timestamp outside their neighbours'."""
        wrong = []
        for seq in self.lost:
            before = self.received.get((seq - 1) % 65536)
            after = self.received.get((seq + 1) % 65536)
            stamp = self.again.get(seq)
            if before is None or after is None or seq in self.received:
                continue  # one of a run of losses: its neighbours were lost too
            if stamp is None or not before <= stamp <= after:
                wrong.append(seq)
        return wrong


@pytest.mark.parametrize("rtx", [True, False], ids=["rtx", "no-rtx"])
async def test_lost_video_packets_are_sent_again(server, new_stage, rtx):
    stage = await new_stage()
    publisher = await Publisher(server.base, stage["id"], stage["key"]).start()
    viewer = Viewer(server.base)
    video = viewer.pc.addTransceiver("video", direction="recvonly")
    if not rtx:
        codecs = RTCRtpReceiver.getCapabilities("video").codecs
        video.setCodecPreferences([c for c in codecs if c.mimeType == "video/VP8"])
    await viewer.start(stage["id"], video=False)
    await viewer.wait_video(count=10)

    # aiortc's receiver asks for the missing packets (NACK) when later ones arrive.
    losses = Losses(viewer, count=6)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if len(losses.lost) == 6 and losses.again.keys() >= set(losses.lost):
            break
        await asyncio.sleep(0.05)
    assert bool(losses.rtx_types) == rtx, losses.rtx_types
    assert len(losses.lost) == 6, f"only {len(losses.lost)} packets came at all"
    missing = sorted(set(losses.lost) - losses.again.keys())
    assert not missing, f"never sent again: {missing} of {losses.lost}"
    assert not losses.misplaced(), f"sent again with other timestamps: {losses.again}"
    resumed = time.monotonic()
    await viewer.wait_video(count=10, since=resumed)
    await viewer.stop()
    await publisher.stop()
