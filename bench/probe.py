"""Stage with a probe inside: what the server adds, apart from the bench's processes.

    python -m bench.probe [the flags of python -m stage]

Runs Stage exactly as `python -m stage` does, after wrapping a few of its functions and
aiortc's/aioice's from outside (nothing of this is in the product):

- aioice's `Connection.data_received` and `recv`: the moment each datagram was read
  from a publisher's or viewer's socket (by the object's identity, until aiortc's DTLS
  transport takes it from the connection's queue);
- `StageHub._on_frame` (and `_fan_out_later`, where the hub hands a video frame on in
  slices): the frames being fanned out, and the arrival of the datagram that completed
  each (the last packet of a video frame, the audio packet);
- `Outlet.send`: when each viewer's send of a frame returned, i.e. just after its last
  packet went to the socket. Arrival -> that moment is the server-added latency of the
  frame for that viewer, in µs. Sends outside the hub's fan-out (a newcomer's replayed
  run, frames held until the connection was up) are counted apart. A frame's fan-out
  lasts from its arrival at the hub to its last send, in wall and thread CPU time.
- `asyncio.Handle._run`: every callback of the event loop, timed in wall and thread CPU
  time; one longer than STALL_NS is a stall (noted with the coroutine it ran). Wall much
  above CPU means the thread was off the core (another process, or another thread
  holding the GIL).
- `gc.callbacks`: the cyclic collector's pauses, by generation;
- `stage.allocator`'s malloc_trim: how long each trim took (it holds glibc's heap
  locks, so the event loop's mallocs wait for it).

Stalls are matched with the collector's pauses and the trims that fell inside them.

The bench drives it with signals: SIGUSR1 starts a window (clears what was noted),
SIGUSR2 ends it and writes a summary as JSON to the file named by STAGE_PROBE_FILE
(written whole, then renamed).
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import signal
import sys
import time

import numpy
from aioice.ice import Connection

from stage import allocator
from stage.__main__ import main as stage_main
from stage.relay.hub import StageHub
from stage.relay.outlet import Outlet

STALL_NS = 5_000_000
FILE_VARIABLE = "STAGE_PROBE_FILE"
# Datagrams noted but never taken (a connection closed with packets queued) are
# forgotten past this many.
ARRIVALS_LIMIT = 100_000

clock = time.perf_counter_ns
cpu_clock = time.thread_time_ns


class Probe:
    def __init__(self) -> None:
        self.recording = False
        self.arrivals: dict[int, int] = {}
        self.taken_arrival: int | None = None  # of the datagram DTLS took last
        self.in_fan_out = False  # the hub is handing frames on
        self.fanned: str | None = None  # what the running callback fanned out
        # id(frame) -> [frame, key, arrival, start, cpu at start, last send, cpu then]
        self.frames: dict[int, list] = {}
        self.gc_started = 0
        self.gc_cpu_started = 0
        self.clear()

    def clear(self) -> None:
        self.started = clock()
        # (kind, keyframe) -> latencies in µs, one per viewer and frame
        self.latency: dict[tuple[str, bool], list[int]] = collections.defaultdict(list)
        self.waits: dict[str, list[int]] = collections.defaultdict(list)
        self.frames = {}
        self.fanouts: dict[tuple[str, bool], list[tuple[int, int, int]]] = (
            collections.defaultdict(list)
        )
        self.sent: collections.Counter = collections.Counter()
        self.other_sends: collections.Counter = collections.Counter()
        self.video_arrivals: list[int] = []
        self.stalls: list[tuple[int, int, int, str]] = []  # start, wall, cpu, place
        self.callbacks = 0
        self.gc: list[tuple[int, int, int, int]] = []  # start, generation, cpu, µs
        self.trims: list[tuple[int, int]] = []  # start, µs

    # the datagram path

    def note_datagram(self, data) -> None:
        arrivals = self.arrivals
        if len(arrivals) > ARRIVALS_LIMIT:
            arrivals.clear()
        arrivals[id(data)] = clock()

    def take_datagram(self, data) -> None:
        self.taken_arrival = self.arrivals.pop(id(data), None)

    # the fan-out

    def fan_out(self, hub, frame, original) -> None:
        arrival = self.taken_arrival
        if arrival is None or not self.recording:
            original(hub, frame)
            return
        start = clock()
        key = (frame.kind, bool(frame.keyframe) and frame.kind == "video")
        self.fanned = f"{frame.kind}{' keyframe' if key[1] else ''}"
        self.waits[frame.kind].append((start - arrival) // 1000)
        if frame.kind == "video":
            self.video_arrivals.append(arrival)
        cpu = cpu_clock()
        self.frames[id(frame)] = [frame, key, arrival, start, cpu, start, cpu]
        self.fanning(original, hub, frame)

    def fanning(self, original, *args) -> None:
        self.in_fan_out = True
        try:
            original(*args)
        finally:
            self.in_fan_out = False
        if len(self.frames) > 200:
            self._finish_frames(clock() - 2_000_000_000)

    def _finish_frames(self, before: int) -> None:
        """Count the fan-outs of frames that arrived before `before` as done."""
        for ident, (frame, key, arrival, start, cpu0, last, cpu1) in list(
            self.frames.items()
        ):
            if arrival < before:
                del self.frames[ident]
                packets = len(frame.payloads) if frame.payloads else 0
                self.fanouts[key].append(
                    ((last - start) // 1000, (cpu1 - cpu0) // 1000, packets)
                )

    def sent_frame(self, outlet, frame) -> None:
        now = clock()
        noted = self.frames.get(id(frame)) if self.in_fan_out else None
        if noted is not None and noted[0] is frame:
            self.latency[noted[1]].append((now - noted[2]) // 1000)
            noted[5], noted[6] = now, cpu_clock()
        else:
            self.other_sends[frame.kind] += 1
        self.sent[(id(outlet), frame.kind)] += 1

    # the event loop and the collector

    def callback_ran(self, handle, start: int, wall: int, cpu: int) -> None:
        self.callbacks += 1
        if wall > STALL_NS:
            place = describe(handle)
            if self.fanned:
                place += f" (fan-out of {self.fanned})"
            self.stalls.append((start, wall // 1000, cpu // 1000, place))

    def collector(self, phase: str, info: dict) -> None:
        if phase == "start":
            self.gc_started = clock()
            self.gc_cpu_started = cpu_clock()
        elif self.recording and self.gc_started:
            started = self.gc_started
            cpu = (cpu_clock() - self.gc_cpu_started) // 1000
            self.gc.append(
                (started, info["generation"], cpu, (clock() - started) // 1000)
            )

    def trimmed(self, start: int, end: int) -> None:
        if self.recording:
            self.trims.append((start, (end - start) // 1000))

    def _inside_stalls(self, events: list[tuple]) -> tuple[int, float]:
        """How many of `events` (start, ..., µs) overlap a stall, and their µs."""
        count, total = 0, 0
        for start, *_, us in events:
            end = start + us * 1000
            for s_start, wall, _, _ in self.stalls:
                if start < s_start + wall * 1000 and end > s_start:
                    count += 1
                    total += us
                    break
        return count, total / 1000

    # the window

    def summary(self) -> dict:
        seconds = (clock() - self.started) / 1e9
        self._finish_frames(clock())
        video = self.latency[("video", False)] + self.latency[("video", True)]
        audio = self.latency[("audio", False)]
        per_outlet = [
            count / seconds for (_, kind), count in self.sent.items() if kind == "video"
        ]
        stall_total = sum(s[1] for s in self.stalls)
        by_place: collections.Counter = collections.Counter()
        for _, wall, _, place in self.stalls:
            by_place[place] += wall
        gc_in_stalls = self._inside_stalls(self.gc)
        trims_in_stalls = self._inside_stalls(self.trims)
        gaps = numpy.diff(numpy.asarray(sorted(self.video_arrivals))) // 1000
        return {
            "seconds": seconds,
            "video_us": spread(video),
            "video_keyframe_us": spread(self.latency[("video", True)]),
            "video_delta_us": spread(self.latency[("video", False)]),
            "audio_us": spread(audio),
            "wait_before_fan_out_us": {k: spread(v) for k, v in self.waits.items()},
            "fan_out_us": {
                f"{kind}{' keyframe' if key else ''}": {
                    **spread([wall for wall, _, _ in runs]),
                    "cpu": spread([cpu for _, cpu, _ in runs]),
                    "packets_median": float(numpy.median([p for _, _, p in runs]))
                    if runs
                    else None,
                }
                for (kind, key), runs in self.fanouts.items()
            },
            "keyframe_fan_outs_us_cpu_packets": self.fanouts[("video", True)],
            "sends_outside_fan_out": dict(self.other_sends),
            "video_frames_in_per_second": len(self.video_arrivals) / seconds,
            "video_arrivals_within_5ms": int(numpy.sum(gaps < 5000)),
            "video_sends_per_viewer_per_second": spread(per_outlet, scale=1),
            "callbacks": self.callbacks,
            "stalls_over_5ms": len(self.stalls),
            "stall_total_ms": stall_total / 1000,
            "stall_max_ms": max((s[1] for s in self.stalls), default=0) / 1000,
            "stall_off_cpu_ms": sum(s[1] - s[2] for s in self.stalls) / 1000,
            "stalls_by_place_ms": {p: t / 1000 for p, t in by_place.most_common(8)},
            "gc": {
                str(g): {
                    "count": sum(1 for _, gen, _, _ in self.gc if gen == g),
                    "total_ms": sum(d for _, gen, _, d in self.gc if gen == g) / 1000,
                    "cpu_ms": sum(c for _, gen, c, _ in self.gc if gen == g) / 1000,
                    "max_ms": max(
                        (d for _, gen, _, d in self.gc if gen == g), default=0
                    )
                    / 1000,
                }
                for g in (0, 1, 2)
            },
            "gc_in_stalls": {"count": gc_in_stalls[0], "ms": gc_in_stalls[1]},
            "trims": spread([us for _, us in self.trims]),
            "trims_in_stalls": {"count": trims_in_stalls[0], "ms": trims_in_stalls[1]},
        }


def spread(values: list, scale: int = 1) -> dict:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    p50, p99 = numpy.percentile(numpy.asarray(values), [50, 99])
    return {
        "n": len(values),
        "p50": float(p50) / scale,
        "p99": float(p99) / scale,
        "max": float(max(values)) / scale,
    }


def describe(handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        return getattr(coro, "__qualname__", repr(coro))
    return getattr(callback, "__qualname__", repr(callback))


def install(probe: Probe) -> None:
    data_received = Connection.data_received

    def noting_data_received(self, data, component):
        probe.note_datagram(data)
        data_received(self, data, component)

    Connection.data_received = noting_data_received

    # aiortc's ICE transport binds the connection's recv when it is made.
    recv = Connection.recv

    async def taking_recv(self):
        data = await recv(self)
        probe.take_datagram(data)
        return data

    Connection.recv = taking_recv

    on_frame = StageHub._on_frame

    def probed_on_frame(self, frame):
        probe.fan_out(self, frame, on_frame)

    StageHub._on_frame = probed_on_frame

    # The hub hands big video fan-outs on in slices (if it does).
    fan_out_later = getattr(StageHub, "_fan_out_later", None)
    if fan_out_later is not None:

        def probed_fan_out_later(self):
            if probe.recording:
                probe.fanned = "video (a slice)"
                probe.fanning(fan_out_later, self)
            else:
                fan_out_later(self)

        StageHub._fan_out_later = probed_fan_out_later

    send = Outlet.send

    def probed_send(self, frame, timestamp):
        sent = send(self, frame, timestamp)
        if sent and probe.recording:
            probe.sent_frame(self, frame)
        return sent

    Outlet.send = probed_send

    run = asyncio.events.Handle._run

    def timed_run(self):
        wall, cpu = clock(), cpu_clock()
        probe.fanned = None
        try:
            run(self)
        finally:
            if probe.recording:
                probe.callback_ran(self, wall, clock() - wall, cpu_clock() - cpu)

    asyncio.events.Handle._run = timed_run
    gc.callbacks.append(probe.collector)

    malloc_trim = allocator._malloc_trim

    def timed_malloc_trim():
        trim = malloc_trim()
        if trim is None:
            return None

        def timed_trim(pad):
            start = clock()
            trim(pad)
            probe.trimmed(start, clock())

        return timed_trim

    allocator._malloc_trim = timed_malloc_trim

    def start(signum, frame) -> None:
        probe.clear()
        probe.recording = True

    def stop(signum, frame) -> None:
        probe.recording = False
        path = os.environ[FILE_VARIABLE]
        with open(path + ".part", "w") as out:
            json.dump(probe.summary(), out)
        os.replace(path + ".part", path)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


if __name__ == "__main__":
    install(Probe())
    stage_main(sys.argv[1:])
