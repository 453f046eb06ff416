"""Relay cost: the server's CPU with one publisher and N viewers, all on 127.0.0.1.

    .venv/bin/python -m bench.relay [--viewers 0 1 10] [--seconds 10] [--rounds 3]

The server runs as its own process (`python -m stage`); the publisher (640x480 VP8 at
30 fps with moving content, plus Opus) and the viewers run in this one. Viewers count
frames without decoding them, so this process stays light. CPU is user+sys of the
server process over a fixed window, as % of one core; rounds alternate over the viewer
counts and the medians are printed, with each count's cost as a ratio to the
publisher-only baseline measured in the same run.
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

from stage.relay.ice import gather_on
from tests.peers import CountingViewer, Publisher, ToneTrack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def measure(base: str, pid: int, viewers: int, seconds: float) -> dict:
    group = [CountingViewer(base) for _ in range(viewers)]
    for viewer in group:
        await viewer.start()
    await asyncio.sleep(2)  # let keyframes and bitrates settle
    before = {id(v): dict(v.frames) for v in group}
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, t1 = cpu_seconds(pid), time.monotonic()
    fps = [(v.frames["video"] - before[id(v)]["video"]) / (t1 - t0) for v in group]
    result = {
        "viewers": viewers,
        "cpu_percent": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss_mb": rss_mb(pid),
        "fps_min": min(fps) if fps else None,
        "fps_median": statistics.median(fps) if fps else None,
    }
    for viewer in group:
        await viewer.stop()
    await asyncio.sleep(1)
    return result


async def run(args) -> list[dict]:
    gather_on(("127.0.0.1",))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="stage-bench-")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stage",
            "--port",
            str(port),
            "--data",
            data,
            "--ice-address",
            "127.0.0.1",
            "--log-level",
            "WARNING",
        ],
        cwd=ROOT,
    )
    try:
        for _ in range(100):
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{base}/api/stages", json={"name": "Bench"}
                    ) as r:
                        stage = await r.json()
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        from tests.peers import PatternTrack

        publisher = Publisher(base, stage["id"], stage["key"])
        publisher.pc.addTransceiver(ToneTrack(), direction="sendonly")
        publisher.pc.addTransceiver(PatternTrack(640, 480), direction="sendonly")
        await publisher.start(audio=False, video=False)
        await asyncio.sleep(2)

        rows: dict[int, list[dict]] = {n: [] for n in args.viewers}
        for round_ in range(args.rounds):
            for n in args.viewers:
                row = await measure(base, server.pid, n, args.seconds)
                rows[n].append(row)
                print(
                    f"round {round_ + 1} viewers {n:3d}: cpu {row['cpu_percent']:5.1f} %",
                    flush=True,
                )
        await publisher.stop()
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=20)

    summary = []
    for n, runs in rows.items():
        summary.append(
            {
                "viewers": n,
                "cpu_percent": statistics.median(r["cpu_percent"] for r in runs),
                "rss_mb": statistics.median(r["rss_mb"] for r in runs),
                "fps_min": min(
                    (r["fps_min"] for r in runs if r["fps_min"] is not None),
                    default=None,
                ),
                "fps_median": statistics.median(r["fps_median"] for r in runs)
                if n
                else None,
            }
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, nargs="+", default=[0, 1, 10])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    summary = asyncio.run(run(args))

    baseline = next((r["cpu_percent"] for r in summary if r["viewers"] == 0), None)
    print(
        "\nviewers  server CPU %  per viewer %  vs publisher-only  RSS MB  fps min/median"
    )
    for r in summary:
        per = (
            (r["cpu_percent"] - baseline) / r["viewers"]
            if baseline is not None and r["viewers"]
            else None
        )
        ratio = r["cpu_percent"] / baseline if baseline else None
        print(
            f"{r['viewers']:7d}  {r['cpu_percent']:12.1f}  "
            f"{per if per is not None else float('nan'):12.2f}  "
            f"{ratio if ratio else float('nan'):17.2f}  {r['rss_mb']:6.0f}  "
            f"{r['fps_min'] or 0:.1f}/{r['fps_median'] or 0:.1f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "machine": os.uname().nodename,
                "cores": os.cpu_count(),
                "results": summary,
            },
            indent=1,
        )
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
