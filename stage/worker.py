"""python -m stage.worker: one worker process behind the front (stage/front.py).

A whole Stage app with its own venue, serving HTTP on a Unix socket that only the front
uses. Started by the front with: its index, the number of workers, the front's control
socket, its own socket, then the server's flags. It does not finish recordings left
by a crash (the front did, once, before starting the workers) and it ends, closing its
shows and recordings, on SIGTERM or SIGINT or when the front goes away.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from . import logs
from .appkeys import VENUE
from .config import from_command_line
from .directory import Listing, Report, SharedDirectory
from .links import LinkServer, Mirrors, link_path
from .server import create_app
from .venue import Venue

logger = logging.getLogger("stage.worker")  # run as __main__


def report(venue: Venue, worker: int) -> Report:
    """What this worker carries, for the front's directory."""
    stages = [
        Listing(
            stage_id=hub.stage_id,
            name=hub.name,
            worker=worker,
            live=not venue.reconnecting(hub.stage_id),
            watching=venue.watching(hub),
            publisher=hub.publisher.id,
            performance=venue.performance_id(hub),
            recording=venue.recording_state(hub.stage_id),
            video_codec=hub.video_codec,
            h264_profile_level_id=hub.h264_profile_level_id,
        )
        for hub in venue.hubs.values()
    ]
    connecting = {p.stage_id for p in venue.publishers.values()} - set(venue.hubs)
    mirrored = {
        stage_id: venue.watching(hub) for stage_id, hub in venue.mirrors.hubs.items()
    }
    return Report(
        worker,
        stages,
        sorted(connecting),
        len(venue.viewers),
        mirrored,
        joined=venue.joined,
    )


async def serve(index: int, count: int, control: str, path: str, flags) -> None:
    settings = from_command_line(flags, env={})
    settings.extra["worker"] = (index, count)
    app = create_app(settings)
    # The front logs every request with the client's address; here it would be noise.
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.UnixSite(runner, path).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    venue = app[VENUE]
    run_dir = os.path.dirname(control)
    links = LinkServer(venue, link_path(run_dir, index))
    await links.start()
    venue.mirrors = Mirrors(run_dir, venue.mirror_ended, venue.mirror_performance)
    directory = SharedDirectory(
        index,
        control,
        local=lambda: report(venue, index),
        bulletin=venue.bulletin,
        changed=venue.elsewhere_changed,
        lost=stop.set,
    )
    venue.directory = directory
    await directory.start()
    logger.info("worker %d: serving", index)
    try:
        await stop.wait()
    finally:
        await directory.close()
        await runner.cleanup()
        await links.close()
        await venue.mirrors.close()


def main(argv: list[str]) -> None:
    index, count, control, path, *flags = argv
    logs.set_up(
        from_command_line(flags, env={}).extra["log_level"], f"worker {index} "
    )
    asyncio.run(serve(int(index), int(count), control, path, flags))


if __name__ == "__main__":
    main(sys.argv[1:])
