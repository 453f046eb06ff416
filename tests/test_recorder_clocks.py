"""A recording lasts as long as the show, whatever the publisher's clocks do.

Each show here is sent by a real aiortc publisher whose timestamps misbehave in one way
(tests/clocks.py): they wrap past 2^32, one frame comes stamped in the past, old packets
reach the server again, the clock jumps ahead or back, the performer reconnects with a
new clock. Each recording is downloaded, decoded with PyAV and checked against the
wall-clock length of the show: its stated duration, every stream's span, timestamps
that only go forward, and the performance's recorded length.
"""

import asyncio
import time

from tests.clocks import (
    WRAP,
    JumpingTrack,
    Paused,
    StaleFrameTrack,
    replay_old_packets,
    rtp_origin,
    shift_rtp_clock,
    skew_sender_reports,
)
from tests.peers import Publisher
from tests.show import BeepTrack, CaptureClock, FlashTrack, assert_plays, check_file
from tests.test_recorder import performances, wait_recording
from tests.test_recorder_field import download


def sender_of(publisher: Publisher, kind: str):
    for transceiver in publisher.pc.getTransceivers():
        if transceiver.kind == kind:
            return transceiver.sender
    raise AssertionError(f"no {kind} sender")


class Show:
    """One performance by a real publisher, and the checks on what it left behind."""

    def __init__(self, server, http, stage, tmp_path) -> None:
        self.server, self.http, self.stage, self.tmp_path = (
            server,
            http,
            stage,
            tmp_path,
        )
        self.publisher = Publisher(server.base, stage["id"], stage["key"])
        self.began = None

    def add(self, *tracks) -> None:
        for track in tracks:
            self.publisher.pc.addTransceiver(track, direction="sendonly")

    async def start(self) -> None:
        await self.publisher.start()
        self.began = time.monotonic()

    async def end(self) -> float:
        await self.publisher.stop()
        return time.monotonic() - self.began

    async def checked_recording(self, wall: float, audio_hole=0.1, performance=None):
        """Download and decode the recording; it must last as long as the show."""
        if performance is None:
            performance = await wait_recording(self.http, self.server, self.stage)
        path = await download(
            self.http, self.server, self.stage, performance, self.tmp_path
        )
        checked = check_file(path)
        print(f"{wall:.2f} s wall: {checked.duration} s file, spans {checked.spans}")
        assert_plays(checked, seconds=wall, audio_hole=audio_hole)
        for kind, (first, last) in checked.spans.items():
            assert last - first <= wall + 1.0, (kind, checked.spans, wall)
        # The performance's own length is the show's, too.
        assert abs(performance["duration"] - wall) <= 2.0, (performance, wall)
        return checked


async def test_rtp_timestamps_that_wrap_past_2_32(server, http, new_stage, tmp_path):
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    show.add(BeepTrack(clock), FlashTrack(clock))
    # Both clocks pass 2^32 a few seconds into the show.
    rtp_origin(sender_of(show.publisher, "audio"), WRAP - 3 * 48000)
    rtp_origin(sender_of(show.publisher, "video"), WRAP - 2 * 90000)
    await show.start()
    await asyncio.sleep(7)
    wall = await show.end()
    await show.checked_recording(wall)


async def test_one_video_frame_stamped_in_the_past(server, http, new_stage, tmp_path):
    # aiortc counted this step back as a wrap: every later frame 2^32 ticks ahead,
    # a 7 s show recorded as 47729 s.
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    video = StaleFrameTrack(clock, at=3.0, back=0.5)
    show.add(BeepTrack(clock), video)
    await show.start()
    await asyncio.sleep(7)
    wall = await show.end()
    assert video.stale_sent
    await show.checked_recording(wall)


async def test_old_video_packets_reaching_the_server_again(
    server, http, new_stage, tmp_path
):
    # What the memory soak hit: retransmissions arriving some hundred packets late
    # reset aiortc's jitter buffer, which hands an old frame over again.
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    show.add(BeepTrack(clock), FlashTrack(clock))
    await show.start()
    await asyncio.sleep(5)
    sent = await replay_old_packets(sender_of(show.publisher, "video"))
    assert sent >= 4, sent
    await asyncio.sleep(3)
    wall = await show.end()
    await show.checked_recording(wall)


async def test_a_video_clock_that_leaps_ten_minutes_ahead(
    server, http, new_stage, tmp_path
):
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    show.add(BeepTrack(clock), JumpingTrack(clock, at=3.0, by=600.0))
    await show.start()
    await asyncio.sleep(7)
    wall = await show.end()
    await show.checked_recording(wall)


async def test_a_video_clock_that_steps_back_for_good(
    server, http, new_stage, tmp_path
):
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    show.add(BeepTrack(clock), FlashTrack(clock))
    await show.start()
    await asyncio.sleep(4)
    shift_rtp_clock(sender_of(show.publisher, "video"), -3 * 90000)
    await asyncio.sleep(4)
    wall = await show.end()
    checked = await show.checked_recording(wall)
    # Video goes on after the step back (about a second of it is dropped as stale
    # before the new clock is followed), up to the end of the show.
    assert checked.spans["video"][1] > wall - 1.0, (checked.spans, wall)


