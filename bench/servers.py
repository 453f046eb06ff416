"""The processes a relay benchmark runs: the servers under test and the viewer processes.

Every process is started with a parent-death signal (`netns.die_with_parent`), so
that nothing outlives the benchmark that started it, and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from . import machine, netns
from .janus import JanusProcess
from .latency import SendLog
from .publisher import publish_janus, publish_whip

ROOT = Path(__file__).resolve().parent.parent


class PythonServer:
    """Stage or the MediaRelay reference: a Python process speaking WHIP and WHEP.

    With `probe` set the command is `bench.probe`'s (Stage with its probe inside), and
    `probe_start`/`probe_result` open and close its windows through signals.
    """

    def __init__(
        self, name: str, command: list[str], probe: Path | None = None
    ) -> None:
        self.name = name
        self.port = machine.free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.probe = probe
        env = dict(os.environ)
        if probe is not None:
            env["STAGE_PROBE_FILE"] = str(probe)
        self.process = subprocess.Popen(
            [sys.executable, *command, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            preexec_fn=netns.die_with_parent,
        )
        self.stage: dict | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pids(self) -> list[int]:
        """The server's process and its children: with `--workers`, the front and
        each worker."""
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [pid, *map(int, children)]

    async def ready(self) -> None:
        for _ in range(300):
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.post(
                        f"{self.base}/api/stages", json={"name": "Bench"}
                    ) as r:
                        self.stage = await r.json()
                return
            except aiohttp.ClientConnectionError:
                if self.process.poll() is not None:
                    break
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    async def publish(self, frames, log: SendLog):
        return await publish_whip(self.base, self.stage, frames, log)

    def viewer_args(self) -> list[str]:
        return ["--whep", self.base]

    def probe_start(self) -> None:
        if self.probe is not None:
            self.probe.unlink(missing_ok=True)
            self.process.send_signal(signal.SIGUSR1)

    async def probe_result(self) -> dict | None:
        """What the probe noted since `probe_start` (None without a probe)."""
        if self.probe is None:
            return None
        self.process.send_signal(signal.SIGUSR2)
        for _ in range(100):
            if self.probe.exists():
                result = json.loads(self.probe.read_text())
                self.probe.unlink()
                return result
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: the probe wrote nothing")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class JanusServer:
    name = "janus"

    def __init__(self, event_loops: int) -> None:
        self.janus = JanusProcess(machine.free_port(), event_loops)
        self.feed: int | None = None

    @property
    def pid(self) -> int:
        return self.janus.pid

    @property
    def pids(self) -> list[int]:
        return [self.janus.pid]

    async def ready(self) -> None:
        await self.janus.ready()

    async def publish(self, frames, log: SendLog):
        published, self.feed = await publish_janus(self.janus.url, frames, log)
        return published

    def viewer_args(self) -> list[str]:
        return ["--janus", self.janus.url, "--feed", str(self.feed)]

    def probe_start(self) -> None:
        pass

    async def probe_result(self) -> None:
        return None

    def stop(self) -> None:
        self.janus.stop()


class ViewerProcess:
    """Some of the viewers, in a process of their own (bench/viewers.py)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, arguments: list[str], count: int):
        """Start `count` viewers (`python -m bench.viewers ARGUMENTS COUNT`)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.viewers",
            *arguments,
            str(count),
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=netns.die_with_parent,
            limit=2**24,
        )
        viewers = cls(process)
        try:
            line = await asyncio.wait_for(process.stdout.readline(), 60 + 3 * count)
        except TimeoutError:
            line = b"(timed out)"
        if line.strip() != b"ready":
            await viewers.stop()
            raise RuntimeError(f"viewers did not start: {line!r}")
        return viewers

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ask(self, command: str):
        self.process.stdin.write(command.encode() + b"\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        return json.loads(line) if line.startswith((b"{", b"[")) else line.strip()

    async def stop(self) -> None:
        try:
            self.process.stdin.write(b"stop\n")
            await self.process.stdin.drain()
            await asyncio.wait_for(self.process.wait(), 30)
        except (TimeoutError, ConnectionError):
            if self.process.returncode is None:
                try:
                    self.process.kill()
                except ProcessLookupError:
                    pass  # it ended meanwhile
            await self.process.wait()


def split(viewers: int, per_process: int) -> list[int]:
    sizes = [per_process] * (viewers // per_process)
    if viewers % per_process:
        sizes.append(viewers % per_process)
    return sizes
