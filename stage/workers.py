"""The worker processes behind the front: started, watched, restarted, stopped.

Each worker is `python -m stage.worker`: a whole Stage app with its own venue on its own
core, serving HTTP on a Unix socket only the front uses. Each reports its stages over
the control socket (stage/directory.py); the pool merges the reports and sends the
whole directory back to every worker whenever one changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path

import aiohttp

from .config import Settings, as_flags
from .directory import Listing, Report, merge

logger = logging.getLogger(__name__)

# A worker not serving this long after it was started is taken to have failed.
START_TIMEOUT = 60.0
# A stage whose publish the front has just had answered counts as the worker's this
# long at most, until the worker's report names it (connecting, then live).
PLACED_FOR = 40.0
# A worker that ended by itself is started again after this pause.
RESTART_PAUSE = 1.0
# A worker that keeps dying soon after it started (a full disk, a broken install) is
# started again after twice the pause each time, up to this; once it has run for
# STEADY_AFTER the pause is back to RESTART_PAUSE.
RESTART_PAUSE_MAX = 30.0
STEADY_AFTER = 60.0
# On stop, a worker has this long to close its shows and recordings before it is killed.
STOP_TIMEOUT = 30.0


def _finding_stage() -> dict:
    """The environment, with this copy of Stage first on the worker's import path."""
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _named(report: Report) -> set[str]:
    return {s.stage_id for s in report.stages} | set(report.connecting)


class Worker:
    def __init__(self, index: int, run_dir: Path) -> None:
        self.index = index
        self.socket = run_dir / f"worker-{index}.sock"
        self.process: asyncio.subprocess.Process | None = None
        self.http: aiohttp.ClientSession | None = None
        self.report: Report | None = None  # None until it serves, and once it is gone
        self.last_report: Report | None = None  # kept when it is gone
        self.control: asyncio.StreamWriter | None = None
        self.serving = asyncio.Event()
        # Stages the front has just given it, by when, until a report names them.
        self.placed: dict[str, float] = {}
        # Viewers the front is sending it, until it has answered them, and those it
        # took in (201) since it started.
        self.arriving = 0
        self.joined = 0

    @property
    def ready(self) -> bool:
        return self.report is not None

    @property
    def stages(self) -> list[Listing]:
        return self.report.stages if self.report else []

    def carries(self, stage_id: str) -> bool:
        """Whether the stage is live, held or connecting here, by the last report."""
        report = self.report
        return report is not None and stage_id in _named(report)

    def place(self, stage_id: str, now: float) -> None:
        """The front has just given the worker a stage that its reports may not name
        yet (a publish answered between two reports)."""
        for old in [s for s, at in self.placed.items() if now - at >= PLACED_FOR]:
            del self.placed[old]
        if not self.carries(stage_id):
            self.placed[stage_id] = now

    def has_placed(self, stage_id: str, now: float) -> bool:
        at = self.placed.get(stage_id)
        return at is not None and now - at < PLACED_FOR

    def busy(self, now: float) -> int:
        """Stages live or connecting here (what the stage cap counts), with those
        just given to it and not reported yet."""
        report = self.report
        reported = len(report.stages) + len(report.connecting) if report else 0
        return reported + sum(1 for at in self.placed.values() if now - at < PLACED_FOR)

    def took(self, report: Report) -> None:
        """A report came: from now on it says what the worker carries. A placed stage
        it names needs no stand-in any more, even once it ends (a show that ended
        must not weigh on where new stages go)."""
        self.report = self.last_report = report
        named = _named(report)
        for stage_id in [s for s in self.placed if s in named]:
            del self.placed[stage_id]

    @property
    def viewers(self) -> int:
        """Its viewers by the last report, with those it took in since and those
        being sent to it now: viewers arriving together (a link shared at once) are
        placed within a millisecond of each other, long before a report counts them."""
        if self.report is None:
            return self.arriving
        unreported = max(0, self.joined - self.report.joined)
        return self.report.viewers + unreported + self.arriving


