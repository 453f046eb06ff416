"""The venue: stages going live and ending, viewers arriving, moving on and leaving.

It ties the relay (publishers, hubs, viewers), the recorder and the store together and
keeps the one in-process directory of what is live. Everything here runs on the event
loop; nothing here touches a media packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

from .audience import BY_SERVER, BY_SHOW, BY_VIEWER, UNCONNECTED, Audience
from .bulletin import Bulletin
from .directory import Directory
from .errors import Conflict, Full, NotFound
from .recorder.files import LIVE_SUFFIX, finish
from .recorder.recording import Recording
from .relay import roulette
from .relay.hub import StageHub
from .relay.negotiation import Receivable, h264_fits, receivable_video
from .relay.publisher import Publisher
from .relay.viewer import Viewer
from .store import StageRecord, Store

logger = logging.getLogger(__name__)

# A publisher or viewer whose connection is not up by then is given up on. Viewers
# count as watching from their answer on, so one whose page went away before it
# connected (a reload within a second of arriving) must not linger as a ghost in
# the numbers and the roulette's weights; ICE on a working path takes well under
# 5 s, even through TURN.
CONNECT_TIMEOUT = 30.0
VIEWER_CONNECT_TIMEOUT = 10.0
# A live publisher that sends nothing for this long is taken to be lost (an encoder
# killed outright says no goodbye, and ICE consent would only notice after about
# 30 s): its stage is held, below, and its viewers are told.
QUIET_AFTER = 2.0
# A publisher lost without a WHIP DELETE (its connection closed, or its media went
# quiet) may be a page reload or an encoder restart: its stage is held for the same
# key to publish again until this long after the last frame it received. Held, it is
# offered to no newcomer and its viewers stay on the frozen picture.
RECONNECT_WINDOW = 10.0
# A publish with the same key that arrived within the window but is still connecting
# (an encoder's DTLS takes about a second) is waited for at most this much longer.
HANDOVER_GRACE = 5.0
# How often a live publisher's media is checked for quiet, and a held stage for news.
WATCH_INTERVAL = 0.25
# A viewer that sends no RTCP for this long is taken to be gone (rather than waiting
# some 30 s for ICE consent to expire).
VIEWER_SILENCE_TIMEOUT = 6.0
# How often the viewers are looked over for the two timeouts above.
VIEWER_CHECK_INTERVAL = 1.0
# How long a viewer arriving right as an H.264 stage goes live waits for its first SPS,
# which says the profile its answer must name (B32).
SPS_WAIT = 3.0
RETRY_AFTER = 3


class Performance:
    """What belongs to one live run of a stage besides its hub: its row and recording."""

    def __init__(self, performance_id: str, recording: Recording | None) -> None:
        self.id = performance_id
        self.recording = recording


class Venue:
    def __init__(
        self,
        store: Store,
        data: Path,
        ice_servers: tuple[str, ...],
        max_viewers: int,
        max_stages: int = 100,
        lane: tuple[int, int] = (0, 1),
    ) -> None:
        self.store = store
        self.data = data
        self.ice_servers = ice_servers
        self.max_viewers = max_viewers
        self.max_stages = max_stages
        self.bulletin = Bulletin()
        self.audience = Audience(store.path, store.view_seconds, lane)
        # With several workers (stage/front.py): the stages the others carry, and
        # mirrors of those this worker's viewers watch (stage/links.py). One process
        # has neither.
        self.directory = Directory()
        self.mirrors = None
        self.hubs: dict[str, StageHub] = {}
        self.performances: dict[str, Performance] = {}  # by stage id
        self.publishers: dict[str, Publisher] = {}  # every publisher not yet gone
        self.viewers: dict[str, Viewer] = {}
        self.joined = 0  # viewers taken in since the start (a worker's report)
        # Viewers whose connection has come up: only they count as watching.
        self.came_up: set[str] = set()
        # Stages whose publisher was lost, held for the same key (by stage id).
        self.held: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._looking_after_viewers = False

    # publishing

    async def publish(self, stage: StageRecord, offer: str) -> Publisher:
        # A stage that is live or connecting may always publish again (it replaces
        # itself); only new stages count against the cap.
        busy = set(self.hubs) | {p.stage_id for p in self.publishers.values()}
        if stage.id not in busy and len(busy) >= self.max_stages:
            raise Full(
                "Stage has as many performers as it can carry right now. "
                "Try again in a moment.",
                retry_after=RETRY_AFTER * 5,
            )
        publisher, answer = await Publisher.from_offer(
            stage.id, offer, self.ice_servers
        )
        publisher.answer = answer
        self.publishers[publisher.id] = publisher
        self.bulletin.notify(("stage", stage.id))
        self._spawn(self._run_publisher(stage, publisher))
        logger.info(
            "stage %s: publisher %s offered %s",
            stage.id,
            publisher.id,
            "+".join(sorted(publisher.tracks)),
        )
        return publisher

    async def _run_publisher(self, stage: StageRecord, publisher: Publisher) -> None:
        try:
            if not await self._connects(publisher):
                logger.info(
                    "stage %s: publisher %s never connected", stage.id, publisher.id
                )
                return
            hub = self._go_live(stage, publisher)
            # A publisher whose media only paused may be lost and back more than once.
            while await self._until_lost(hub, publisher):
                if not await self._hold(hub, publisher):
                    break
        finally:
            self.publishers.pop(publisher.id, None)
            self.bulletin.notify(("stage", stage.id))
            await publisher.close()
            hub = self.hubs.get(publisher.stage_id)
            if hub is not None and hub.publisher is publisher:
                await self.end_stage(hub)

    async def _connects(self, publisher: Publisher) -> bool:
        connected = asyncio.ensure_future(publisher.connected.wait())
        gone = asyncio.ensure_future(publisher.gone.wait())
        await asyncio.wait(
            {connected, gone},
            timeout=CONNECT_TIMEOUT,
            return_when=asyncio.FIRST_COMPLETED,
        )
        connected.cancel()
        gone.cancel()
        return publisher.connected.is_set() and not publisher.gone.is_set()

    def _go_live(self, stage: StageRecord, publisher: Publisher) -> StageHub:
        hub = self.hubs.get(stage.id)
        if hub is None:
            hub = StageHub(stage.id, stage.name, publisher)
            self.hubs[stage.id] = hub
            logger.info("stage %s: live (%s)", stage.id, stage.name)
        else:
            # The same key published again during the show (a reload, an encoder
            # restart): the new publisher takes over, viewers stay, and the old
            # connection's performance ends so that each recording has one source.
            # After a loss it ended with the last media received, not with the hold.
            ended_at = self._end_time(hub)
            old = hub.replace_publisher(publisher)
            self.held.discard(stage.id)
            logger.info(
                "stage %s: publisher %s replaced by %s", stage.id, old.id, publisher.id
            )
            self._spawn(
                self._close_performance(
                    stage.id, self._take_performance(stage.id, ended_at)
                )
            )
            self._spawn(old.close())
        self._start_performance(hub)
        self._seat_waiting_viewers(hub)
        self._announce(hub)
        return hub

    def _feeds(self, hub: StageHub, publisher: Publisher) -> bool:
        """Whether the publisher is still the one its live stage takes frames from."""
        return self.hubs.get(hub.stage_id) is hub and hub.publisher is publisher

    async def _until_lost(self, hub: StageHub, publisher: Publisher) -> bool:
        """Wait while the publisher feeds its stage; True once it is lost.

        Lost: its connection went without a WHIP DELETE, or its media went quiet.
        False when it stopped feeding the stage otherwise (a DELETE, a new key, or
        another connection with the same key took over).
        """
        while self._feeds(hub, publisher):
            if publisher.gone.is_set():
                return not publisher.said_goodbye
            quiet = time.monotonic() - hub.last_frame_at
            if quiet > QUIET_AFTER:
                logger.info(
                    "stage %s: no media from publisher %s for %.1f s",
                    hub.stage_id,
                    publisher.id,
                    quiet,
                )
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(publisher.gone.wait(), WATCH_INTERVAL)
        return False

    async def _hold(self, hub: StageHub, publisher: Publisher) -> bool:
        """Hold the stage of a lost publisher; True if its media came back.

        The stage is offered to nobody meanwhile and its viewers are told. The hold
        also ends when another publish with the same key takes over (`_go_live`), or
        when the window has passed (False: the caller ends the stage).
        """
        lost_at = hub.last_frame_at
        self.held.add(hub.stage_id)
        performance = self.performances.get(hub.stage_id)
        if performance is not None:
            # Its viewers wait on a frozen picture: not watching, from the last media.
            self.audience.hold(performance.id, self._wall(lost_at))
        self._announce(hub)
        logger.info(
            "stage %s: publisher %s lost, holding the stage for the same key",
            hub.stage_id,
            publisher.id,
        )
        while self._feeds(hub, publisher):
            if hub.last_frame_at > lost_at and not publisher.gone.is_set():
                logger.info(
                    "stage %s: publisher %s is sending again",
                    hub.stage_id,
                    publisher.id,
                )
                self.held.discard(hub.stage_id)
                if performance is not None:
                    self.audience.end_hold(
                        performance.id, self._wall(hub.last_frame_at)
                    )
                self._seat_waiting_viewers(hub)
                self._announce(hub)
                return True
            waited = time.monotonic() - lost_at
            late = RECONNECT_WINDOW + (HANDOVER_GRACE if self._arriving(hub) else 0)
            if waited > late:
                logger.info(
                    "stage %s: nobody came back within %.1f s", hub.stage_id, waited
                )
                return False
            await asyncio.sleep(WATCH_INTERVAL)
        return False

    def _arriving(self, hub: StageHub) -> bool:
        """Whether another publish with the stage's key is connecting to take over."""
        return any(
            p.stage_id == hub.stage_id
            and p is not hub.publisher
            and not p.gone.is_set()
            for p in self.publishers.values()
        )

    def reconnecting(self, stage_id: str) -> bool:
        """Whether the stage is held for its performer to come back."""
        if stage_id in self.held:
            return True
        elsewhere = self.directory.elsewhere().get(stage_id)
        return elsewhere is not None and not elsewhere.live

    async def unpublish(self, stage_id: str, publisher_id: str) -> None:
        publisher = self.publishers.get(publisher_id)
        if publisher is None or publisher.stage_id != stage_id:
            raise NotFound(
                "This publishing session does not exist or has already ended."
            )
        publisher.said_goodbye = True
        await publisher.close()
        hub = self.hubs.get(stage_id)
        if hub is not None and hub.publisher is publisher:
            await self.end_stage(hub)

    async def end_publishers(self, stage_id: str) -> int:
        """End every publisher of a stage, live or still connecting (a rotated key)."""
        ended = [p for p in self.publishers.values() if p.stage_id == stage_id]
        hub = self.hubs.get(stage_id)
        if hub is not None and hub.publisher not in ended:
            ended.append(hub.publisher)
        for publisher in ended:
            # Its owner ended it: nothing to hold the stage for.
            publisher.said_goodbye = True
            await publisher.close()
        if hub is not None:
            await self.end_stage(hub)
        return len(ended)

    async def end_stage(self, hub: StageHub) -> None:
        if self.hubs.get(hub.stage_id) is not hub:
            return
        ended_at = self._end_time(hub)
        del self.hubs[hub.stage_id]
        self.held.discard(hub.stage_id)
        hub.end()
        self.bulletin.notify(("stage", hub.stage_id))
        logger.info("stage %s: ended, moving %d viewers on", hub.stage_id, hub.watching)
        for viewer in list(hub.viewers):
            self._move_on(viewer, exclude=hub.stage_id, ended_by=BY_SHOW)
        await self._close_performance(
            hub.stage_id, self._take_performance(hub.stage_id, ended_at)
        )

    def _end_time(self, hub: StageHub) -> float:
        """When a stage's performance ends if it ends now (wall clock).

        A held stage's performer was lost: the show ended with the last media received,
        so the hold (up to RECONNECT_WINDOW and more) is not part of its length.
        """
        if hub.stage_id not in self.held:
            return time.time()
        return self._wall(hub.last_frame_at)

    @staticmethod
    def _wall(moment: float) -> float:
        """A past moment of the monotonic clock, on the wall clock."""
        return time.time() - max(0.0, time.monotonic() - moment)

    # performances and recordings

    def _start_performance(self, hub: StageHub) -> None:
        now = time.time()
        performance_id = self.store.start_performance(hub.stage_id, now)
        started = datetime.fromtimestamp(now, UTC)

        def on_failure(reason: str) -> None:
            self.store.set_recording(performance_id, state="failed", error=reason)
            self.bulletin.notify(("stage", hub.stage_id))

        recording = Recording(
            self.data / hub.stage_id,
            started,
            dict(hub.publisher.tracks),
            hub.video_codec,
            on_failure,
            hub.want_keyframe,
        )
        self.store.set_recording(
            performance_id, state="recording", path=self._relative(recording.path)
        )
        for kind in hub.publisher.tracks:
            hub.subscribe(kind, recording)
        hub.want_keyframe()
        self.performances[hub.stage_id] = Performance(performance_id, recording)
        for viewer in hub.viewers:
            self._end_watch(viewer, BY_SHOW)
            self._start_watch(viewer, hub)

    def _take_performance(
        self, stage_id: str, ended_at: float | None = None
    ) -> Performance | None:
        """End a performance's row (now, or at `ended_at`) and feed at once; its file
        is closed after."""
        performance = self.performances.pop(stage_id, None)
        if performance is None:
            return None
        hub = self.hubs.get(stage_id)
        if hub is not None:
            for kind in ("audio", "video"):
                hub.unsubscribe(kind, performance.recording)
            # Viewers who stay (the performer reconnected) start a new watch on the
            # next performance; this one's watches end with it.
            for viewer in hub.viewers:
                self._end_watch(viewer, BY_SHOW)
        self.audience.end_hold(performance.id)
        self.audience.flush()
        ended_at = time.time() if ended_at is None else ended_at
        self.store.end_performance(performance.id, ended_at)
        return performance

    async def _close_performance(
        self, stage_id: str, performance: Performance | None
    ) -> None:
        if performance is None:
            return
        recording = performance.recording
        try:
            finished = await recording.close()
        except Exception:
            logger.exception("stage %s: recording could not be closed", stage_id)
            self.store.set_recording(
                performance.id,
                state="failed",
                size=0,
                error="the recording could not be finished",
            )
            return
        failed = recording.state == "failed"
        if finished.path is None:
            self.store.set_recording(
                performance.id,
                state="failed" if failed else "empty",
                size=0,
                error=recording.error,
            )
        else:
            self.store.set_recording(
                performance.id,
                state="truncated" if failed else "ready",
                path=self._relative(finished.path),
                size=finished.size,
            )
        self.bulletin.notify(("stage", stage_id))

    def performance_id(self, hub: StageHub) -> str | None:
        """The performance a hub's viewers are watching, here or on its own worker."""
        if self.mirrors is not None and self.mirrors.mirrors(hub):
            return hub.publisher.performance_id
        performance = self.performances.get(hub.stage_id)
        return performance.id if performance is not None else None

    def recording_state(self, stage_id: str) -> dict | None:
        performance = self.performances.get(stage_id)
        if performance is None:
            return None
        return {
            "state": performance.recording.state,
            "error": performance.recording.error,
        }

    def _relative(self, path: Path) -> str:
        return str(path.relative_to(self.data))

    async def recover(self, only: set[str] | None = None) -> None:
        """After a crash: finish the live files left behind and close what was open.

        With `only` (performance ids), after one worker of several died: just its
        performances, recordings and visits (its lane of watch ids); the other
        workers' shows go on.
        """
        self.audience.close_interrupted(lane_only=only is not None)
        rows = {
            p.recording_path: p
            for p in self.store.unfinished_performances()
            if only is None or p.id in only
        }
        loop = asyncio.get_running_loop()
        for live in sorted(self.data.glob(f"*/*{LIVE_SUFFIX}.*")):
            recorded = self._relative(live).replace(LIVE_SUFFIX, "")
            if only is not None and recorded not in rows:
                continue  # another worker is writing it
            finished = await loop.run_in_executor(None, finish, live)
            row = rows.pop(recorded, None)
            logger.info("recording %s recovered: %.1f s", live.name, finished.duration)
            if row is None:
                continue
            self.store.end_performance(row.id, row.started_at + finished.duration)
            if finished.path is None:
                self.store.set_recording(row.id, state="empty", size=0)
            else:
                self.store.set_recording(
                    row.id,
                    state="ready",
                    size=finished.size,
                    path=self._relative(finished.path),
                )
        for row in rows.values():
            self.store.end_performance(row.id, row.started_at)
            if row.recording_state in ("recording", "finishing"):
                self.store.set_recording(row.id, state="empty", size=0)
        if only is None:
            self.store.close_interrupted(time.time())

    # viewers

    async def watch(self, visitor: str, offer: str, stage_id: str | None) -> Viewer:
        if len(self.viewers) >= self.max_viewers:
            raise Full(
                "Stage is full right now. Try again in a moment.",
                retry_after=RETRY_AFTER * 5,
            )
        if stage_id is not None:
            hub = await self._live_hub(stage_id)
        else:
            hub = await self._hub_for(self._first_stage(receivable_video(offer)))
            if hub is None:
                raise Conflict("Nobody is on stage right now.", retry_after=RETRY_AFTER)
        try:
            await hub.publisher.h264_described(SPS_WAIT)
            viewer, answer = await Viewer.from_offer(
                visitor,
                offer,
                self.ice_servers,
                hub.video_codec,
                h264_profile_level_id=hub.h264_profile_level_id,
            )
        except BaseException:
            self._release(hub)
            raise
        viewer.answer = answer
        self.viewers[viewer.id] = viewer
        self.joined += 1
        viewer.pc.on("connectionstatechange", lambda: self._on_viewer_state(viewer))
        if not self._offered(hub) or not self._fits(viewer, hub):
            first, hub = hub, await self._hub_for(self._choose(viewer))
            self._release(first)
        self._move(viewer, hub)
        self._look_after(viewer)
        logger.info(
            "viewer %s: joined stage %s", viewer.id, hub.stage_id if hub else None
        )
        return viewer

    async def _live_hub(self, stage_id: str) -> StageHub:
        """The hub of a stage a viewer asked for: here, or a mirror of another
        worker's (with several workers, the front sends a viewer elsewhere when the
        stage's own worker is full)."""
        hub = self.hubs.get(stage_id)
        elsewhere = self.directory.elsewhere().get(stage_id)
        if hub is None and elsewhere is not None and elsewhere.live:
            hub = await self.mirrors.open(elsewhere)
        reconnecting = elsewhere is not None and not elsewhere.live
        if hub is None and not reconnecting:
            raise Conflict("This stage is not live right now.", retry_after=RETRY_AFTER)
        if hub is None or not self._offered(hub):
            raise Conflict(
                "This stage's performer is reconnecting. Try again in a moment.",
                retry_after=RETRY_AFTER,
            )
        return hub

    def _first_stage(self, wanted: Receivable | None):
        """A newcomer's stage: one of this worker's that the offer can take, or else
        one of another's (mirrored here). Failing those, any live stage: the answer
        then says which codecs the viewer takes, and `watch` seats it by them."""
        here = [h for h in self.hubs.values() if self._offered(h)]
        elsewhere = []
        if self.mirrors is not None:
            elsewhere = [s for s in self.directory.elsewhere().values() if s.live]
        if wanted is not None:
            for pool in (here, elsewhere):
                fitting = [stage for stage in pool if wanted.takes(stage)]
                if fitting:
                    return roulette.choose(fitting)
        return roulette.choose(here if here else elsewhere)

    async def _run_viewer(self, viewer: Viewer) -> None:
        """End a visit when its connection goes (`_look_after_viewers`: the rest)."""
        try:
            await viewer.gone.wait()
        finally:
            await self.leave(viewer.id)

    def _look_after(self, viewer: Viewer) -> None:
        self._spawn(self._run_viewer(viewer))
        if not self._looking_after_viewers:
            self._looking_after_viewers = True
            self._spawn(self._look_after_viewers())

    async def _look_after_viewers(self) -> None:
        """Once a second, let go of the viewers that never arrived or have vanished.

        One look over every viewer, rather than a timer per viewer: a wake-up each
        per second was a share of a viewer's cost of its own (bench/README.md).
        """
        try:
            while self.viewers:
                await asyncio.sleep(VIEWER_CHECK_INTERVAL)
                now = time.monotonic()
                for viewer in list(self.viewers.values()):
                    connected = viewer.pc.connectionState == "connected"
                    waited = now - viewer.joined_at
                    # Browsers report reception about once a second; a viewer we have
                    # not heard from in a while has closed its tab or lost its network.
                    silent = now - viewer.last_heard
                    if not connected and waited > VIEWER_CONNECT_TIMEOUT:
                        logger.info("viewer %s: never connected", viewer.id)
                        self._spawn(self.leave(viewer.id, ended_by=UNCONNECTED))
                    elif connected and silent > VIEWER_SILENCE_TIMEOUT:
                        logger.info(
                            "viewer %s: silent for %.0f s, gone", viewer.id, silent
                        )
                        self._spawn(self.leave(viewer.id))
        finally:
            self._looking_after_viewers = False

    def _on_viewer_state(self, viewer: Viewer) -> None:
        if viewer.pc.connectionState != "connected" or viewer.id in self.came_up:
            return
        if viewer.id not in self.viewers:
            return
        self.came_up.add(viewer.id)
        if viewer.watch_id is not None:
            self.audience.connect(viewer.watch_id)
        if viewer.hub is not None:
            self._announce(viewer.hub)

    def watching(self, hub: StageHub) -> int:
        """Viewers on the stage now whose connection came up (on this worker)."""
        return sum(1 for viewer in hub.viewers if viewer.id in self.came_up)

    def watching_everywhere(self, hub: StageHub) -> int:
        """Viewers on the stage now whose connection came up, on every worker."""
        if self.hubs.get(hub.stage_id) is hub:
            return self.watching(hub) + self.directory.mirrored(hub.stage_id)
        elsewhere = self.directory.elsewhere().get(hub.stage_id)
        return elsewhere.watching if elsewhere else self.watching(hub)

    def viewer(self, viewer_id: str) -> Viewer:
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            raise NotFound("This viewer does not exist or has left.")
        return viewer

    async def next(self, viewer_id: str) -> StageHub:
        viewer = self.viewer(viewer_id)
        current = viewer.hub.stage_id if viewer.hub else None
        hub = await self._hub_for(self._choose(viewer, exclude=current))
        if hub is None:
            raise Conflict("No other stage is live right now.", retry_after=RETRY_AFTER)
        if viewer_id not in self.viewers:  # it left while its stage was mirrored
            self._release(hub)
        self._move(self.viewer(viewer_id), hub)
        return hub

    async def leave(self, viewer_id: str, ended_by: str = BY_VIEWER) -> None:
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            return
        watched = time.monotonic() - viewer.joined_at
        self._move(viewer, None, ended_by)
        self.came_up.discard(viewer.id)
        await viewer.close()
        logger.info("viewer %s: left after %.1f s", viewer.id, watched)

    def _fits(self, viewer: Viewer, hub: StageHub) -> bool:
        # A viewer takes the video codecs its answer named; for H.264 only the one
        # profile (B32).
        return (
            hub.video_codec is None
            or "video" not in viewer.tracks
            or (
                hub.video_codec in viewer.video_codecs
                and (
                    hub.video_codec != "H264"
                    or h264_fits(hub.h264_profile_level_id, viewer.h264_profile)
                )
            )
        )

    def _offered(self, hub: StageHub) -> bool:
        # A held stage shows a frozen picture: newcomers and Next go elsewhere.
        return not hub.ended and not self.reconnecting(hub.stage_id)

    def _choose(self, viewer: Viewer, exclude: str | None = None):
        """A live stage for the viewer: a hub here, or the listing of a stage another
        worker carries (`_hub_for` mirrors it), or None."""
        candidates = [
            h for h in self.hubs.values() if self._offered(h) and self._fits(viewer, h)
        ]
        if self.mirrors is not None:
            candidates += [
                listing
                for listing in self.directory.elsewhere().values()
                if listing.live and self._fits(viewer, listing)
            ]
        return roulette.choose(candidates, current=exclude, recent=tuple(viewer.recent))

    async def _hub_for(self, chosen) -> StageHub | None:
        """The hub of what `_choose` chose: a stage elsewhere is mirrored here."""
        if chosen is None or isinstance(chosen, StageHub):
            return chosen
        return await self.mirrors.open(chosen)

    def _move_on(self, viewer: Viewer, exclude: str, ended_by: str) -> None:
        """Move a viewer whose stage ended to another one, maybe on another worker."""
        chosen = self._choose(viewer, exclude=exclude)
        if chosen is None or isinstance(chosen, StageHub):
            self._move(viewer, chosen, ended_by)
            return
        self._move(viewer, None, ended_by)
        self._spawn(self._seat_elsewhere(viewer, chosen))

    async def _seat_elsewhere(self, viewer: Viewer, listing) -> None:
        hub = await self.mirrors.open(listing)
        if hub is not None and viewer.hub is None and viewer.id in self.viewers:
            self._move(viewer, hub)
        elif hub is not None:
            self._release(hub)  # seated meanwhile, or gone

    def _release(self, hub: StageHub | None) -> None:
        """Close the hub if it is a mirror that nobody here watches."""
        if hub is not None and self.mirrors is not None:
            self.mirrors.release(hub)

    # stages of other workers (only with several workers)

    def elsewhere_changed(self, stage_id: str) -> None:
        """The directory's listing of a stage on another worker changed."""
        self.bulletin.notify(("stage", stage_id))
        mirror = self.mirrors.hubs.get(stage_id)
        if mirror is not None:
            self._announce(mirror)
        listing = self.directory.elsewhere().get(stage_id)
        if listing is None or not listing.live:
            return
        for viewer in self.viewers.values():
            if viewer.hub is None and self._fits(viewer, listing):
                self._spawn(self._seat_elsewhere(viewer, listing))

    def mirror_ended(self, hub: StageHub) -> None:
        """A stage this worker mirrored ended on its own: move its viewers on."""
        for viewer in list(hub.viewers):
            self._move_on(viewer, exclude=hub.stage_id, ended_by=BY_SHOW)

    def mirror_performance(self, hub: StageHub) -> None:
        """A mirrored stage's performer came back: its viewers watch a new show."""
        for viewer in hub.viewers:
            self._end_watch(viewer, BY_SHOW)
            self._start_watch(viewer, hub)
        self._announce(hub)

    def _move(
        self, viewer: Viewer, hub: StageHub | None, ended_by: str = BY_VIEWER
    ) -> None:
        old = viewer.hub
        self._end_watch(viewer, ended_by)
        viewer.attach(hub)
        if hub is not None:
            self._start_watch(viewer, hub)
            self._announce(hub)
        if old is not None and old is not hub:
            self._announce(old)
            if self.mirrors is not None and not old.viewers:
                self.mirrors.release(old)
        self.bulletin.notify(("viewer", viewer.id))

    def _announce(self, hub: StageHub) -> None:
        """Tell the stage's page and each of its viewers' pages that something changed."""
        self.bulletin.notify(("stage", hub.stage_id))
        for viewer in hub.viewers:
            self.bulletin.notify(("viewer", viewer.id))

    def _seat_waiting_viewers(self, hub: StageHub) -> None:
        for viewer in self.viewers.values():
            if viewer.hub is None and self._fits(viewer, hub):
                self._move(viewer, hub)

    # Counting touches memory only; the audience writes the rows in batches.

    def _start_watch(self, viewer: Viewer, hub: StageHub) -> None:
        performance_id = self.performance_id(hub)
        if performance_id is not None:
            viewer.watch_id = self.audience.open_watch(
                performance_id, viewer.visitor, connected=viewer.id in self.came_up
            )

    def _end_watch(self, viewer: Viewer, ended_by: str) -> None:
        if viewer.watch_id is not None:
            self.audience.close_watch(viewer.watch_id, ended_by)
            viewer.watch_id = None

    # lifetime

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("venue task failed", exc_info=task.exception())

    async def close(self) -> None:
        for viewer_id in list(self.viewers):
            await self.leave(viewer_id, ended_by=BY_SERVER)
        for hub in list(self.hubs.values()):
            await self.end_stage(hub)
        for publisher in list(self.publishers.values()):
            await publisher.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.audience.close()
