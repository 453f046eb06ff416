"""Janus 1.1.2 (Debian's `janus`) as the C reference of the relay benchmark.

The packaged service stays off. The bench starts its own `janus -F DIR -C
DIR/janus.jcfg` as a child, with a configuration written to a temporary folder: only
the VideoRoom plugin and the plain HTTP transport (on 127.0.0.1, admin API off) are in
the folders Janus loads from, candidates are gathered on the bench namespace's veth
(see `bench/netns.py`), and one room takes one VP8 + Opus publisher. Every SDP Janus
sends is checked to hold only 127.0.0.1 candidates (`check_loopback_only`).

The HTTP API: create a session, attach a VideoRoom handle, send a `message` (body and
optional JSEP) and read the plugin's event, with the same transaction, from the
session's long poll.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiohttp

from . import netns

logger = logging.getLogger(__name__)

JANUS = "/usr/bin/janus"
LIBRARIES = Path("/usr/lib/x86_64-linux-gnu/janus")
ROOM = 1234
PLUGIN = "janus.plugin.videoroom"

CORE = """general: {{
    configs_folder = "{folder}"
    plugins_folder = "{folder}/plugins"
    transports_folder = "{folder}/transports"
    events_folder = "{folder}/events"
    loggers_folder = "{folder}/loggers"
    debug_level = 3
    session_timeout = 60
    {event_loops}
}}
media: {{
    ipv6 = false
}}
nat: {{
    nice_debug = false
    full_trickle = false
    ice_enforce_list = "{interface}"
    ignore_unreachable_ice_server = true
}}
plugins: {{
}}
transports: {{
}}
loggers: {{
}}
events: {{
    broadcast = false
}}
"""

HTTP = """general: {{
    json = "plain"
    base_path = "/janus"
    http = true
    port = {port}
    ip = "127.0.0.1"
    https = false
}}
admin: {{
    admin_http = false
    admin_https = false
}}
"""

# bitrate: the REMB cap Janus sends the publisher; the bench pins its encoder anyway.
VIDEOROOM = """general: {{
    events = false
}}
room-{room}: {{
    description = "Bench"
    publishers = 1
    bitrate = 2000000
    fir_freq = 0
    audiocodec = "opus"
    videocodec = "vp8"
    record = false
}}
"""

CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.MULTILINE)
CONNECTION = re.compile(r"^c=IN IP[46] (\S+)", re.MULTILINE)


def check_loopback_only(sdp: str) -> None:
    """Raise unless every candidate and connection address in `sdp` is 127.0.0.1."""
    candidates = CANDIDATE.findall(sdp)
    if not candidates:
        raise RuntimeError("Janus sent an SDP without candidates")
    others = {a for a in candidates + CONNECTION.findall(sdp) if a != "127.0.0.1"}
    others.discard("0.0.0.0")  # a c= line of a rejected or inactive section
    if others:
        raise RuntimeError(f"Janus offered addresses other than 127.0.0.1: {others}")


def write_configuration(folder: Path, port: int, event_loops: int) -> None:
    for name in ("plugins", "transports", "events", "loggers"):
        (folder / name).mkdir()
    (folder / "plugins" / "libjanus_videoroom.so").symlink_to(
        LIBRARIES / "plugins" / "libjanus_videoroom.so"
    )
    (folder / "transports" / "libjanus_http.so").symlink_to(
        LIBRARIES / "transports" / "libjanus_http.so"
    )
    loops = f"event_loops = {event_loops}" if event_loops else ""
    (folder / "janus.jcfg").write_text(
        CORE.format(folder=folder, event_loops=loops, interface=netns.INTERFACE)
    )
    (folder / "janus.transport.http.jcfg").write_text(HTTP.format(port=port))
    (folder / "janus.plugin.videoroom.jcfg").write_text(VIDEOROOM.format(room=ROOM))


class JanusProcess:
    """Our own Janus, a child of the bench, with its configuration in a temporary folder."""

    def __init__(self, port: int, event_loops: int = 0) -> None:
        if not netns.inside():
            raise RuntimeError("Janus runs only inside the bench namespace")
        if not Path(JANUS).exists():
            raise RuntimeError("Janus is missing: apt-get install janus")
        self.port = port
        self.url = f"http://127.0.0.1:{port}/janus"
        self.folder = Path(tempfile.mkdtemp(prefix="stage-bench-janus-"))
        write_configuration(self.folder, port, event_loops)
        self.log = open(self.folder / "janus.log", "wb")
        self.process = subprocess.Popen(
            [JANUS, "-F", str(self.folder), "-C", str(self.folder / "janus.jcfg")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=netns.die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    async def ready(self) -> None:
        for _ in range(100):
            if self.process.poll() is not None:
                break
            try:
                async with aiohttp.ClientSession() as http:
                    async with http.get(f"{self.url}/info") as r:
                        info = await r.json(content_type=None)
                plugins = set(info.get("plugins", {}))
                transports = set(info.get("transports", {}))
                if plugins != {PLUGIN} or transports != {"janus.transport.http"}:
                    raise RuntimeError(f"Janus loaded {plugins} and {transports}")
                return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"Janus did not start: {self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return (self.folder / "janus.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class JanusError(RuntimeError):
    pass


class JanusSession:
    """One Janus API session with long polling; handles are attached to it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http: aiohttp.ClientSession | None = None
        self.id: int | None = None
        self._numbers = itertools.count()
        self._waiting: dict[str, asyncio.Future] = {}
        self._poll: asyncio.Task | None = None

    def _transaction(self) -> str:
        return f"{secrets.token_hex(4)}{next(self._numbers)}"

    async def _post(self, path: str, request: dict) -> dict:
        request = {**request, "transaction": self._transaction()}
        async with self.http.post(self.url + path, json=request) as r:
            reply = await r.json(content_type=None)
        if reply.get("janus") == "error":
            raise JanusError(reply["error"])
        return reply

    async def create(self) -> JanusSession:
        self.http = aiohttp.ClientSession()
        reply = await self._post("", {"janus": "create"})
        self.id = reply["data"]["id"]
        self._poll = asyncio.ensure_future(self._long_poll())
        return self

    async def attach(self) -> int:
        reply = await self._post(f"/{self.id}", {"janus": "attach", "plugin": PLUGIN})
        return reply["data"]["id"]

    async def message(self, handle: int, body: dict, jsep: dict | None = None) -> dict:
        """Send a plugin request and return the event that answers it (data and JSEP)."""
        request = {"janus": "message", "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        transaction = self._transaction()
        future = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        try:
            request["transaction"] = transaction
            async with self.http.post(
                f"{self.url}/{self.id}/{handle}", json=request
            ) as r:
                reply = await r.json(content_type=None)
            if reply.get("janus") == "error":
                raise JanusError(reply["error"])
            if reply.get("janus") == "success":  # a synchronous request
                return reply["plugindata"]["data"]
            event = await asyncio.wait_for(future, 20)
        finally:
            self._waiting.pop(transaction, None)
        data = event["plugindata"]["data"]
        if "error" in data:
            raise JanusError(data["error"])
        if "jsep" in event:
            check_loopback_only(event["jsep"]["sdp"])
            data["jsep"] = event["jsep"]
        return data

    async def _long_poll(self) -> None:
        """Read the session's events (this also keeps the session alive)."""
        while True:
            try:
                async with self.http.get(
                    f"{self.url}/{self.id}", params={"maxev": "10"}
                ) as r:
                    events = await r.json(content_type=None)
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, ValueError) as exc:
                logger.warning("janus session %s: long poll failed: %s", self.id, exc)
                await asyncio.sleep(1)
                continue
            if isinstance(events, dict):
                events = [events]
            for event in events:
                future = self._waiting.get(event.get("transaction"))
                if future is not None and not future.done():
                    if event.get("janus") == "event":
                        future.set_result(event)

    async def destroy(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
        if self.http is not None:
            try:
                await self._post(f"/{self.id}", {"janus": "destroy"})
            except (aiohttp.ClientError, JanusError):
                pass
            await self.http.close()
