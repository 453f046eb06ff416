"""python -m stage: run the server with settings from flags and the environment."""

from __future__ import annotations

import sys

from aiohttp import web

from . import logs
from .config import from_command_line
from .front import create_front
from .server import create_app


def main(argv: list[str] | None = None) -> None:
    try:
        settings = from_command_line(argv)
    except ValueError as exc:
        sys.exit(f"stage: {exc}")
    logs.set_up(settings.extra["log_level"])
    if settings.workers > 1:
        # Several processes behind this one, each on its own core (stage/front.py).
        app = create_front(settings)
    else:
        app = create_app(settings)
    address = f"http://{settings.host}:{settings.port}/"

    def listening(_: str) -> None:
        # aiohttp calls this once the port is bound, after start-up went well.
        print(f"Stage is running on {address}", flush=True)

    web.run_app(app, host=settings.host, port=settings.port, print=listening)


if __name__ == "__main__":
    main()
