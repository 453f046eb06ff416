"""The audience: who watched which performance, from when to when — and every number
derived from that.

The watch rows are the one record of watching. Every count an artist sees (watching
now, peak, visits, views, nexted, watch time, the chart) is computed from them when it
is asked for, never kept as a counter that could drift.

Joining and leaving only touch memory: a watch gets its id and its times here, and the
rows reach SQLite in one transaction every FLUSH_INTERVAL, from a background task and
once more at shutdown. Readers call `flush()` first (the numbers methods do), so what
they read is the whole truth up to that moment. A killed server loses at most the last
interval of joins and leaves; the open watches it left are ended at the last moment a
flush of theirs vouched for (see `close_interrupted`).

A visit is not watching all the time it lasts: while its stage is held for a lost
performer (venue.py, RECONNECT_WINDOW) no media flows, and the viewer waits on a frozen
picture. The venue marks each such hold of a performance, from the last media received
to the media coming back or the performance ending, and every number leaves out the
part of a visit that falls in a hold, just as the performance's length ends at its last
media.

Ids are handed out here, from the largest stored. With several worker processes
(stage/front.py) each writes its own rows, and each takes its own lane of ids: worker
i of n hands out only ids equal to i modulo n, so two never pick the same one. Each
lane also vouches for its own last flush, in its own row of `audience_marks`: when one
worker dies while the others go on, its visits end when it last wrote, not when a
surviving worker did.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5

# Why a watch ended. Only a viewer's own leaving can make a nexted visit; a browser that
# never got connected counts as a visit but never as watch time or a view.
BY_VIEWER = "viewer"  # Next, closed or reloaded the page, lost its connection
BY_SHOW = "show"  # the performance ended, or its performer reconnected
BY_SERVER = "server"  # the server stopped, or was killed and restarted
UNCONNECTED = "unconnected"

SCHEMA = """
CREATE TABLE IF NOT EXISTS audience_marks (name TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS holds (
    performance_id TEXT NOT NULL REFERENCES performances(id),
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS holds_by_performance ON holds(performance_id);
"""

# Whether a watch counts toward watching now, the peak and the chart: its viewer's
# connection came up. (Rows written before the `connected` column existed know only
# whether they were given up on.)
COUNTED = "COALESCE(connected, ended_by IS NOT 'unconnected')"

# The moment the numbers are read at, in the expressions below: a query using them takes
# it as its first parameter, written ?1 so that it can be used many times; the query's
# own ? come after it (SQLite numbers a ? one past the largest number already seen, so
# ?1 must come first in the text, as in `_seen`).
NOW = "?1"

# Seconds of a watch that fell in a hold of its performance (an open watch or hold
# runs to now).
HELD = (
    "COALESCE((SELECT SUM(MAX(0.0,"
    f" MIN(COALESCE(watches.ended_at, {NOW}), COALESCE(holds.ended_at, {NOW}))"
    " - MAX(watches.started_at, holds.started_at)))"
    " FROM holds WHERE holds.performance_id = watches.performance_id), 0.0)"
)


def watched(held: bool) -> str:
    """Seconds a watch counts for: to its end, or to now while it is open, from the
    answer on, less its time in holds; zero for a browser given up on because it never
    got connected.

    Leaving out the holds looks them up for every watch, which costs more than all
    the rest of the expression; so it is done only when `held`: some of the
    performances read had a hold.
    """
    less = f" - {HELD}" if held else ""
    return (
        "CASE WHEN ended_by IS 'unconnected' THEN 0"
        f" ELSE MAX(0.0, MAX(COALESCE(ended_at, {NOW}), started_at) - started_at{less})"
        " END"
    )


def _seen(where: str, held: bool) -> str:
    """The start of a query on the watches `where` says, as `seen`: each with whether
    it is counted and its seconds watched."""
    return (
        "WITH seen AS (SELECT id, performance_id, viewer, started_at,"
        f" ended_at, ended_by, {COUNTED} AS counted, {watched(held)} AS seconds"
        f" FROM watches WHERE {where}) "
    )


def _mark_name(lane: tuple[int, int]) -> str:
    """The `audience_marks` row where a lane vouches for its last flush: 'flushed'
    for one process (the name every version used), 'flushed i/n' for worker i of n."""
    index, step = lane
    return "flushed" if step == 1 else f"flushed {index}/{step}"


def _lane_of(name: str) -> tuple[int, int] | None:
    """The lane whose mark `name` is; None for a row that is not a flush mark."""
    if name == "flushed":
        return (0, 1)
    prefix, _, lane = name.partition(" ")
    index, _, step = lane.partition("/")
    if prefix != "flushed" or not index.isdigit() or not step.isdigit():
        return None
    return int(index), int(step)


@dataclass(frozen=True)
class Numbers:
    """One performance's numbers; README.md says what each one means."""

    watching: int = 0
    peak: int = 0
    visits: int = 0
    visitors: int = 0
    views: int = 0
    nexted: int = 0
    watch_seconds: float = 0.0

    @property
    def average_watch_seconds(self) -> float:
        return self.watch_seconds / self.visitors if self.visitors else 0.0


@dataclass(frozen=True)
class Watch:
    id: int
    viewer: str
    started_at: float
    ended_at: float | None
    ended_by: str | None
    connected: bool
    seconds: float  # watched: to its end (or now), less its time in holds


class Audience:
    def __init__(
        self, path: Path, view_seconds: float, lane: tuple[int, int] = (0, 1)
    ) -> None:
        self.view_seconds = view_seconds
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(watches)")}
        if "ended_by" not in columns:
            self._db.execute("ALTER TABLE watches ADD COLUMN ended_by TEXT")
        if "connected" not in columns:
            self._db.execute("ALTER TABLE watches ADD COLUMN connected INTEGER")
        largest = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM watches")
        self._lane = lane
        index, self._id_step = lane
        first = largest.fetchone()[0] + 1
        self._next_id = first + (index - first) % self._id_step
        self._last_at = 0.0
        # Not yet written: new rows by id, ends of rows already written, and rows
        # already written whose viewer's connection has come up since.
        self._new: dict[int, list] = {}
        self._ends: dict[int, tuple[float, str]] = {}
        self._connects: set[int] = set()
        self._open: dict[int, str] = {}  # watch id -> performance id
        self._connected: set[int] = set()  # open watches whose viewer is connected
        # Holds not yet written, in order: (performance id, started_at or None,
        # ended_at or None); and the performances held now.
        self._holds: list[tuple[str, float | None, float | None]] = []
        self._held: set[str] = set()
        self._task: asyncio.Task | None = None

    def now(self) -> float:
        """Wall-clock time that never goes back and never repeats.

        So the order of the stored times is the order of the joins and leaves, and the
        peak computed from the rows is exactly the most that were on at once.
        """
        self._last_at = max(time.time(), self._last_at + 1e-6)
        return self._last_at

    # the path joins and leaves take: memory only

    def open_watch(
        self, performance_id: str, viewer: str, *, connected: bool = True
    ) -> int:
        """A visit begins; it counts as watching once its viewer is `connected`."""
        watch_id = self._next_id
        self._next_id += self._id_step
        self._new[watch_id] = [
            watch_id,
            performance_id,
            viewer,
            self.now(),
            None,
            None,
            int(connected),
        ]
        self._open[watch_id] = performance_id
        if connected:
            self._connected.add(watch_id)
        return watch_id

    def connect(self, watch_id: int) -> None:
        """The open watch's viewer is connected: from now on it counts as watching."""
        if watch_id not in self._open or watch_id in self._connected:
            return
        self._connected.add(watch_id)
        row = self._new.get(watch_id)
        if row is not None:
            row[6] = 1
        else:
            self._connects.add(watch_id)

    def close_watch(self, watch_id: int, ended_by: str) -> None:
        if self._open.pop(watch_id, None) is None:
            return
        self._connected.discard(watch_id)
        at = self.now()
        row = self._new.get(watch_id)
        if row is not None:
            row[4], row[5] = at, ended_by
        else:
            self._ends[watch_id] = (at, ended_by)

    def hold(self, performance_id: str, since: float) -> None:
        """The performance's stage is held from `since` (its last media, wall clock):
        until `end_hold`, its viewers wait on a frozen picture, which is not watching."""
        if performance_id in self._held:
            return
        self._held.add(performance_id)
        self._holds.append((performance_id, since, None))

    def end_hold(self, performance_id: str, at: float | None = None) -> None:
        """The media came back (at `at`, wall clock), or the held performance ended."""
        if performance_id not in self._held:
            return
        self._held.discard(performance_id)
        self._holds.append((performance_id, None, self.now() if at is None else at))

    def watching(self, performance_id: str) -> int:
        """Open watches of a performance whose viewer is connected, from memory."""
        return sum(1 for w in self._connected if self._open[w] == performance_id)

    @property
    def pending(self) -> int:
        return len(self._new) + len(self._ends) + len(self._connects) + len(self._holds)

    # writing

    def flush(self) -> int:
        """Write what is pending in one transaction; returns how many changes."""
        if not self.pending:
            if self._open:
                # Nothing new, but watches are open: keep the moment we vouch for fresh.
                self._mark(self.now())
            return 0
        new, ends = list(self._new.values()), list(self._ends.items())
        connects = [(watch_id,) for watch_id in self._connects]
        holds = list(self._holds)
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO watches"
                " (id, performance_id, viewer, started_at, ended_at, ended_by,"
                " connected) VALUES (?, ?, ?, ?, ?, ?, ?)",
                new,
            )
            db.executemany("UPDATE watches SET connected=1 WHERE id=?", connects)
            db.executemany(
                "UPDATE watches SET ended_at=?, ended_by=?"
                " WHERE id=? AND ended_at IS NULL",
                [(at, by, watch_id) for watch_id, (at, by) in ends],
            )
            for performance_id, started_at, ended_at in holds:
                if started_at is not None:
                    db.execute(
                        "INSERT INTO holds (performance_id, started_at) VALUES (?, ?)",
                        (performance_id, started_at),
                    )
                else:
                    db.execute(
                        "UPDATE holds SET ended_at=MAX(?, started_at)"
                        " WHERE performance_id=? AND ended_at IS NULL",
                        (ended_at, performance_id),
                    )
            self._mark(self.now())
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._new.clear()
        self._ends.clear()
        self._connects.clear()
        self._holds.clear()
        return len(new) + len(ends) + len(connects) + len(holds)

    def _mark(self, at: float) -> None:
        self._db.execute(
            "INSERT INTO audience_marks (name, at) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET at=excluded.at",
            (_mark_name(self._lane), at),
        )

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                self.flush()
            except sqlite3.Error:
                # Kept in memory and tried again next time; the show goes on.
                logger.exception("audience: %d watch changes not written", self.pending)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self.flush()
        self._db.close()

    def close_interrupted(self, lane_only: bool = False) -> int:
        """After a crash: end the watches left open at the last moment their lane
        vouched for (with `lane_only`, only this lane's: one worker of several died).

        After a whole crash, each lane's mark ends that lane's watches. A mark left by
        an earlier run with another number of workers can match ids of the last run
        too; its watches were all ended before the last run began, so the marks are
        taken newest first and each watch ends at the newest that covers it, its own.

        A hold left open stays open: its stage was held when the server went, and its
        show never came back.
        """
        if lane_only:
            row = self._db.execute(
                "SELECT at FROM audience_marks WHERE name=?", (_mark_name(self._lane),)
            ).fetchone()
            marks = [(self._lane, row["at"] if row else None)]
        else:
            rows = self._db.execute(
                "SELECT name, at FROM audience_marks ORDER BY at DESC"
            ).fetchall()
            lanes = [(_lane_of(row["name"]), row["at"]) for row in rows]
            marks = [(lane, at) for lane, at in lanes if lane is not None]
            marks.append(((0, 1), None))  # no mark at all: the watch is ended empty
        ended = 0
        for (index, step), at in marks:
            cursor = self._db.execute(
                "UPDATE watches SET ended_at=MAX(started_at, COALESCE(?, started_at)),"
                " ended_by=? WHERE ended_at IS NULL AND id % ? = ?",
                (at, BY_SERVER, step, index),
            )
            ended += cursor.rowcount
        if ended:
            logger.info("audience: %d watches ended by a restart", ended)
        return ended

    # reading: flushed first, so every number is the whole truth so far

    def numbers(self, performance_ids: list[str]) -> dict[str, Numbers]:
        if not performance_ids:
            return {}
        self.flush()
        marks = ",".join("?" * len(performance_ids))
        ids = tuple(performance_ids)
        now = time.time()
        where = f"performance_id IN ({marks})"
        held = self._any_holds(where, ids)
        totals = {
            row["performance_id"]: row
            for row in self._db.execute(
                _seen(where, held) + "SELECT performance_id, COUNT(*) AS visits,"
                " COUNT(DISTINCT viewer) AS visitors,"
                " SUM(ended_at IS NULL AND counted) AS watching,"
                " SUM(seconds) AS watch_seconds,"
                " SUM(ended_by IS 'viewer' AND seconds < ?) AS nexted"
                " FROM seen GROUP BY performance_id",
                (now, *ids, self.view_seconds),
            )
        }
        views = self._views(where, ids, now, held)
        peaks = {
            row["performance_id"]: row["peak"]
            for row in self._db.execute(
                "SELECT performance_id, MAX(level) AS peak FROM ("
                "  SELECT performance_id, SUM(step) OVER ("
                "   PARTITION BY performance_id ORDER BY at, step"
                "   ROWS UNBOUNDED PRECEDING) AS level FROM ("
                "    SELECT performance_id, started_at AS at, 1 AS step FROM watches"
                f"    WHERE performance_id IN ({marks}) AND {COUNTED}"
                "    UNION ALL"
                "    SELECT performance_id, ended_at, -1 FROM watches"
                f"    WHERE performance_id IN ({marks}) AND ended_at IS NOT NULL"
                f"    AND {COUNTED}"
                "  )"
                ") GROUP BY performance_id",
                (*ids, *ids),
            )
        }
        result = {}
        for performance_id in performance_ids:
            row = totals.get(performance_id)
            if row is None:
                result[performance_id] = Numbers()
                continue
            result[performance_id] = Numbers(
                watching=row["watching"],
                peak=peaks.get(performance_id, 0),
                visits=row["visits"],
                visitors=row["visitors"],
                views=views.get(performance_id, 0),
                nexted=row["nexted"],
                watch_seconds=row["watch_seconds"] or 0.0,
            )
        return result

    def stage_views(self, stage_id: str) -> int:
        """All-time views of a stage: the sum over its performances."""
        self.flush()
        where = "performance_id IN (SELECT id FROM performances WHERE stage_id=?)"
        args = (stage_id,)
        views = self._views(where, args, time.time(), self._any_holds(where, args))
        return sum(views.values())

    def _any_holds(self, where: str, args: tuple) -> bool:
        """Whether any performance `where` says had a hold (see `watched`)."""
        row = self._db.execute(
            f"SELECT EXISTS (SELECT 1 FROM holds WHERE {where})", args
        ).fetchone()
        return bool(row[0])

    def _views(self, where: str, args: tuple, now: float, held: bool) -> dict[str, int]:
        """Distinct viewers per performance who watched at least `view_seconds` in all."""
        rows = self._db.execute(
            _seen(where, held) + "SELECT performance_id, COUNT(*) AS views FROM ("
            "  SELECT performance_id, SUM(seconds) AS watched"
            "  FROM seen GROUP BY performance_id, viewer"
            ") WHERE watched >= ? GROUP BY performance_id",
            (now, *args, self.view_seconds),
        ).fetchall()
        return {row["performance_id"]: row["views"] for row in rows}

    def watches(self, performance_id: str) -> list[Watch]:
        self.flush()
        where, args = "performance_id=?", (performance_id,)
        rows = self._db.execute(
            _seen(where, self._any_holds(where, args))
            + "SELECT id, viewer, started_at, ended_at, ended_by,"
            " counted AS connected, seconds FROM seen ORDER BY started_at, id",
            (time.time(), *args),
        ).fetchall()
        return [Watch(**{**row, "connected": bool(row["connected"])}) for row in rows]

    def timeline(self, performance_id: str) -> list[tuple[float, int]]:
        """Watching-now over a performance: (moment, count from then on), in order.

        Only visits whose viewer's connection came up are counted.
        """
        steps = []
        for watch in self.watches(performance_id):
            if not watch.connected:
                continue
            steps.append((watch.started_at, 1))
            if watch.ended_at is not None:
                steps.append((watch.ended_at, -1))
        steps.sort()  # at the same moment, a leave (-1) before a join (+1)
        level, points = 0, []
        for at, step in steps:
            level += step
            if points and points[-1][0] == at:
                points[-1] = (at, level)
            else:
                points.append((at, level))
        return points
