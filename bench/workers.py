"""Workers: the CPU of each Stage process with two stages watched, --workers 1 vs 2.

    .venv/bin/python -m bench.workers [--viewers 50] [--seconds 10] [--rounds 2]

For each round and each worker count, a fresh `python -m stage --workers W` (on
127.0.0.1, data in a temporary folder), two stages published from this process
(`bench/publisher.py`: 640x480 VP8 at 1 Mb/s plus Opus), and --viewers light viewers
on each stage, asked for by id (`bench/viewers.py --stage`, 10 per process). After a
settling pause, the CPU (user+sys, % of one core) of every Stage process over
--seconds: the front and each worker, or the one process. Printed are the medians
over the rounds; the viewers' median fps says whether the relay kept up. The run stops
itself after --hard-limit seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from stage.relay.ice import gather_on

from . import machine
from .latency import SendLog
from .publisher import load_loop, publish_whip
from .servers import ROOT, PythonServer, ViewerProcess, split

SETTLE = 3.0


def stage_processes(server: PythonServer) -> dict[str, int]:
    """The pid of each Stage process, by role: the workers are the front's children."""
    pid = server.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if not children:
        return {"single": pid}
    return {"front": pid, **{f"worker {i}": int(c) for i, c in enumerate(children)}}


async def new_stage(server: PythonServer, name: str) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base}/api/stages", json={"name": name}) as r:
            return await r.json()


async def one_round(workers: int, args, frames) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as data:
        server = PythonServer(
            "stage",
            ["-m", "stage", "--workers", str(workers), "--data", data]
            + ["--ice-address", "127.0.0.1", "--log-level", "WARNING"],
        )
        published, groups = [], []
        try:
            await server.ready()  # it made a first stage
            pids = stage_processes(server)
            for stage in (server.stage, await new_stage(server, "Two")):
                publisher = await publish_whip(server.base, stage, frames, SendLog())
                published.append(publisher)
                for count in split(args.viewers, 10):
                    groups.append(
                        await ViewerProcess.start(
                            ["--whep", server.base, "--stage", stage["id"], "--light"],
                            count,
                        )
                    )
            await asyncio.sleep(SETTLE)

            before = {role: machine.cpu_seconds(pid) for role, pid in pids.items()}
            first = [await g.ask("sample") for g in groups]
            started = time.monotonic()
            await asyncio.sleep(args.seconds)
            after = {role: machine.cpu_seconds(pid) for role, pid in pids.items()}
            last = [await g.ask("sample") for g in groups]
            window = time.monotonic() - started
            fps = [
                (b - a) / (end["at"] - start["at"])
                for start, end in zip(first, last)
                for a, b in zip(start["frames"], end["frames"])
            ]
            return {
                "cpu": {r: 100 * (after[r] - before[r]) / window for r in pids},
                "fps_median": statistics.median(fps),
                "fps_min": min(fps),
            }
        finally:
            for group in groups:
                await group.stop()
            for publisher in published:
                await publisher.stop()
            server.stop()


async def run(args) -> dict:
    gather_on(("127.0.0.1",))  # the publishers in this process stay on loopback
    frames = load_loop()
    rounds = {1: [], 2: []}
    for round_ in range(args.rounds):
        for workers in (1, 2) if round_ % 2 == 0 else (2, 1):
            result = await one_round(workers, args, frames)
            rounds[workers].append(result)
            cpu = ", ".join(f"{r} {c:.0f}%" for r, c in result["cpu"].items())
            print(
                f"round {round_ + 1}, --workers {workers}: {cpu}; viewers' fps "
                f"median {result['fps_median']:.1f}, min {result['fps_min']:.1f}",
                flush=True,
            )
    return rounds


def summarise(rounds: dict) -> None:
    print(f"\nmedians over the rounds, {machine.describe()['nproc']} cores:")
    for workers, results in rounds.items():
        roles = results[0]["cpu"]
        cpu = {r: statistics.median(x["cpu"][r] for x in results) for r in roles}
        total = sum(cpu.values())
        fps = statistics.median(x["fps_median"] for x in results)
        shown = ", ".join(f"{r} {c:.0f}%" for r, c in cpu.items())
        print(
            f"--workers {workers}: {shown} (all {total:.0f}%); viewers' fps {fps:.1f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=50, help="on each stage")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hard-limit", type=float, default=600)
    args = parser.parse_args()

    async def bounded() -> dict:
        return await asyncio.wait_for(run(args), args.hard_limit)

    rounds = asyncio.run(bounded())
    summarise(rounds)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    name = time.strftime("workers-%Y%m%dT%H%M%S.json", time.gmtime())
    (results / name).write_text(json.dumps({"args": vars(args), "rounds": rounds}))
    print(f"written to bench/results/{name}")


if __name__ == "__main__":
    main()
