"""SQLite store: stages, performances, watches.

The watch rows are written and read by `audience.py`, which derives every count from
them. Every call is short and runs on the event loop; none of them sits on the media
path.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS secrets (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stages (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS performances (
    id TEXT PRIMARY KEY,
    stage_id TEXT NOT NULL REFERENCES stages(id),
    started_at REAL NOT NULL,
    ended_at REAL,
    peak_viewers INTEGER NOT NULL DEFAULT 0,
    recording_path TEXT,
    recording_state TEXT NOT NULL DEFAULT 'recording',
    recording_bytes INTEGER NOT NULL DEFAULT 0,
    recording_error TEXT
);
CREATE INDEX IF NOT EXISTS performances_by_stage ON performances(stage_id, started_at);
CREATE TABLE IF NOT EXISTS watches (
    id INTEGER PRIMARY KEY,
    performance_id TEXT NOT NULL REFERENCES performances(id),
    viewer TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS watches_by_performance ON watches(performance_id, viewer);
"""

CLIPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    id TEXT PRIMARY KEY,
    performance_id TEXT NOT NULL REFERENCES performances(id),
    stage_id TEXT NOT NULL REFERENCES stages(id),
    start REAL NOT NULL,
    end REAL NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    error TEXT,
    recorded_path TEXT,
    mp4_path TEXT,
    poster_path TEXT,
    bytes INTEGER NOT NULL DEFAULT 0,
    duration REAL,
    plays INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS clips_by_stage ON clips(stage_id, created_at);