class Workers:
    def __init__(
        self,
        settings: Settings,
        run_dir: Path,
        after_crash: Callable[[Report], Awaitable[None]],
    ) -> None:
        """`after_crash` is given the last report of a worker that died."""
        self.settings = settings
        self._after_crash = after_crash
        self.run_dir = run_dir
        self.control_path = run_dir / "control.sock"
        self.all = [Worker(i, run_dir) for i in range(settings.workers)]
        # Every worker's stages, each counting its viewers on every worker.
        self.merged: list[Listing] = []
        self._server: asyncio.AbstractServer | None = None
        self._watchers: list[asyncio.Task] = []
        self._stopping = False

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._on_worker, path=str(self.control_path)
        )
        for worker in self.all:
            self._watchers.append(asyncio.ensure_future(self._keep_running(worker)))
        try:
            await asyncio.wait_for(
                asyncio.gather(*(w.serving.wait() for w in self.all)), START_TIMEOUT
            )
        except TimeoutError:
            await self.stop()
            raise RuntimeError("the workers did not start in time") from None
        logger.info(
            "front: %d workers serving (pids %s)",
            len(self.all),
            ", ".join(str(w.process.pid) for w in self.all),
        )

    # each worker's life

    async def _spawn(self, worker: Worker) -> None:
        worker.socket.unlink(missing_ok=True)
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "stage.worker",
            str(worker.index),
            str(len(self.all)),
            str(self.control_path),
            str(worker.socket),
            *as_flags(self.settings),
            env=_finding_stage(),
        )
        logger.info("worker %d: started, pid %d", worker.index, worker.process.pid)
        worker.http = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(str(worker.socket), limit=0),
            auto_decompress=False,
            # Cookies belong to each client (a dashboard session, a visitor id): the
            # front passes them through both ways and must keep none of its own.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def _keep_running(self, worker: Worker) -> None:
        """Start the worker, and start it again whenever it ends by itself."""
        pause = RESTART_PAUSE
        while not self._stopping:
            started = time.monotonic()
            await self._spawn(worker)
            code = await worker.process.wait()
            self._forget(worker)
            if time.monotonic() - started > STEADY_AFTER:
                pause = RESTART_PAUSE
            # Ctrl-C in a terminal reaches the workers as well as this process, which
            # may learn that it is stopping a moment after they ended.
            await asyncio.sleep(pause)
            pause = min(pause * 2, RESTART_PAUSE_MAX)
            if self._stopping:
                break
            logger.error(
                "worker %d: pid %d ended by itself (exit code %s): its stages and "
                "viewers are gone; starting it again",
                worker.index,
                worker.process.pid,
                code,
            )
            if worker.last_report is not None:
                try:
                    await self._after_crash(worker.last_report)
                except Exception:
                    logger.exception(
                        "worker %d: its shows could not be closed", worker.index
                    )
                worker.last_report = None

    def _forget(self, worker: Worker) -> None:
        worker.report = None
        worker.joined = 0
        worker.serving.clear()
        if worker.http is not None:
            asyncio.ensure_future(worker.http.close())
            worker.http = None
        self._share()

    # the control socket: reports in, the merged directory out

    async def _on_worker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        worker = None
        try:
            while line := await reader.readline():
                report = Report.from_json(line)
                worker = self.all[report.worker]
                worker.control = writer
                worker.took(report)
                worker.serving.set()
                self._share()
        except ConnectionError:
            pass  # a worker that stops closes its end at once
        except (ValueError, KeyError, IndexError):
            logger.exception("front: a worker's report could not be read")
        finally:
            if worker is not None and worker.control is writer:
                worker.control = None
                worker.report = None
                self._share()
            writer.close()

    def _share(self) -> None:
        self.merged = merge([w.report for w in self.all if w.report is not None])
        line = json.dumps([asdict(s) for s in self.merged]).encode() + b"\n"
        for worker in self.all:
            if worker.control is not None and not worker.control.is_closing():
                worker.control.write(line)

    # stopping

    async def stop(self) -> None:
        """End every worker this pool started (by its pid), each closing its shows."""
        self._stopping = True
        running = [
            w.process for w in self.all if w.process and w.process.returncode is None
        ]
        for process in running:
            logger.info("front: stopping worker pid %d", process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        for process in running:
            left = max(0.1, STOP_TIMEOUT - (time.monotonic() - started))
            try:
                await asyncio.wait_for(process.wait(), left)
            except TimeoutError:
                logger.error("front: worker pid %d did not stop: killed", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        for task in self._watchers:
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        for worker in self.all:
            if worker.http is not None:
                await worker.http.close()
                worker.http = None
        if self._server is not None:
            self._server.close()
