"""Making clips off the event loop, a bounded number at a time, with progress to show.

Cutting and encoding are CPU work for seconds or minutes; on the event loop they would
freeze the relay for every stage. Each clip runs on a small thread pool (one worker by
default: on a two-core machine the other core belongs to the relay), clips beyond that
wait their turn as "queued". The store is only touched from the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .recorder import clips
from .store import ClipRecord, Store

logger = logging.getLogger(__name__)

# Shares of the work, for one progress figure: the MP4 encode is nearly all of it.
AS_RECORDED_SHARE = 0.1
MP4_SHARE = 0.85


def clip_paths(data: Path, clip: ClipRecord, recording: str) -> dict[str, Path]:
    folder = data / clip.stage_id / "clips"
    # WebM holds VP8; an H.264 recording is Matroska and so is its clip.
    extension = ".mkv" if recording.endswith(".mkv") else ".webm"
    return {
        "recorded": folder / f"{clip.id}{extension}",
        "mp4": folder / f"{clip.id}.mp4",
        "poster": folder / f"{clip.id}.jpg",
    }


class ClipExports:
    def __init__(self, store: Store, data: Path, workers: int = 1) -> None:
        self.store = store
        self.data = data
        self.progress: dict[str, float] = {}  # clip id → 0..1, while queued or running
        self._sources: dict[str, str] = {}  # clip id → performance id it reads
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="clip")
        self._turns = asyncio.Semaphore(workers)
        self._tasks: set[asyncio.Task] = set()

    def submit(self, clip: ClipRecord, recording: Path) -> None:
        self.progress[clip.id] = 0.0
        self._sources[clip.id] = clip.performance_id
        task = asyncio.ensure_future(self._make(clip, recording))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def reading(self, performance_id: str) -> bool:
        """Whether a clip is being made from this performance's recording."""
        return performance_id in self._sources.values()

    def busy(self, clip_id: str) -> bool:
        return clip_id in self.progress

    async def _make(self, clip: ClipRecord, recording: Path) -> None:
        paths = clip_paths(self.data, clip, recording.name)
        try:
            async with self._turns:
                self.store.set_clip(clip.id, state="exporting")
                began = time.monotonic()
                loop = asyncio.get_running_loop()
                made = await loop.run_in_executor(
                    self._pool, self._work, clip, recording, paths
                )
                size = sum(p.stat().st_size for p in paths.values())
                self.store.set_clip(
                    clip.id,
                    state="ready",
                    recorded_path=self._relative(paths["recorded"]),
                    mp4_path=self._relative(paths["mp4"]),
                    poster_path=self._relative(paths["poster"]),
                    bytes=size,
                    duration=round(made.duration, 3),
                )
                logger.info(
                    "clip %s: made %.1f s from %.1f s in %.1f s, %d bytes",
                    clip.id,
                    made.duration,
                    clip.start,
                    time.monotonic() - began,
                    size,
                )
        except asyncio.CancelledError:
            self._discard(paths)
            raise
        except Exception:
            logger.exception("clip %s: could not be made", clip.id)
            self._discard(paths)
            self.store.set_clip(
                clip.id, state="failed", error="This clip could not be made."
            )
        finally:
            self.progress.pop(clip.id, None)
            self._sources.pop(clip.id, None)

    def _work(self, clip: ClipRecord, recording: Path, paths: dict[str, Path]):
        """On a pool thread: both outputs and the poster."""
        paths["recorded"].parent.mkdir(parents=True, exist_ok=True)

        def share(base: float, weight: float):
            return lambda done: self.progress.__setitem__(clip.id, base + weight * done)

        clips.cut_as_recorded(
            recording,
            paths["recorded"],
            clip.start,
            clip.end,
            share(0.0, AS_RECORDED_SHARE),
        )
        made = clips.export_mp4(
            recording,
            paths["mp4"],
            clip.start,
            clip.end,
            share(AS_RECORDED_SHARE, MP4_SHARE),
        )
        clips.poster(paths["recorded"], paths["poster"], 0.0)
        self.progress[clip.id] = 1.0
        return made

    def _discard(self, paths: dict[str, Path]) -> None:
        for path in paths.values():
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                logger.warning("clip file %s: could not remove (%s)", path.name, exc)

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.data))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # A cut in progress finishes its current file; nothing waits for it.
        self._pool.shutdown(wait=False, cancel_futures=True)