"""


@dataclass(frozen=True)
class StageRecord:
    id: str
    name: str
    key_hash: str


@dataclass(frozen=True)
class PerformanceRecord:
    id: str
    stage_id: str
    started_at: float
    ended_at: float | None
    peak_viewers: int
    recording_path: str | None
    recording_state: str
    recording_bytes: int
    recording_error: str | None


@dataclass(frozen=True)
class ClipRecord:
    id: str
    performance_id: str
    stage_id: str
    start: float
    end: float
    created_at: float
    state: str  # queued | exporting | ready | failed
    error: str | None
    recorded_path: str | None  # relative to the data folder, like recordings
    mp4_path: str | None
    poster_path: str | None
    bytes: int
    duration: float | None
    plays: int


def hash_key(key: str) -> str:
    # Keys are 32 random bytes, so a plain digest is enough: nothing to brute-force.
    return hashlib.sha256(key.encode()).hexdigest()


class Store:
    def __init__(self, path: Path, view_seconds: float) -> None:
        self.view_seconds = view_seconds
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.executescript(CLIPS_SCHEMA)
        self.secret = self._session_secret()

    def close(self) -> None:
        self._db.close()

    def _session_secret(self) -> bytes:
        row = self._db.execute(
            "SELECT value FROM secrets WHERE name='session'"
        ).fetchone()
        if row is None:
            value = secrets.token_hex(32)
            self._db.execute("INSERT INTO secrets VALUES ('session', ?)", (value,))
            return bytes.fromhex(value)
        return bytes.fromhex(row["value"])

    # stages

    def create_stage(self, name: str) -> tuple[StageRecord, str]:
        key = secrets.token_urlsafe(32)
        stage = StageRecord(secrets.token_hex(6), name, hash_key(key))
        self._db.execute(
            "INSERT INTO stages (id, name, key_hash, created_at) VALUES (?, ?, ?, ?)",
            (stage.id, stage.name, stage.key_hash, time.time()),
        )
        return stage, key

    def stage(self, stage_id: str) -> StageRecord | None:
        row = self._db.execute(
            "SELECT id, name, key_hash FROM stages WHERE id=?", (stage_id,)
        ).fetchone()
        return StageRecord(**row) if row else None

    def rotate_key(self, stage: StageRecord) -> tuple[StageRecord, str]:
        """A new key for the stage; the old one, and every session, stop working."""
        key = secrets.token_urlsafe(32)
        rotated = StageRecord(stage.id, stage.name, hash_key(key))
        self._db.execute(
            "UPDATE stages SET key_hash=? WHERE id=?", (rotated.key_hash, stage.id)
        )
        return rotated, key

    def key_matches(self, stage: StageRecord, key: str | None) -> bool:
        if not key:
            return False
        return hmac.compare_digest(stage.key_hash, hash_key(key))

    def session_token(self, stage: StageRecord) -> str:
        # Bound to the key hash, so a new key ends every dashboard session.
        message = f"{stage.id}:{stage.key_hash}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()

    def session_matches(self, stage: StageRecord, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.session_token(stage), token)

    # performances

    def start_performance(self, stage_id: str, started_at: float) -> str:
        performance_id = secrets.token_hex(8)
        self._db.execute(
            "INSERT INTO performances (id, stage_id, started_at) VALUES (?, ?, ?)",
            (performance_id, stage_id, started_at),
        )
        return performance_id

    def end_performance(self, performance_id: str, ended_at: float) -> None:
        """End a performance at `ended_at`, never before it started."""
        self._db.execute(
            "UPDATE performances SET ended_at=MAX(?, started_at)"
            " WHERE id=? AND ended_at IS NULL",
            (ended_at, performance_id),
        )
        self._db.execute(
            "UPDATE watches SET ended_at=? WHERE performance_id=? AND ended_at IS NULL",
            (ended_at, performance_id),
        )

    def set_recording(
        self,
        performance_id: str,
        *,
        state: str,
        path: str | None = None,
        size: int | None = None,
        error: str | None = None,
    ) -> None:
        self._db.execute(
            "UPDATE performances SET recording_state=?,"
            " recording_path=COALESCE(?, recording_path),"
            " recording_bytes=COALESCE(?, recording_bytes),"
            " recording_error=COALESCE(?, recording_error) WHERE id=?",
            (state, path, size, error, performance_id),
        )

    def performance(self, performance_id: str) -> PerformanceRecord | None:
        row = self._db.execute(
            "SELECT * FROM performances WHERE id=?", (performance_id,)
        ).fetchone()
        return PerformanceRecord(**row) if row else None

    def performances(self, stage_id: str) -> list[PerformanceRecord]:
        rows = self._db.execute(
            "SELECT * FROM performances WHERE stage_id=? ORDER BY started_at DESC",
            (stage_id,),
        ).fetchall()
        return [PerformanceRecord(**row) for row in rows]

    def latest_performance(self, stage_id: str) -> PerformanceRecord | None:
        row = self._db.execute(
            "SELECT * FROM performances WHERE stage_id=?"
            " ORDER BY started_at DESC LIMIT 1",
            (stage_id,),
        ).fetchone()
        return PerformanceRecord(**row) if row else None

    def unfinished_performances(self) -> list[PerformanceRecord]:
        rows = self._db.execute(
            "SELECT * FROM performances WHERE ended_at IS NULL"
            " OR recording_state IN ('recording', 'finishing')"
        ).fetchall()
        return [PerformanceRecord(**row) for row in rows]

    def close_interrupted(self, at: float) -> None:
        """After a crash: end what was open, at the last moment we can vouch for."""
        self._db.execute("UPDATE watches SET ended_at=? WHERE ended_at IS NULL", (at,))
        self._db.execute(
            "UPDATE performances SET ended_at=started_at WHERE ended_at IS NULL"
        )

    # recordings the artist deletes

    def forget_recording(self, performance_id: str) -> None:
        self._db.execute(
            "UPDATE performances SET recording_state='deleted', recording_path=NULL,"
            " recording_bytes=0 WHERE id=?",
            (performance_id,),
        )

    # clips

    def create_clip(
        self, performance: PerformanceRecord, start: float, end: float
    ) -> ClipRecord:
        clip_id = secrets.token_hex(8)
        self._db.execute(
            "INSERT INTO clips (id, performance_id, stage_id, start, end, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (clip_id, performance.id, performance.stage_id, start, end, time.time()),
        )
        return self.clip(clip_id)

    def clip(self, clip_id: str) -> ClipRecord | None:
        row = self._db.execute("SELECT * FROM clips WHERE id=?", (clip_id,)).fetchone()
        return ClipRecord(**row) if row else None

    def clips(self, stage_id: str) -> list[ClipRecord]:
        rows = self._db.execute(
            "SELECT * FROM clips WHERE stage_id=? ORDER BY created_at DESC",
            (stage_id,),
        ).fetchall()
        return [ClipRecord(**row) for row in rows]

    def unfinished_clips(self) -> list[ClipRecord]:
        rows = self._db.execute(
            "SELECT * FROM clips WHERE state IN ('queued', 'exporting')"
            " ORDER BY created_at"
        ).fetchall()
        return [ClipRecord(**row) for row in rows]

    def set_clip(self, clip_id: str, **fields) -> None:
        allowed = {
            "state",
            "error",
            "recorded_path",
            "mp4_path",
            "poster_path",
            "bytes",
            "duration",
        }
        assert set(fields) <= allowed, fields
        columns = ", ".join(f"{name}=?" for name in fields)
        self._db.execute(
            f"UPDATE clips SET {columns} WHERE id=?", (*fields.values(), clip_id)
        )

    def count_play(self, clip_id: str) -> None:
        self._db.execute("UPDATE clips SET plays=plays+1 WHERE id=?", (clip_id,))

    def delete_clip(self, clip_id: str) -> None:
        self._db.execute("DELETE FROM clips WHERE id=?", (clip_id,))
