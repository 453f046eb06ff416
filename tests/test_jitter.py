"""The publisher's frame buffers on awkward packet streams (stage/relay/jitter.py)."""

from aiortc.rtp import RtpPacket

from stage.relay.jitter import AUDIO_REORDER_WAIT, AudioFrameBuffer, VideoFrameBuffer


def packet(sequence: int, timestamp: int, data: bytes, marker=False) -> RtpPacket:
    made = RtpPacket(
        payload_type=96,
        marker=int(marker),
        sequence_number=sequence & 0xFFFF,
        timestamp=timestamp,
    )
    made._data = data  # what aiortc's depayloader leaves on a packet
    return made


def feed(buffer, packets) -> list:
    """Add packets in order; every frame released, as (timestamp, data)."""
    out = []
    for p in packets:
        _, frame = buffer.add(p)
        while frame is not None:
            out.append((frame.timestamp, frame.data))
            frame = buffer.take_ready()
    return out


def test_a_video_frame_leaves_with_its_marker_packet():
    buffer = VideoFrameBuffer()
    assert feed(buffer, [packet(10, 0, b"a"), packet(11, 0, b"b")]) == []
    assert feed(buffer, [packet(12, 0, b"c", marker=True)]) == [(0, b"abc")]


def test_a_lost_marker_packet_lets_the_frame_go_when_the_next_begins():
    buffer = VideoFrameBuffer()
    out = feed(buffer, [packet(1, 0, b"a"), packet(2, 0, b"b"), packet(3, 3000, b"c")])
    assert out == [(0, b"ab")]
    # A stream with no marker bits at all still flows, one frame behind.
    assert feed(buffer, [packet(4, 6000, b"d")]) == [(3000, b"c")]


def test_a_retransmission_releases_every_frame_waiting_behind_it():
    buffer = VideoFrameBuffer()
    held = [
        packet(1, 0, b"a"),  # 2, the end of the first frame, is missing
        packet(3, 3000, b"c", marker=True),
        packet(4, 6000, b"d", marker=True),
    ]
    assert feed(buffer, held) == []
    out = feed(buffer, [packet(2, 0, b"b", marker=True)])
    assert out == [(0, b"ab"), (3000, b"c"), (6000, b"d")]


def test_video_sequence_numbers_wrap():
    buffer = VideoFrameBuffer()
    out = feed(buffer, [packet(65535, 0, b"a"), packet(65536, 0, b"b", marker=True)])
    assert out == [(0, b"ab")]
    assert feed(buffer, [packet(1, 3000, b"c", marker=True)]) == [(3000, b"c")]


def test_audio_packets_leave_at_once_and_in_order():
    buffer = AudioFrameBuffer()
    assert feed(buffer, [packet(5, 0, b"a")]) == [(0, b"a")]
    assert feed(buffer, [packet(7, 1920, b"c")]) == []  # 6 may be overtaken
    assert feed(buffer, [packet(6, 960, b"b")]) == [(960, b"b"), (1920, b"c")]


def test_a_lost_audio_packet_is_skipped_after_a_short_wait():
    buffer = AudioFrameBuffer()
    feed(buffer, [packet(1, 0, b"a")])
    later = [packet(2 + i, 960 * (1 + i), bytes([i])) for i in range(1, 2 + AUDIO_REORDER_WAIT)]
    out = feed(buffer, later)  # packet 2 never comes
    assert [t for t, _ in out] == [p.timestamp for p in later]
    # When it does come after all, it is too late and dropped.
    assert feed(buffer, [packet(2, 960, b"late")]) == []
    assert feed(buffer, [packet(later[-1].sequence_number + 1, 9600, b"z")]) == [(9600, b"z")]


def test_audio_follows_a_sender_that_starts_counting_again():
    buffer = AudioFrameBuffer()
    feed(buffer, [packet(30000, 0, b"a"), packet(30001, 960, b"b")])
    assert feed(buffer, [packet(100, 1920, b"c")]) == [(1920, b"c")]
    assert feed(buffer, [packet(101, 2880, b"d")]) == [(2880, b"d")]


def test_a_retransmission_overtaken_by_later_frames_is_dropped():
    buffer = VideoFrameBuffer()
    frames = [packet(1000 + i, 3000 * i, bytes([i]), marker=True) for i in range(150)]
    assert len(feed(buffer, frames)) == 150
    # Packet 1010 again, 140 packets late: aiortc would start over from it.
    assert feed(buffer, [packet(1010, 30000, b"old", marker=True)]) == []
    assert feed(buffer, [packet(1150, 450000, b"new", marker=True)]) == [(450000, b"new")]


def test_a_video_sender_counting_afresh_is_followed():
    buffer = VideoFrameBuffer()
    feed(buffer, [packet(5000 + i, 900000 + 3000 * i, b"x", marker=True) for i in range(3)])
    # New sequence numbers and timestamps, both a little behind: believed in the end.
    restarted = [packet(4000 + i, 890000 + 3000 * i, b"y", marker=True) for i in range(100)]
    out = feed(buffer, restarted)
    assert out and out[-1] == (890000 + 3000 * 99, b"y")