async def pause_show(server, http, new_stage, tmp_path, clock_stops: bool):
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    # Both tracks go quiet for 4 s: the stage is held, then carries on with the same
    # publisher and the same recording.
    show.add(
        Paused(BeepTrack(clock), at=3.0, length=4.0, clock_stops=clock_stops),
        Paused(FlashTrack(clock), at=3.0, length=4.0, clock_stops=clock_stops),
    )
    await show.start()
    await asyncio.sleep(11)
    wall = await show.end()
    listed = await performances(http, server, show.stage)
    assert len(listed) == 1, listed
    # The pause stays in the recording as a hole in time, not squeezed out.
    checked = await show.checked_recording(wall, audio_hole=5.0)
    assert 3.0 < checked.audio_gap < 5.0, checked.audio_gap
    for kind, (first, last) in checked.spans.items():
        assert last - first > wall - 2.0, (kind, checked.spans, wall)


async def test_a_pause_while_the_publisher_clock_runs_on(
    server, http, new_stage, tmp_path
):
    await pause_show(server, http, new_stage, tmp_path, clock_stops=False)


async def test_a_pause_while_the_publisher_clock_stands_still(
    server, http, new_stage, tmp_path
):
    await pause_show(server, http, new_stage, tmp_path, clock_stops=True)


async def test_sender_reports_on_a_clock_a_minute_off(
    server, http, new_stage, tmp_path
):
    show = Show(server, http, await new_stage(), tmp_path)
    clock = CaptureClock()
    show.add(BeepTrack(clock), FlashTrack(clock))
    skew_sender_reports(sender_of(show.publisher, "video"), 60.0)
    await show.start()
    await asyncio.sleep(6)
    wall = await show.end()
    checked = await show.checked_recording(wall)
    video, audio = checked.spans["video"], checked.spans["audio"]
    assert abs(video[0] - audio[0]) < 0.5, checked.spans


async def test_a_performer_reconnecting_with_a_new_clock(
    server, http, new_stage, tmp_path
):
    stage = await new_stage()
    first = Show(server, http, stage, tmp_path)
    clock = CaptureClock()
    first.add(BeepTrack(clock), FlashTrack(clock))
    rtp_origin(sender_of(first.publisher, "video"), 1000)
    await first.start()
    await asyncio.sleep(4)
    # The page reloads: no goodbye, a new connection with the same key within the
    # reconnect window, its clocks from a new origin just before a wrap.
    await first.publisher.stop(say_goodbye=False)
    first_wall = time.monotonic() - first.began
    second = Show(server, http, stage, tmp_path)
    clock = CaptureClock()
    second.add(BeepTrack(clock), FlashTrack(clock))
    rtp_origin(sender_of(second.publisher, "audio"), WRAP - 48000)
    rtp_origin(sender_of(second.publisher, "video"), WRAP - 90000)
    await second.start()
    await asyncio.sleep(5)
    second_wall = await second.end()

    for _ in range(100):
        listed = await performances(http, server, stage)
        if len(listed) == 2 and all(p["recording"]["state"] == "ready" for p in listed):
            break
        await asyncio.sleep(0.1)
    newest, oldest = listed
    assert [p["recording"]["state"] for p in listed] == ["ready", "ready"], listed
    await second.checked_recording(second_wall, performance=newest)
    # The first performance ends when the second goes live, a moment after its
    # media stopped: its recording is the media, its length a little more.
    path = await download(http, server, stage, oldest, tmp_path)
    checked = check_file(path)
    print(f"first: {first_wall:.2f} s wall, {checked.duration} s file, {oldest}")
    assert_plays(checked, seconds=first_wall)
    assert first_wall - 1.0 < oldest["duration"] < first_wall + 5.0, oldest


class SlowClock(CaptureClock):
    """A capture clock that runs at `rate` of real time: an encoder that cannot keep up."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def now(self) -> float:
        return super().now() * self.rate

    async def until(self, t: float) -> None:
        await super().until(t / self.rate)


class StallingClock(CaptureClock):
    """A capture clock whose process stops for `length` s at `at` s, then catches up."""

    def __init__(self, at: float, length: float) -> None:
        super().__init__()
        self.at, self.length = at, length

    async def until(self, t: float) -> None:
        if t >= self.at and self.now() < self.at + self.length:
            await super().until(self.at + self.length)
        await super().until(t)


async def test_an_encoder_that_falls_behind_is_recorded_without_holes(
    server, http, new_stage, tmp_path
):
    # An encoder at 0.7x real time stamps 0.7 s of media per second. The recording
    # plays that media without holes (it used to be cut every few seconds to follow
    # arrival) and so is shorter than the show.
    show = Show(server, http, await new_stage(), tmp_path)
    clock = SlowClock(0.7)
    show.add(BeepTrack(clock), FlashTrack(clock))
    await show.start()
    await asyncio.sleep(12)
    wall = await show.end()
    performance = await wait_recording(show.http, show.server, show.stage)
    path = await download(show.http, show.server, show.stage, performance, tmp_path)
    checked = check_file(path)
    assert_plays(checked, seconds=clock.now(), audio_hole=0.1)
    video, audio = checked.spans["video"], checked.spans["audio"]
    assert abs(video[0] - audio[0]) < 0.5 and abs(video[1] - audio[1]) < 0.5, checked
    assert checked.duration < wall - 2.0, (checked.duration, wall)


async def test_a_stalled_publisher_that_catches_up_keeps_the_show_length(
    server, http, new_stage, tmp_path
):
    # The publisher's process stops for 2.5 s, then sends what it captured meanwhile
    # in a burst: nothing was missing, so nothing is inserted either.
    show = Show(server, http, await new_stage(), tmp_path)
    clock = StallingClock(at=3.0, length=2.5)
    show.add(BeepTrack(clock), FlashTrack(clock))
    await show.start()
    await asyncio.sleep(9)
    wall = await show.end()
    await show.checked_recording(wall, audio_hole=0.1)
