"""Recording cost per stage: CPU the recorder spends, as % of one core.

    .venv/bin/python -m bench.recording [--stages 2] [--seconds 30]

The server runs in this process, the publishers (real footage, 640x480 VP8 at 30 fps
and Opus, from tests/media.py) in a child process, all on 127.0.0.1. Recording cost is
counted where it is spent: the CPU time of each recording's muxing thread (read from
/proc for that thread), plus the time the event loop spends in `Recording.push`, plus
the remux that finishes the file when the show ends. The whole server process's CPU
over the same window is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from stage.config import Settings
from stage.recorder import recording as recording_module
from stage.recorder.recording import Recording
from stage.server import create_app
from tests.test_recovery import free_port

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")

PUBLISHERS = """
import asyncio, sys
from stage.relay.ice import gather_on
from tests.media import ensure_media, publisher_tracks
from tests.peers import Publisher

async def main():
    gather_on(("127.0.0.1",))
    media = ensure_media()
    base, pairs = sys.argv[1], sys.argv[2:]
    for stage_id, key in zip(pairs[::2], pairs[1::2]):
        await Publisher(base, stage_id, key).start(tracks=list(publisher_tracks(media)))
    print("live", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def thread_cpu(native_id: int) -> float:
    path = Path(f"/proc/self/task/{native_id}/stat")
    try:
        fields = path.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def process_cpu() -> float:
    times = os.times()
    return times.user + times.system


class Meter:
    """Time the event loop spends handing frames to recordings, and the final remux."""

    def __init__(self) -> None:
        self.push = 0.0
        self.finish = 0.0
        original_push, original_finish = Recording.push, recording_module.finish

        def push(recording, frame):
            began = time.thread_time()
            original_push(recording, frame)
            self.push += time.thread_time() - began

        def finish(path):
            began = time.thread_time()
            try:
                return original_finish(path)
            finally:
                self.finish += time.thread_time() - began

        Recording.push = push
        recording_module.finish = finish


def recorder_threads() -> dict[int, str]:
    return {
        t.native_id: t.name
        for t in threading.enumerate()
        if t.name.startswith("recorder-")
    }


async def main(stages: int, seconds: float) -> None:
    meter = Meter()
    with tempfile.TemporaryDirectory() as data:
        settings = Settings(
            data=Path(data), ice_addresses=("127.0.0.1",), port=free_port()
        )
        runner = web.AppRunner(create_app(settings), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        base = f"http://127.0.0.1:{settings.port}"
        pairs = []
        async with aiohttp.ClientSession() as http:
            for n in range(stages):
                async with http.post(f"{base}/api/stages", json={"name": f"B{n}"}) as r:
                    stage = await r.json()
                pairs += [stage["id"], stage["key"]]
        child = subprocess.Popen(
            [sys.executable, "-c", PUBLISHERS, base, *pairs],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = await asyncio.get_running_loop().run_in_executor(
                None, child.stdout.readline
            )
            assert line.strip() == "live", line
            await asyncio.sleep(3)  # recordings aligned and writing
            threads = recorder_threads()
            assert len(threads) == stages, threads
            began = {tid: thread_cpu(tid) for tid in threads}
            push_began, process_began, wall = (
                meter.push,
                process_cpu(),
                time.monotonic(),
            )
            await asyncio.sleep(seconds)
            wall = time.monotonic() - wall
            writers = sum(thread_cpu(tid) - began[tid] for tid in threads)
            pushes = meter.push - push_began
            process = process_cpu() - process_began
        finally:
            child.kill()
            child.wait()
        await asyncio.sleep(8)  # the silence timeout ends the stages; files finish
        await runner.cleanup()

    per_stage = (writers + pushes) / wall / stages * 100
    print(f"stages {stages}, window {wall:.1f} s")
    print(f"  muxing threads {writers:.2f} s CPU, Recording.push {pushes:.2f} s CPU")
    print(f"  recording per stage: {per_stage:.2f} % of a core while live")
    print(
        f"  final remux: {meter.finish:.2f} s CPU for all {stages} files"
        f" ({meter.finish / stages:.2f} s each, once per show)"
    )
    print(f"  whole server process: {process / wall * 100:.1f} % of a core")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.stages, args.seconds))
