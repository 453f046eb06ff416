"""Settings: one frozen object, built once at start-up from flags and environment."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, fields
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
    # Processes that carry the stages (1: this process alone). With more, this process
    # is a thin front that proxies to them (stage/front.py); the caps are per process.
    workers: int = 1
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
        if self.workers < 1:
            raise ValueError("there must be at least 1 worker")
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


# Flags with one value: setting, environment variable, type, what it means. The
# defaults are the Settings fields' own.
_OPTIONS = (
    ("host", "STAGE_HOST", str, "address the HTTP server binds"),
    ("port", "STAGE_PORT", int, "HTTP port"),
    ("data", "STAGE_DATA", Path, "folder for stage.db and the recordings"),
    ("view_seconds", "STAGE_VIEW_SECONDS", float, "seconds of watching that make "
     "a view"),
    ("max_viewers", "STAGE_MAX_VIEWERS", int, "viewers this server carries; past it "
     "new viewers get 503"),
    ("max_stages", "STAGE_MAX_STAGES", int, "stages live at once; past it new "
     "publishers get 503"),
    ("workers", "STAGE_WORKERS", int, "processes that carry the stages, each on "
     "its own core; caps are per process"),
)
# Repeatable flags, or a comma list in the environment: setting, flag, environment
# variable, what one value is, what none means.
_LISTS = (
    ("ice_addresses", "--ice-address", "STAGE_ICE_ADDRESSES",
     "a local address ICE gathers on", "every non-loopback interface"),
    ("ice_servers", "--ice-server", "STAGE_ICE_SERVERS",
     "a STUN/TURN URL for the server and the pages", "none"),
)


def _from_environment(env, variable: str, kind, default):
    value = env.get(variable)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ValueError(
            f"{variable} must be {_KIND_NAMES[kind]}, not {value!r}"
        ) from None


# Only numbers can be written wrong: any text is a host or a path.
_KIND_NAMES = {int: "a whole number", float: "a number"}


def from_command_line(argv: list[str] | None = None, env=os.environ) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m stage", description="Run the Stage server."
    )
    defaults = {f.name: f.default for f in fields(Settings)}
    for name, variable, kind, meaning in _OPTIONS:
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=_from_environment(env, variable, kind, defaults[name]),
            help=f"{meaning} ({variable}; default %(default)s)",
        )
    for name, flag, variable, meaning, otherwise in _LISTS:
        parser.add_argument(
            flag,
            action="append",
            dest=name,
            help=f"{meaning}; repeatable ({variable}, comma list; "
            f"default: {otherwise})",
        )
    parser.add_argument(
        "--log-level",
        default=env.get("STAGE_LOG_LEVEL", "INFO"),
        help="logging level (STAGE_LOG_LEVEL; default %(default)s)",
    )
    args = parser.parse_args(argv)
    return Settings(
        **{name: getattr(args, name) for name, *_ in _OPTIONS},
        **{
            name: tuple(getattr(args, name) or _split(env.get(variable)))
            for name, _, variable, *_ in _LISTS
        },
        extra={"log_level": args.log_level.upper()},
    )


def as_flags(settings: Settings) -> list[str]:
    """Flags that give `from_command_line` these settings back (for a worker)."""
    flags = []
    for name, *_ in _OPTIONS:
        flags += ["--" + name.replace("_", "-"), str(getattr(settings, name))]
    for name, flag, *_ in _LISTS:
        for value in getattr(settings, name):
            flags += [flag, value]
    return flags + ["--log-level", settings.extra.get("log_level", "INFO")]
