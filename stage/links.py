"""Links between workers, so that Next can land on a stage another worker carries.

`LinkServer` runs on every worker: another worker asks it for one of its stages and
gets that stage's frames (stage/relay/link.py). `Mirrors` is the asking side: a mirror
hub per stage of another worker that this worker's viewers watch, opened when the
first of them lands on it and closed when the last leaves. A mirror records nothing;
the stage's own worker records the performance.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable

from .directory import Listing
from .relay.hub import StageHub
from .relay.link import KEYFRAME, LinkedPublisher, LinkSender, describe

logger = logging.getLogger(__name__)

# How often a link looks whether its stage ended or changed performer.
LINK_CHECK_INTERVAL = 0.25
# A worker that does not answer a link this fast is taken to be down.
LINK_TIMEOUT = 3.0


def link_path(run_dir: str, worker: int) -> str:
    return f"{run_dir}/link-{worker}.sock"


class LinkServer:
    """This worker's stages, for the other workers' mirrors."""

    def __init__(self, venue, path: str) -> None:
        self.venue = venue
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._links: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._on_link, path=self.path)

    async def _on_link(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._links.add(asyncio.current_task())
        try:
            asked = await asyncio.wait_for(reader.readline(), LINK_TIMEOUT)
            stage_id = json.loads(asked)["stage"]
            hub = self.venue.hubs.get(stage_id)
            if hub is None or hub.ended:
                logger.info("stage %s: asked for by a link but not live", stage_id)
                return
            await self._feed(hub, reader, writer)
        except (TimeoutError, ValueError, KeyError, ConnectionError):
            logger.warning("link: a request could not be read", exc_info=True)
        except asyncio.CancelledError:
            pass  # the worker is stopping
        finally:
            self._links.discard(asyncio.current_task())
            writer.close()

    async def _feed(self, hub: StageHub, reader, writer) -> None:
        venue = self.venue
        sender = LinkSender(writer, hub.want_keyframe)
        described = describe(hub, venue.performance_id(hub))
        writer.write(json.dumps(described).encode() + b"\n")
        # The current picture first, so that the other worker's viewers see it at once.
        for frame in hub.current_picture():
            sender.push(frame)
        for kind in ("audio", "video"):
            hub.subscribe(kind, sender)
        keyframes = asyncio.ensure_future(self._keyframes(reader, hub))
        logger.info("stage %s: linked to another worker", hub.stage_id)
        try:
            while venue.hubs.get(hub.stage_id) is hub and not keyframes.done():
                now = describe(hub, venue.performance_id(hub))
                if now != described:
                    sender.send_description(now)
                    described = now
                await asyncio.sleep(LINK_CHECK_INTERVAL)
        finally:
            for kind in ("audio", "video"):
                hub.unsubscribe(kind, sender)
            keyframes.cancel()
            logger.info(
                "stage %s: link closed (%d frames dropped)",
                hub.stage_id,
                sender.dropped,
            )

    async def _keyframes(self, reader: asyncio.StreamReader, hub: StageHub) -> None:
        """Keyframe requests from the other worker, until it closes the link."""
        while asked := await reader.read(64):
            if KEYFRAME in asked:
                hub.want_keyframe()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        await asyncio.gather(*self._links, return_exceptions=True)


class Mirrors:
    """Stages of other workers that this worker's viewers watch, by stage id."""

    def __init__(
        self,
        run_dir: str,
        ended: Callable[[StageHub], None],
        new_performance: Callable[[StageHub], None],
    ) -> None:
        """`ended` is called when a mirrored stage ended on its worker (or the link
        broke); `new_performance` when its performer came back on a new connection."""
        self.run_dir = run_dir
        self.hubs: dict[str, StageHub] = {}
        self._ended = ended
        self._new_performance = new_performance
        self._opening: dict[str, asyncio.Future] = {}
        self._readers: set[asyncio.Task] = set()

    def mirrors(self, hub: StageHub) -> bool:
        return self.hubs.get(hub.stage_id) is hub

    async def open(self, listing: Listing) -> StageHub | None:
        """The mirror of a stage on another worker; None if it is not live there."""
        hub = self.hubs.get(listing.stage_id)
        if hub is not None and not hub.ended:
            return hub
        opening = self._opening.get(listing.stage_id)
        if opening is None:
            opening = asyncio.ensure_future(self._link(listing))
            self._opening[listing.stage_id] = opening
            opening.add_done_callback(lambda _: self._opening.pop(listing.stage_id))
        return await asyncio.shield(opening)

    async def _link(self, listing: Listing) -> StageHub | None:
        path = link_path(self.run_dir, listing.worker)
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path), LINK_TIMEOUT
            )
            writer.write(json.dumps({"stage": listing.stage_id}).encode() + b"\n")
            described = await asyncio.wait_for(reader.readline(), LINK_TIMEOUT)
        except (TimeoutError, OSError):
            logger.warning("stage %s: worker %d did not link", *_who(listing))
            return None
        if not described:
            writer.close()
            return None
        publisher = LinkedPublisher(json.loads(described), writer)
        hub = StageHub(listing.stage_id, listing.name, publisher)
        self.hubs[listing.stage_id] = hub
        reading = asyncio.ensure_future(
            publisher.read(reader, lambda: self._new_performance(hub))
        )
        self._readers.add(reading)
        reading.add_done_callback(lambda task: self._link_closed(task, hub))
        logger.info("stage %s: mirrored from worker %d", *_who(listing))
        return hub

    def _link_closed(self, task: asyncio.Task, hub: StageHub) -> None:
        self._readers.discard(task)
        if self.hubs.get(hub.stage_id) is not hub:
            return
        del self.hubs[hub.stage_id]
        hub.end()
        logger.info("stage %s: mirror ended", hub.stage_id)
        self._ended(hub)

    def release(self, hub: StageHub) -> None:
        """Close a mirror nobody here watches any more."""
        if self.hubs.get(hub.stage_id) is not hub or hub.viewers:
            return
        del self.hubs[hub.stage_id]
        hub.end()
        asyncio.ensure_future(hub.publisher.close())
        logger.info("stage %s: mirror closed, nobody here watches it", hub.stage_id)

    async def close(self) -> None:
        for hub in list(self.hubs.values()):
            await hub.publisher.close()
        for task in list(self._readers):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._readers, return_exceptions=True)


def _who(listing: Listing) -> tuple[str, int]:
    return listing.stage_id, listing.worker
