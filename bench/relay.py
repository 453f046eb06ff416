"""Relay cost: a server's CPU with one publisher and N viewers, Stage beside a reference.

    .venv/bin/python -m bench.relay [--viewers 0 1 10 20] [--seconds 10] [--rounds 3]
                                    [--reference-max 10] [--no-reference]
                                    [--per-process 10]

Each server runs as its own process: Stage (`python -m stage`) and the reference,
aiortc's MediaRelay with a sender per viewer (`bench/mediarelay_server.py`, which
re-encodes for every viewer as aiortc's examples do). The publisher (640x480 VP8 at
30 fps with moving grain, about 1 Mb/s, plus Opus) runs in this process, the same
for both servers; the publisher is connected only while its server is measured, so
this process encodes one stream at a time. Viewers run in their own processes
(`bench/viewers.py`, --per-process each) and count frames and RTP packets without
decoding. CPU is user+sys of the server process over a fixed window, as % of
one core; "waiting" is the time its threads were ready to run but had no core (on a
shared machine, a low CPU figure with much waiting means starved, not idle). Rounds
alternate over servers and viewer counts, and medians are printed.

Per viewer = (CPU with N viewers - CPU with the publisher alone) / N, each server
against its own publisher-only figure from the same run. Packets per core-second =
RTP packets all viewers received per second / server cores busy (total, and over the
publisher-only figure). The reference re-encodes, so past a few viewers it saturates
one core and its viewers' frame rate collapses: its per-viewer figure is then a floor,
and it is not run past --reference-max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import av
import numpy

from stage.relay.ice import gather_on
from tests.peers import PatternTrack, Publisher, ToneTrack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_seconds(pid: int) -> float:
    """Time the process was ready to run but waiting for a core (scheduler stats):
    on a shared machine this says whether a low CPU figure means idle or starved."""
    return (
        sum(
            int(Path(task, "schedstat").read_text().split()[1])
            for task in Path(f"/proc/{pid}/task").iterdir()
        )
        / 1e9
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class BusyTrack(PatternTrack):
    """Video that costs bits like a camera does: a grainy picture that drifts, with a
    band of fresh grain every frame, so the encoder runs near its target bitrate
    (about 1 Mb/s here) rather than coasting on a flat picture."""

    def __init__(self, width=640, height=480, fps=30) -> None:
        super().__init__(width, height, fps)
        self._random = numpy.random.default_rng(1)
        self._image = self._random.integers(0, 255, (height, width, 3), numpy.uint8)

    async def recv(self) -> av.VideoFrame:
        frame = await super().recv()  # paces, counts and stamps
        count = self._count - 1
        image = numpy.roll(self._image, 4 * count, axis=1)
        band = (count * 4) % self.height
        image[band : band + 4] = self._random.integers(
            0, 255, (min(4, self.height - band), self.width, 3), numpy.uint8
        )
        busy = av.VideoFrame.from_ndarray(image, format="rgb24")
        busy.pts, busy.time_base = frame.pts, frame.time_base
        return busy


class Server:
    """A server process under test, and the stage its publisher goes live on."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, *command, "--port", str(self.port)], cwd=ROOT
        )
        self.stage: dict | None = None

    async def ready(self) -> None:
        for _ in range(150):
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{self.base}/api/stages", json={"name": "Bench"}
                    ) as r:
                        self.stage = await r.json()
                return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    async def publish(self) -> Publisher:
        publisher = Publisher(self.base, self.stage["id"], self.stage["key"])
        publisher.pc.addTransceiver(ToneTrack(), direction="sendonly")
        publisher.pc.addTransceiver(BusyTrack(), direction="sendonly")
        await publisher.start(audio=False, video=False)
        await asyncio.sleep(2)
        return publisher

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ViewerProcess:
    """Some of the viewers, in a process of their own (bench/viewers.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, base: str, count: int) -> ViewerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.viewers",
            base,
            str(count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        line = await asyncio.wait_for(process.stdout.readline(), 60 + count)
        if line.strip() != b"ready":
            raise RuntimeError(f"viewers did not start: {line!r}")
        return cls(process)

    async def sample(self) -> dict:
        self.process.stdin.write(b"sample\n")
        await self.process.stdin.drain()
        return json.loads(await self.process.stdout.readline())

    async def stop(self) -> None:
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


async def sample(groups: list[ViewerProcess]) -> tuple[list[int], int]:
    samples = await asyncio.gather(*(g.sample() for g in groups))
    frames = [f for s in samples for f in s["frames"]]
    return frames, sum(s["packets"] for s in samples)


async def measure(server: Server, viewers: int, seconds: float, per_process: int):
    sizes = [per_process] * (viewers // per_process)
    if viewers % per_process:
        sizes.append(viewers % per_process)
    groups = await asyncio.gather(
        *(ViewerProcess.start(server.base, size) for size in sizes)
    )
    await asyncio.sleep(2)  # let keyframes and bitrates settle
    frames0, packets0 = await sample(groups)
    pid = server.process.pid
    cpu0, wait0, t0 = cpu_seconds(pid), run_queue_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, wait1, t1 = cpu_seconds(pid), run_queue_seconds(pid), time.monotonic()
    frames1, packets1 = await sample(groups)
    elapsed = t1 - t0
    fps = [(b - a) / elapsed for a, b in zip(frames0, frames1)]
    result = {
        "viewers": viewers,
        "cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "waiting_percent": 100 * (wait1 - wait0) / elapsed,
        "rss_mb": rss_mb(pid),
        "packets_per_second": (packets1 - packets0) / elapsed,
        "fps_min": min(fps) if fps else None,
        "fps_median": statistics.median(fps) if fps else None,
    }
    await asyncio.gather(*(g.stop() for g in groups))
    await asyncio.sleep(1)
    return result


async def run(args) -> dict[str, list[dict]]:
    gather_on(("127.0.0.1",))
    data = tempfile.mkdtemp(prefix="stage-bench-")
    stage_command = ["-m", "stage", "--data", data, "--ice-address", "127.0.0.1"]
    stage_command += ["--log-level", "WARNING", "--max-viewers", "100000"]
    servers = [Server("stage", stage_command)]
    if args.reference:
        servers.append(Server("mediarelay", ["-m", "bench.mediarelay_server"]))
    counts = {
        "stage": args.viewers,
        "mediarelay": [n for n in args.viewers if n <= args.reference_max],
    }
    rows: dict[str, dict[int, list[dict]]] = {
        s.name: {n: [] for n in counts[s.name]} for s in servers
    }
    try:
        for server in servers:
            await server.ready()
        for round_ in range(args.rounds):
            for server in servers:
                publisher = await server.publish()
                for n in counts[server.name]:
                    row = await measure(server, n, args.seconds, args.per_process)
                    rows[server.name][n].append(row)
                    print(
                        f"round {round_ + 1} {server.name:10s} viewers {n:3d}: "
                        f"cpu {row['cpu_percent']:5.1f} %  "
                        f"waiting {row['waiting_percent']:5.1f} %  "
                        f"{row['packets_per_second']:7.0f} packets/s  "
                        f"fps min {row['fps_min'] or 0:4.1f}",
                        flush=True,
                    )
                await publisher.stop()
                await asyncio.sleep(1)
    finally:
        for server in servers:
            server.stop()
    return {name: summarise(by_count) for name, by_count in rows.items()}


def summarise(by_count: dict[int, list[dict]]) -> list[dict]:
    summary = []
    for n, runs in by_count.items():
        summary.append(
            {
                "viewers": n,
                "rounds": len(runs),
                "cpu_percent": statistics.median(r["cpu_percent"] for r in runs),
                "waiting_percent": statistics.median(
                    r["waiting_percent"] for r in runs
                ),
                "rss_mb": statistics.median(r["rss_mb"] for r in runs),
                "packets_per_second": statistics.median(
                    r["packets_per_second"] for r in runs
                ),
                "fps_min": min(
                    (r["fps_min"] for r in runs if r["fps_min"] is not None),
                    default=None,
                ),
                "fps_median": statistics.median(r["fps_median"] for r in runs)
                if n
                else None,
            }
        )
    baseline = next((r["cpu_percent"] for r in summary if r["viewers"] == 0), None)
    for r in summary:
        n, cpu, pps = r["viewers"], r["cpu_percent"], r["packets_per_second"]
        extra = cpu - baseline if baseline is not None else None
        r["per_viewer_percent"] = extra / n if n and extra is not None else None
        r["packets_per_core_second"] = pps / (cpu / 100) if n and cpu else None
        r["marginal_packets_per_core_second"] = (
            pps / (extra / 100) if n and extra and extra > 0 else None
        )
    return summary


def number(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def print_tables(results: dict[str, list[dict]]) -> None:
    print(
        "\nserver      viewers  CPU %  waiting %  per viewer %  RSS MB  packets/s"
        "  packets/core-s  marginal  fps min/median"
    )
    for name, summary in results.items():
        for r in summary:
            print(
                f"{name:10s}  {r['viewers']:7d}  {r['cpu_percent']:5.1f}  "
                f"{r['waiting_percent']:9.1f}  "
                f"{number(r['per_viewer_percent'], '12.2f'):>12s}  "
                f"{r['rss_mb']:6.0f}  {r['packets_per_second']:9.0f}  "
                f"{number(r['packets_per_core_second'], '14.0f'):>14s}  "
                f"{number(r['marginal_packets_per_core_second'], '8.0f'):>8s}  "
                f"{number(r['fps_min'], '.1f')}/{number(r['fps_median'], '.1f')}"
            )
    reference = {r["viewers"]: r for r in results.get("mediarelay", [])}
    if reference:
        print(
            "\nviewers  Stage per viewer / MediaRelay per viewer  (MediaRelay fps min)"
        )
        for r in results["stage"]:
            other = reference.get(r["viewers"])
            if not r["viewers"] or other is None:
                continue
            ratio = (
                r["per_viewer_percent"] / other["per_viewer_percent"]
                if r["per_viewer_percent"] is not None and other["per_viewer_percent"]
                else None
            )
            print(
                f"{r['viewers']:7d}  {number(ratio, '.3f'):>40s}  "
                f"({number(other['fps_min'], '.1f')})"
            )
    print("\nJanus: not measured (needs the network-namespace set-up in TESTING.md).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[0, 1, 10, 20])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference-max", type=int, default=10)
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument("--no-reference", dest="reference", action="store_false")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print_tables(results)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": os.uname().nodename,
                "cores": os.cpu_count(),
                "seconds": args.seconds,
                "rounds": args.rounds,
                "results": results,
            },
            indent=1,
        )
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
