"""The directory: which stages are live, and where, when Stage runs as several workers.

A venue knows its own stages. With `--workers N` (stage/front.py) each worker process
also needs the stages of the others, to list them (`GET /api/stages`) and to describe
them (`GET /api/stages/<id>` and its events, which may be answered by any worker). The
front gathers what every worker reports and tells every worker the whole of it.

`Directory` is the single-process one: there is nothing elsewhere. `SharedDirectory`
is a worker's: it reports its venue's stages to the front over a Unix socket (JSON
lines) when they change, at most REPORT_INTERVAL apart, and keeps the front's merged
view. Another shared store (Redis, say) would be one more class with these methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from .bulletin import ANY, Bulletin

logger = logging.getLogger(__name__)

# A worker's report goes to the front as soon as its venue announces a change, and
# otherwise is looked at this often (a change no page hears of: a publish connecting).
REPORT_INTERVAL = 0.25
# However busy its stages (a hundred viewers arriving), reports are this far apart.
REPORT_GAP = 0.05


@dataclass(frozen=True)
class Listing:
    """One live (or held) stage as the other workers see it."""

    stage_id: str
    name: str
    worker: int
    live: bool  # false while it is held for its performer to reconnect
    # Its worker's own viewers in a report; every viewer, on any worker, once merged.
    watching: int
    publisher: str | None = None
    performance: str | None = None
    recording: dict | None = None
    video_codec: str | None = None
    h264_profile_level_id: str | None = None
    # Once merged: its viewers on other workers, watching a mirror (stage/links.py).
    mirrored: int = 0

    @property
    def reconnecting(self) -> bool:
        return not self.live

    @classmethod
    def from_json(cls, fields: dict) -> Listing:
        return cls(**fields)


@dataclass(frozen=True)
class Report:
    """What one worker tells the front: its stages and how loaded it is."""

    worker: int
    stages: list[Listing]
    connecting: list[str]  # stages whose publish is still connecting
    viewers: int
    # Viewers here on stages of other workers, by stage id (stage/links.py).
    mirrored: dict[str, int] = field(default_factory=dict)
    # Viewers it has taken in since it started: the front compares this with the
    # viewers it passed on, to count those a report has not caught up with yet.
    joined: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "worker": self.worker,
                "stages": [asdict(s) for s in self.stages],
                "connecting": self.connecting,
                "viewers": self.viewers,
                "mirrored": self.mirrored,
                "joined": self.joined,
            }
        )

    @classmethod
    def from_json(cls, line: bytes) -> Report:
        fields = json.loads(line)
        return cls(
            worker=int(fields["worker"]),
            stages=[Listing.from_json(s) for s in fields["stages"]],
            connecting=list(fields["connecting"]),
            viewers=int(fields["viewers"]),
            mirrored=dict(fields.get("mirrored", {})),
            joined=int(fields.get("joined", 0)),
        )


def merge(reports: list[Report]) -> list[Listing]:
    """Every worker's stages, each counting its viewers on every worker."""
    mirrored = Counter()
    for report in reports:
        mirrored.update(report.mirrored)
    return [
        replace(
            listing,
            watching=listing.watching + mirrored[listing.stage_id],
            mirrored=mirrored[listing.stage_id],
        )
        for report in reports
        for listing in report.stages
    ]


class Directory:
    """One process: every stage is the venue's own, nothing is elsewhere."""

    def elsewhere(self) -> dict[str, Listing]:
        """Stages live (or held) on other workers, by id."""
        return {}

    def mirrored(self, stage_id: str) -> int:
        """Viewers of one of this worker's stages who watch it from other workers."""
        return 0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class SharedDirectory(Directory):
    def __init__(
        self,
        worker: int,
        control: str,
        local: Callable[[], Report],
        bulletin: Bulletin,
        changed: Callable[[str], None],
        lost: Callable[[], None],
    ) -> None:
        """`local` reads this worker's report, again whenever the venue's `bulletin`
        announces a change; `changed` is called with the id of a stage elsewhere
        whose listing changed (or that ended); `lost` when the front went away."""
        self.worker = worker
        self.control = control
        self._local = local
        self._bulletin = bulletin
        self._changed = changed
        self._lost = lost
        self._others: dict[str, Listing] = {}
        self._mine: dict[str, Listing] = {}
        self._tasks: list[asyncio.Task] = []

    def elsewhere(self) -> dict[str, Listing]:
        return self._others

    def mirrored(self, stage_id: str) -> int:
        listing = self._mine.get(stage_id)
        return listing.mirrored if listing else 0

    async def start(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.control)
        self._tasks = [
            asyncio.ensure_future(self._report(writer)),
            asyncio.ensure_future(self._listen(reader)),
        ]

    async def _report(self, writer: asyncio.StreamWriter) -> None:
        # Reported at once, so that the front does not place a new stage by where a
        # show that just ended was.
        last = None
        try:
            with self._bulletin.listen(ANY) as changed:
                while True:
                    changed.clear()
                    line = self._local().to_json()
                    if line != last:
                        writer.write(line.encode() + b"\n")
                        await writer.drain()
                        last = line
                    await asyncio.sleep(REPORT_GAP)
                    with contextlib.suppress(TimeoutError):
                        # Not wait_for: in 3.11 it can swallow a cancellation that
                        # comes as the event is set, and close() would wait forever.
                        async with asyncio.timeout(REPORT_INTERVAL):
                            await changed.wait()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                merged = [Listing.from_json(s) for s in json.loads(line)]
                self._mine = {s.stage_id: s for s in merged if s.worker == self.worker}
                self._take(
                    {s.stage_id: s for s in merged if s.worker != self.worker}
                )
        except asyncio.CancelledError:
            return
        except (ConnectionError, ValueError):
            logger.exception("worker %d: the front's directory broke", self.worker)
        logger.warning("worker %d: the front is gone", self.worker)
        self._lost()

    def _take(self, others: dict[str, Listing]) -> None:
        old, self._others = self._others, others
        for stage_id in old.keys() | others.keys():
            if old.get(stage_id) != others.get(stage_id):
                self._changed(stage_id)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
