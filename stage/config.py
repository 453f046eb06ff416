"""Settings: one frozen object, built once at start-up from flags and environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data: Path = Path("recordings")
    # Addresses ICE gathers candidates on; empty means every non-loopback interface.
    ice_addresses: tuple[str, ...] = ()
    # STUN/TURN URLs given to the server's peer connections and to the pages.
    ice_servers: tuple[str, ...] = ()
    # Seconds of watching that make a view.
    view_seconds: float = 3.0
    # Most viewers one server carries at once; past it, new viewers get 503. One
    # process uses one core, and on the 2-core machine of bench/README.md 100 viewers
    # of a 1 Mb/s stream took half of one: 200 is about a core's worth, before the
    # relay starts to fall behind for everyone.
    max_viewers: int = 200
    # Most stages one server carries live at once; past it, new publishers get 503.
    max_stages: int = 100
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be between 1 and 65535, not {self.port}")
        if self.view_seconds < 0:
            raise ValueError("view seconds cannot be negative")
        if self.max_viewers < 1:
            raise ValueError("the viewer cap must be at least 1")
        if self.max_stages < 1:
            raise ValueError("the stage cap must be at least 1")
        for url in self.ice_servers:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(
                    f"ICE server {url!r} must start with stun:, turn: or turns:"
                )

    @property
    def database(self) -> Path:
        return self.data / "stage.db"


def _split(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(part.strip() for part in value.split(",") if part.strip())


def from_command_line(argv: list[str] | None = None, env=os.environ) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m stage", description="Run the Stage server."
    )
    parser.add_argument(
        "--host",
        default=env.get("STAGE_HOST", "127.0.0.1"),
        help="address the HTTP server binds (STAGE_HOST; default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env.get("STAGE_PORT", "8080")),
        help="HTTP port (STAGE_PORT; default %(default)s)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(env.get("STAGE_DATA", "recordings")),
        help="folder for stage.db and the recordings (STAGE_DATA; default %(default)s)",
    )
    parser.add_argument(
        "--ice-address",
        action="append",
        dest="ice_addresses",
        help="a local address ICE gathers on; repeatable (STAGE_ICE_ADDRESSES, comma "
        "list; default: every non-loopback interface)",
    )
    parser.add_argument(
        "--ice-server",
        action="append",
        dest="ice_servers",
        help="a STUN/TURN URL for the server and the pages; repeatable "
        "(STAGE_ICE_SERVERS, comma list; default none)",
    )
    parser.add_argument(
        "--view-seconds",
        type=float,
        default=float(env.get("STAGE_VIEW_SECONDS", "3")),
        help="seconds of watching that make a view (STAGE_VIEW_SECONDS; default "
        "%(default)s)",
    )
    parser.add_argument(
        "--max-viewers",
        type=int,
        default=int(env.get("STAGE_MAX_VIEWERS", "200")),
        help="viewers this server carries; past it new viewers get 503 "
        "(STAGE_MAX_VIEWERS; default %(default)s)",
    )
    parser.add_argument(
        "--max-stages",
        type=int,
        default=int(env.get("STAGE_MAX_STAGES", "100")),
        help="stages live at once; past it new publishers get 503 "
        "(STAGE_MAX_STAGES; default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("STAGE_LOG_LEVEL", "INFO"),
        help="logging level (STAGE_LOG_LEVEL; default %(default)s)",
    )
    args = parser.parse_args(argv)
    settings = Settings(
        host=args.host,
        port=args.port,
        data=args.data,
        ice_addresses=tuple(
            args.ice_addresses or _split(env.get("STAGE_ICE_ADDRESSES"))
        ),
        ice_servers=tuple(args.ice_servers or _split(env.get("STAGE_ICE_SERVERS"))),
        view_seconds=args.view_seconds,
        max_viewers=args.max_viewers,
        max_stages=args.max_stages,
        extra={"log_level": args.log_level.upper()},
    )
    return settings
