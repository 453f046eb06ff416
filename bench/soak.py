"""Memory soak: Stage's RSS while viewers keep joining and leaving one stage.

    .venv/bin/python -m bench.soak [--minutes 5] [--viewers 50] [--lifetime 5 40]
                                   [--every 5] [--per-process 10]

Stage runs as its own process (`python -m stage`, data in a temporary folder) with
the benchmark's publisher (`bench/publisher.py`) live on one stage. First the RSS with
the publisher alone is sampled (the baseline). Then --viewers places are kept busy by
viewers in their own processes (`bench/viewers.py --churn`): each viewer watches for
a random time within --lifetime seconds, leaves (DELETE) and is replaced by a new one,
so the server sees joins and leaves all the time, never more than --viewers at once.
Every --every seconds the server's RSS, open file descriptors and threads are noted
with the number of viewers watching. At the end the viewers leave, and after a pause
the RSS is noted once more.

Printed: RSS per viewer (median over the samples of (RSS - baseline) / viewers
watching), the slope of RSS over time after the first minute (least squares, MB per
minute; flat is good; over the whole run if it lasts under two minutes, and then
it mostly shows the viewers arriving), the same for the second half alone, and RSS
and file descriptors after everyone left against the baseline. JSON goes to bench/results/.
The run stops by itself; a hard limit of --minutes + 4 minutes ends it regardless.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy

from stage.relay.ice import gather_on

from . import machine
from .latency import SendLog
from .publisher import load_loop
from .servers import PythonServer, ViewerProcess, split

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
WARM_UP = 60.0  # seconds of churn left out of the slope


def note(pid: int) -> dict:
    return {
        "rss_mb": machine.rss_mb(pid),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
    }


def slope(samples: list[dict], key: str) -> float | None:
    """Least-squares slope of `key` over time, per minute."""
    if len(samples) < 3:
        return None
    t = numpy.array([s["t"] for s in samples]) / 60
    y = numpy.array([s[key] for s in samples])
    return float(numpy.polyfit(t, y, 1)[0])


async def soak(args) -> dict:
    gather_on(("127.0.0.1",))
    frames = load_loop()
    data = tempfile.mkdtemp(prefix="stage-soak-")
    command = ["-m", "stage", "--data", data, "--ice-address", "127.0.0.1"]
    command += ["--log-level", "WARNING", "--max-viewers", "100000"]
    server = PythonServer("stage", command)
    groups: list[ViewerProcess] = []
    samples: list[dict] = []
    try:
        await server.ready()
        published = await server.publish(frames, SendLog())
        await asyncio.sleep(3)
        baseline = []
        for _ in range(3):
            baseline.append(note(server.pid))
            await asyncio.sleep(2)
        print(
            f"publisher alone: RSS {baseline[-1]['rss_mb']:.1f} MB, "
            f"{baseline[-1]['fds']} fds, {baseline[-1]['threads']} threads",
            flush=True,
        )

        where = ["--whep", server.base, "--churn", *map(str, args.lifetime)]
        if args.light:
            where.append("--light")
        groups = await asyncio.gather(
            *(
                ViewerProcess.start(where, size)
                for size in split(args.viewers, args.per_process)
            )
        )
        start = time.monotonic()
        while (elapsed := time.monotonic() - start) < args.minutes * 60:
            counts = await asyncio.gather(*(g.ask("sample") for g in groups))
            sample = {
                "t": elapsed,
                **note(server.pid),
                **{k: sum(c[k] for c in counts) for k in counts[0]},
            }
            samples.append(sample)
            print(
                f"{elapsed:6.0f} s  watching {sample['active']:3d}  "
                f"RSS {sample['rss_mb']:6.1f} MB  fds {sample['fds']:4d}  "
                f"threads {sample['threads']:3d}  joined {sample['joined']:5d}  "
                f"left {sample['left']:5d}  failed {sample['failed']}",
                flush=True,
            )
            await asyncio.sleep(args.every)

        await asyncio.gather(*(g.stop() for g in groups))
        groups = []
        await asyncio.sleep(10)
        after = note(server.pid)
        if not published.connected:
            raise RuntimeError("the publisher's connection dropped during the soak")
        await published.stop()
    finally:
        await asyncio.gather(*(g.stop() for g in groups))
        server.stop()
        shutil.rmtree(data, ignore_errors=True)
    return {"baseline": baseline, "samples": samples, "after": after}


def summarise(run: dict) -> dict:
    base = statistics.median(b["rss_mb"] for b in run["baseline"])
    base_fds = statistics.median(b["fds"] for b in run["baseline"])
    samples = run["samples"]
    watched = [s for s in samples if s["active"]]
    # A run too short to leave the warm-up out gets the slope of all of it.
    warm_up = WARM_UP if samples[-1]["t"] >= 2 * WARM_UP else 0.0
    steady = [s for s in samples if s["t"] >= warm_up]
    second_half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    last = samples[-1]
    return {
        "baseline_rss_mb": base,
        "baseline_fds": base_fds,
        "per_viewer_mb": statistics.median(
            (s["rss_mb"] - base) / s["active"] for s in watched
        )
        if watched
        else None,
        "median_watching": statistics.median(s["active"] for s in samples),
        "peak_rss_mb": max(s["rss_mb"] for s in samples),
        "slope_from_seconds": warm_up,
        "slope_mb_per_minute": slope(steady, "rss_mb"),
        "second_half_slope_mb_per_minute": slope(second_half, "rss_mb"),
        "fds_slope_per_minute": slope(steady, "fds"),
        "joined": last["joined"],
        "left": last["left"],
        "failed": last["failed"],
        "after_rss_mb": run["after"]["rss_mb"],
        "after_fds": run["after"]["fds"],
        "after_threads": run["after"]["threads"],
    }


def number(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--lifetime", type=float, nargs=2, default=[5, 40])
    parser.add_argument("--every", type=float, default=5)
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument("--full-viewers", dest="light", action="store_false")
    args = parser.parse_args()
    start_machine = machine.describe()

    async def bounded() -> dict:
        return await asyncio.wait_for(soak(args), args.minutes * 60 + 240)

    run = asyncio.run(bounded())
    s = summarise(run)
    print(
        f"\n{args.minutes:g} min, up to {args.viewers} viewers at once "
        f"(median {s['median_watching']:g}), each watching "
        f"{args.lifetime[0]:g}-{args.lifetime[1]:g} s: {s['joined']} joined, "
        f"{s['left']} left, {s['failed']} failed to join\n"
        f"RSS: publisher alone {s['baseline_rss_mb']:.1f} MB, peak "
        f"{s['peak_rss_mb']:.1f} MB, {number(s['per_viewer_mb'], '.2f')} MB per "
        f"viewer watching\n"
        f"RSS slope from {s['slope_from_seconds']:.0f} s on: "
        f"{number(s['slope_mb_per_minute'], '+.2f')} MB/min; second half: "
        f"{number(s['second_half_slope_mb_per_minute'], '+.2f')} MB/min\n"
        f"after everyone left: RSS {s['after_rss_mb']:.1f} MB "
        f"({s['after_rss_mb'] - s['baseline_rss_mb']:+.1f}), fds {s['after_fds']} "
        f"(baseline {s['baseline_fds']:g}), threads {s['after_threads']}\n"
        f"machine: nproc {start_machine['nproc']}, {start_machine['cpu_model']}, "
        f"load average {start_machine['load_average'][0]:.1f} -> "
        f"{machine.load_average()[0]:.1f}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": start_machine,
                "arguments": vars(args),
                "summary": s,
                **run,
            },
            indent=1,
        )
    )
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
