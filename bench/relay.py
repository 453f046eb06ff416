"""Relay cost: a server's CPU with one publisher and N viewers; Stage beside MediaRelay and Janus.

    .venv/bin/python -m bench.relay [--viewers 0 1 10 50 100 200] [--seconds 10]
                                    [--rounds 3] [--systems stage mediarelay janus]
                                    [--reference-max 10] [--collapse-fps 15]
                                    [--per-process 10] [--janus-event-loops 2]
                                    [--hard-limit 3600] [--probe]

Three servers, each its own process: Stage (`python -m stage`); aiortc's MediaRelay
with a sender per viewer (`bench/mediarelay_server.py`, one VP8 encode per viewer, as
aiortc's examples do); Janus 1.1.2 with its VideoRoom plugin (`bench/janus.py`). The
whole run happens in a private network namespace (`bench/netns.py`, needs root), where
127.0.0.1 is the only address there is.

One publisher (`bench/publisher.py`: 640x480 VP8 at 30 fps of moving grain, a loop
encoded once at 1 Mb/s and sent as packets, plus Opus) runs in this process and is
connected only to the server being measured. Viewers run in their own processes
(`bench/viewers.py`, --per-process each); they count frames and RTP packets without
decoding ("light" viewers by default, see that module; --full-viewers for aiortc's
whole receive path), except two that decode to show that the stream is watchable.

For each N: server CPU (user+sys over a fixed window, % of one core); "waiting", the
time its threads were ready but had no core (a low CPU figure with much waiting means
starved, not idle); RSS; RTP packets per second all viewers received; packets per
core-second; viewers' video fps (min and median); the decoders' fps; the latency the
server adds (`bench/latency.py`, p50/p99 over the paired frames of every viewer; an
upper bound; n/a for MediaRelay, which re-encodes); and the CPU of the viewer processes.
Per viewer = (CPU with N viewers - CPU with the publisher alone) / N, each server
against its own publisher-only figure.

Rounds go over N, and for each N over the servers in an order that rotates each
round; each round starts fresh server processes. Printed are medians over the rounds
in which the server held (viewers' median fps at least --collapse-fps), or over all
rounds if it never held ("held" says how many). A server whose viewers' median fps
falls below --collapse-fps at some N is not taken to a larger N in that round, nor in
any later round once it collapsed at that N twice (the run says so); MediaRelay,
which collapses by design, is instead not taken past --reference-max. No new
measurement starts after --budget seconds, and the run is killed at --hard-limit
whatever happens. `--report FILE` prints the tables of an earlier run's JSON.

`--probe` runs Stage with a probe inside (`bench/probe.py`, outside the product): over
the same window it notes, in the server, each frame's arrival (the datagram that
completed it, read from the publisher's socket) to each viewer's send of its last
packet, the event loop's callbacks longer than 5 ms ("stalls") and the collector's
pauses. Its video p50/p99/max are printed beside the end-to-end figures, which it does
not change in kind (it costs the server a little per callback and per send).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from stage.relay.ice import gather_on

from . import machine, netns
from .latency import SendLog, percentiles
from .publisher import LOOP_SECONDS, load_loop
from .servers import JanusServer, PythonServer, ViewerProcess, split

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SYSTEMS = ("stage", "mediarelay", "janus", "workers")
# "workers" is Stage with `--workers 2`, not run unless asked for: each worker carries
# at most --worker-viewers of the stage's viewers and the rest watch it through a
# mirror on the other worker, so one stage's fan-out is split over two processes.
DEFAULT_SYSTEMS = ("stage", "mediarelay", "janus")
SETTLE = 2.0  # seconds for keyframes and bitrates to settle after viewers joined


class OutOfBudget(Exception):
    pass


def clients_cpu(groups: list[ViewerProcess]) -> float:
    return sum(machine.cpu_seconds(g.pid) for g in groups)


async def publish_and_measure(server, viewers: int, args, frames, log) -> dict:
    published = await server.publish(frames, log)
    try:
        await asyncio.sleep(2)  # the first keyframe
        return await measure(server, viewers, args, published, log)
    finally:
        await published.stop()


async def measure(server, viewers: int, args, published, log: SendLog) -> dict:
    sizes = split(viewers, args.per_process)
    where = server.viewer_args()
    groups = await asyncio.gather(
        *(
            ViewerProcess.start(
                [
                    *where,
                    *(["--light"] if args.light else []),
                    "--decoders",
                    str(min(2, size) if i == 0 else 0),
                ],
                size,
            )
            for i, size in enumerate(sizes)
        )
    )
    try:
        await asyncio.sleep(SETTLE)
        first = await asyncio.gather(*(g.ask("sample") for g in groups))
        await asyncio.gather(*(g.ask("mark") for g in groups))
        server.probe_start()
        pids = server.pids
        marked = time.monotonic_ns()
        cpu0, wait0 = _cpu_seconds(pids), _run_queue_seconds(pids)
        clients0, busy0 = clients_cpu(groups), machine.machine_busy()[0]
        (frames0, keys0, bytes0), t0 = published.sent(), time.monotonic()
        await asyncio.sleep(args.seconds)
        cpu1, wait1 = _cpu_seconds(pids), _run_queue_seconds(pids)
        clients1, busy1 = clients_cpu(groups), machine.machine_busy()[0]
        (frames1, keys1, bytes1), t1 = published.sent(), time.monotonic()
        probed = await server.probe_result()
        last = await asyncio.gather(*(g.ask("sample") for g in groups))
        sent = json.dumps(log.since(marked - 2_000_000_000))
        paired = await asyncio.gather(*(g.ask(f"pair {sent}") for g in groups))
    finally:
        await asyncio.gather(*(g.stop() for g in groups))
    elapsed = t1 - t0

    # Frame rates over each process's own time between its two samples: the window
    # the bench timed is shorter by the time it took to ask them all (at 100 viewers
    # under load, up to a second: 31-33 fps of a 30 fps stream).
    fps = [
        (b - a) / (s1["at"] - s0["at"])
        for s0, s1 in zip(first, last)
        for a, b in zip(s0["frames"], s1["frames"])
    ]
    decoded_fps = [
        (b[0] - a[0]) / (s1["at"] - s0["at"])
        for s0, s1 in zip(first, last)
        for a, b in zip(s0["decoded"], s1["decoded"])
    ]
    decoded1 = [d for s in last for d in s["decoded"]]
    delays = [d for p in paired for d in p["delays"]]
    per_viewer = [a for p in paired for a in p["arrived"]]
    arrived = sum(a[1] for a in per_viewer)
    p50, p99 = percentiles(delays)
    packets_per_second = sum(
        (s1["packets"] - s0["packets"]) / (s1["at"] - s0["at"])
        for s0, s1 in zip(first, last)
    )
    await asyncio.sleep(1)
    return {
        "viewers": viewers,
        "cpu_percent": 100 * (cpu1 - cpu0) / elapsed,
        "waiting_percent": 100 * (wait1 - wait0) / elapsed,
        "rss_mb": sum(machine.rss_mb(pid) for pid in pids),
        "packets_per_second": packets_per_second,
        "fps_min": min(fps) if fps else None,
        "fps_median": statistics.median(fps) if fps else None,
        "viewers_below_15fps": sum(1 for f in fps if f < 15),
        "decoded_fps": decoded_fps,
        "decoded_sizes": [b[1:] for b in decoded1],
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
        "latency_frames": len(delays),
        "latency_matched": len(delays) / arrived if arrived else None,
        "latency_paired_arrived": per_viewer,
        "publisher_kbps": (bytes1 - bytes0) * 8 / elapsed / 1000,
        "publisher_fps": (frames1 - frames0) / elapsed,
        "publisher_keyframes_per_second": (keys1 - keys0) / elapsed,
        "publisher_connected": published.connected,
        "clients_cpu_percent": 100 * (clients1 - clients0) / elapsed,
        "machine_cpu_percent": 100 * (busy1 - busy0) / elapsed,
        **probe_figures(probed),
    }


def probe_figures(probed: dict | None) -> dict:
    """The probe's headline figures for a row (all None without a probe)."""
    if probed is None:
        return dict.fromkeys(PROBE_KEYS)
    video = probed["video_us"]
    return {
        "server_p50_ms": ms(video["p50"]),
        "server_p99_ms": ms(video["p99"]),
        "server_max_ms": ms(video["max"]),
        "server_audio_p99_ms": ms(probed["audio_us"]["p99"]),
        "stalls": probed["stalls_over_5ms"],
        "stall_ms": probed["stall_total_ms"],
        "probe": probed,
    }


PROBE_KEYS = (
    "server_p50_ms",
    "server_p99_ms",
    "server_max_ms",
    "server_audio_p99_ms",
    "stalls",
    "stall_ms",
    "probe",
)


def ms(us: float | None) -> float | None:
    return us / 1000 if us is not None else None


class Escalation:
    """How far each server is taken. Within a round, a server whose viewers' median
    fps fell below --collapse-fps at some N is not taken to a larger N; a server that
    collapsed at the same N in two rounds is not taken past it in any later round
    (once could be a burst of load from elsewhere). MediaRelay collapses by design,
    with an encode per viewer, and is bounded by --reference-max instead."""

    def __init__(self, args) -> None:
        self.largest = max(args.viewers)
        self.reference_max = args.reference_max
        self.collapse_fps = args.collapse_fps
        self.collapses: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter
        )
        self.stopped: set[str] = set()

    def new_round(self) -> None:
        self.stopped.clear()

    def allows(self, name: str, n: int) -> bool:
        if name == "mediarelay":
            return n <= self.reference_max
        if name in self.stopped:
            return False
        return not any(c >= 2 for m, c in self.collapses[name].items() if m < n)

    def fail(self, name: str, n: int, error: Exception, round_: int) -> str:
        self.collapses[name][n] += 1
        self.stopped.add(name)
        return (
            f"{name}: the measurement at {n} viewers in round {round_} failed "
            f"({error!r}): not taken further this round"
        )

    def record(self, name: str, n: int, row: dict, round_: int) -> str | None:
        fps = row["fps_median"]
        if name == "mediarelay" or not n or fps >= self.collapse_fps:
            return None
        self.collapses[name][n] += 1
        self.stopped.add(name)
        return (
            f"{name}: viewers' median fps {fps:.1f} at {n} viewers in round "
            f"{round_} (collapsed there {self.collapses[name][n]} times): "
            f"not taken further this round"
        )


def _cpu_seconds(pids: list[int]) -> float:
    return sum(machine.cpu_seconds(pid) for pid in pids)


def _run_queue_seconds(pids: list[int]) -> float:
    return sum(machine.run_queue_seconds(pid) for pid in pids)


def start_servers(args, data: str) -> list:
    servers = []
    for name in args.systems:
        if name == "stage":
            command = ["-m", "stage", "--data", data, "--ice-address", "127.0.0.1"]
            command += ["--log-level", "WARNING", "--max-viewers", "100000"]
            if args.probe:
                command[:2] = ["-m", "bench.probe"]
                probe = Path(data) / "probe.json"
            else:
                probe = None
            servers.append(PythonServer("stage", command, probe))
        elif name == "workers":
            # Its own data folder: two servers on one database would hand out the
            # same visit ids.
            command = ["-m", "stage", "--workers", "2", "--data", f"{data}/workers"]
            command += ["--ice-address", "127.0.0.1", "--log-level", "WARNING"]
            command += ["--max-viewers", str(args.worker_viewers)]
            servers.append(PythonServer("workers", command))
        elif name == "mediarelay":
            servers.append(
                PythonServer("mediarelay", ["-m", "bench.mediarelay_server"])
            )
        elif name == "janus":
            servers.append(JanusServer(args.janus_event_loops))
    return servers


async def run(args) -> dict:
    netns.set_up()
    gather_on(("127.0.0.1",))
    frames = load_loop()
    started = time.monotonic()
    data = tempfile.mkdtemp(prefix="stage-bench-")
    escalation = Escalation(args)
    rows: dict[str, dict[int, list[dict]]] = {name: {} for name in args.systems}
    notes: list[str] = []
    log = SendLog()
    try:
        for round_ in range(args.rounds):
            # Fresh server processes each round: RSS at N then holds only what N and
            # the smaller counts before it left behind.
            servers = start_servers(args, tempfile.mkdtemp(dir=data))
            try:
                for server in servers:
                    await server.ready()
                escalation.new_round()
                for n in args.viewers:
                    turn = round_ % len(servers)
                    for server in servers[turn:] + servers[:turn]:
                        if not escalation.allows(server.name, n):
                            continue
                        if time.monotonic() - started > args.budget:
                            notes.append(f"budget of {args.budget:.0f} s spent")
                            raise OutOfBudget
                        note = await one_measurement(
                            server, n, round_ + 1, args, frames, log, rows, escalation
                        )
                        if note:
                            notes.append(note)
                            print(note, flush=True)
                        await asyncio.sleep(1)
            finally:
                for server in servers:
                    server.stop()
    except OutOfBudget:
        pass
    finally:
        shutil.rmtree(data, ignore_errors=True)
    return {
        "results": {
            name: summarise(by_count, args.collapse_fps)
            for name, by_count in rows.items()
        },
        "rounds": rows,
        "notes": notes,
    }


async def one_measurement(server, n, round_, args, frames, log, rows, escalation):
    """Measure `server` at `n` viewers; returns a note when it escalates no further."""
    try:
        row = await publish_and_measure(server, n, args, frames, log)
    except Exception as exc:  # noted; the run goes on without it
        logger.exception("%s at %d viewers failed", server.name, n)
        return escalation.fail(server.name, n, exc, round_)
    rows[server.name].setdefault(n, []).append(row)
    print_measurement(round_, server.name, row)
    return escalation.record(server.name, n, row, round_)


def print_measurement(round_: int, name: str, row: dict) -> None:
    print(
        f"round {round_} {name:10s} viewers {row['viewers']:3d}: "
        f"cpu {row['cpu_percent']:5.1f} %  waiting {row['waiting_percent']:5.1f} %  "
        f"{row['packets_per_second']:7.0f} packets/s  "
        f"fps min {number(row['fps_min'], '.1f')} "
        f"median {number(row['fps_median'], '.1f')}  "
        f"latency p50 {number(row['latency_p50_ms'], '.1f')} "
        f"p99 {number(row['latency_p99_ms'], '.1f')} ms  "
        f"clients {row['clients_cpu_percent']:.0f} %  "
        f"machine {row['machine_cpu_percent']:.0f} %  "
        f"publisher {row['publisher_fps']:.1f} fps "
        f"{row['publisher_keyframes_per_second']:.1f} keyframes/s "
        f"{row['publisher_kbps']:.0f} kb/s",
        flush=True,
    )
    if row.get("probe"):
        print(
            f"    in the server: video p50 {number(row['server_p50_ms'], '.2f')} "
            f"p99 {number(row['server_p99_ms'], '.1f')} "
            f"max {number(row['server_max_ms'], '.1f')} ms, "
            f"audio p99 {number(row['server_audio_p99_ms'], '.1f')} ms; "
            f"{row['stalls']} stalls > 5 ms, {row['stall_ms']:.0f} ms in all",
            flush=True,
        )


def median(runs: list[dict], key: str):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def summarise(by_count: dict[int, list[dict]], collapse_fps: float) -> list[dict]:
    """Medians over the rounds at each N in which the server held (its viewers'
    median fps at least `collapse_fps`); over all of them if it never held, and then
    the row says `collapsed`. A round in which the machine starved the server
    measures the machine, not the server's cost."""
    summary = []
    for n in sorted(by_count):
        measured = by_count[n]
        held = [r for r in measured if not n or r["fps_median"] >= collapse_fps]
        runs = held or measured
        row = {
            "viewers": n,
            "rounds": len(measured),
            "rounds_held": len(held),
            "collapsed": not held,
        }
        for key in (
            "cpu_percent",
            "waiting_percent",
            "rss_mb",
            "packets_per_second",
            "fps_median",
            "viewers_below_15fps",
            "latency_p50_ms",
            "latency_p99_ms",
            "latency_matched",
            "publisher_kbps",
            "publisher_fps",
            "publisher_keyframes_per_second",
            "clients_cpu_percent",
            "machine_cpu_percent",
            *PROBE_KEYS[:-1],
        ):
            row[key] = median(runs, key)
        row["fps_min"] = min(
            (r["fps_min"] for r in runs if r["fps_min"] is not None), default=None
        )
        decoded = [f for r in runs for f in r["decoded_fps"]]
        row["decoded_fps_min"] = min(decoded, default=None)
        row["decoded_sizes"] = sorted(
            {tuple(s) for r in runs for s in r["decoded_sizes"]}
        )
        summary.append(row)
    baseline = next((r["cpu_percent"] for r in summary if r["viewers"] == 0), None)
    for r in summary:
        n, cpu, pps = r["viewers"], r["cpu_percent"], r["packets_per_second"]
        extra = cpu - baseline if baseline is not None else None
        r["per_viewer_percent"] = extra / n if n and extra is not None else None
        r["packets_per_core_second"] = pps / (cpu / 100) if n and cpu else None
        r["marginal_packets_per_core_second"] = (
            pps / (extra / 100) if n and extra and extra > 0 else None
        )
    return summary


def ratios(results: dict[str, list[dict]]) -> list[dict]:
    """Stage's CPU per viewer over each reference's, at each N both reached."""
    stage = {r["viewers"]: r for r in results.get("stage", [])}
    out = []
    for n, mine in sorted(stage.items()):
        if not n or mine["per_viewer_percent"] is None:
            continue
        row = {"viewers": n, "stage_fps_median": mine["fps_median"]}
        for name in ("mediarelay", "janus"):
            other = next((r for r in results.get(name, []) if r["viewers"] == n), None)
            if other and other["per_viewer_percent"]:
                row[name] = mine["per_viewer_percent"] / other["per_viewer_percent"]
                row[f"{name}_fps_median"] = other["fps_median"]
        if len(row) > 2:
            out.append(row)
    return out


def number(value, fmt: str) -> str:
    return format(value, fmt) if value is not None else "-"


def print_tables(results: dict, table: list[dict], collapse_fps: float) -> None:
    print(
        "\nserver      viewers  held  CPU %  waiting %  per viewer %  RSS MB  packets/s"
        "  packets/core-s  marginal  fps min/median <15  decoded fps  latency p50/p99 ms"
        "  clients CPU %  publisher kb/s"
    )
    for name, summary in results.items():
        for r in summary:
            latency = (
                "n/a"
                if name == "mediarelay"
                else (
                    f"{number(r['latency_p50_ms'], '.1f')}/"
                    f"{number(r['latency_p99_ms'], '.1f')}"
                )
            )
            print(
                f"{name:10s}  {r['viewers']:7d}  "
                f"{r['rounds_held']:>2d}/{r['rounds']:<2d} {r['cpu_percent']:5.1f}  "
                f"{r['waiting_percent']:9.1f}  "
                f"{number(r['per_viewer_percent'], '12.2f'):>12s}  "
                f"{r['rss_mb']:6.0f}  {r['packets_per_second']:9.0f}  "
                f"{number(r['packets_per_core_second'], '14.0f'):>14s}  "
                f"{number(r['marginal_packets_per_core_second'], '8.0f'):>8s}  "
                f"{number(r['fps_min'], '.1f') + '/' + number(r['fps_median'], '.1f'):>14s}"
                f" {number(r['viewers_below_15fps'], '4.0f'):>4s}  "
                f"{number(r['decoded_fps_min'], '11.1f'):>11s}  "
                f"{latency:>18s}  "
                f"{number(r['clients_cpu_percent'], '13.0f'):>13s}  "
                f"{number(r['publisher_kbps'], '14.0f'):>14s}"
            )
    probed = [r for r in results.get("stage", []) if r.get("server_p99_ms") is not None]
    if probed:
        print(
            "\nStage, in the server (probe) beside end to end, ms:"
            "\nviewers  server p50/p99/max    end to end p50/p99  audio p99"
            "  stalls > 5 ms  stall ms"
        )
        for r in probed:
            server = "/".join(
                (
                    number(r["server_p50_ms"], ".2f"),
                    number(r["server_p99_ms"], ".1f"),
                    number(r["server_max_ms"], ".1f"),
                )
            )
            end_to_end = "/".join(
                (number(r["latency_p50_ms"], ".1f"), number(r["latency_p99_ms"], ".1f"))
            )
            print(
                f"{r['viewers']:7d}  {server:>20s}  {end_to_end:>18s}"
                f"  {number(r['server_audio_p99_ms'], '9.1f')}"
                f"  {number(r['stalls'], '13.0f')}  {number(r['stall_ms'], '8.0f')}"
            )
    if table:
        print(
            "\nviewers  Stage per viewer / MediaRelay's  / Janus's"
            "   fps median: Stage  MediaRelay  Janus"
        )
        for r in table:
            print(
                f"{r['viewers']:7d}  {number(r.get('mediarelay'), '.3f'):>31s}"
                f"  {number(r.get('janus'), '.3f'):>8s}"
                f"   {number(r['stage_fps_median'], '.1f'):>17s}"
                f"  {number(r.get('mediarelay_fps_median'), '.1f'):>10s}"
                f"  {number(r.get('janus_fps_median'), '.1f'):>5s}"
            )
        print(
            f"(a ratio where a server's viewers got under {collapse_fps:g} fps compares "
            "starved servers, not their cost)"
        )


def inner(args) -> None:
    start_machine = machine.describe()
    busy0, steal0 = machine.machine_busy()
    t0 = time.monotonic()
    outcome = asyncio.run(run(args))
    busy1, steal1 = machine.machine_busy()
    wall = time.monotonic() - t0
    results = outcome["results"]
    table = ratios(results)
    print_tables(results, table, args.collapse_fps)
    for note in outcome["notes"]:
        print(note)
    end_load = machine.load_average()
    print(
        f"\nmachine: nproc {start_machine['nproc']}, {start_machine['cpu_model']}, "
        f"load average {start_machine['load_average'][0]:.1f} -> {end_load[0]:.1f}, "
        f"whole machine busy {(busy1 - busy0) / wall:.2f} cores over {wall:.0f} s, "
        f"stolen {(steal1 - steal0) / wall:.2f}"
    )

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"relay-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "machine": {
                    **start_machine,
                    "load_average_end": end_load,
                    "busy_cores": (busy1 - busy0) / wall,
                    "stolen_cores": (steal1 - steal0) / wall,
                },
                "arguments": vars(args),
                "results": results,
                "ratios": table,
                "notes": outcome["notes"],
                "rounds": outcome["rounds"],
            },
            indent=1,
        )
    )
    print(f"\nwritten to {out.relative_to(ROOT)}")


def report(path: Path, collapse_fps: float) -> None:
    saved = json.loads(path.read_text())
    results = {
        name: summarise({int(n): runs for n, runs in by_count.items()}, collapse_fps)
        for name, by_count in saved["rounds"].items()
    }
    print_tables(results, ratios(results), collapse_fps)
    for note in saved["notes"]:
        print(note)
    machine_then = saved["machine"]
    print(
        f"\n{saved['date']}: nproc {machine_then['nproc']}, "
        f"{machine_then['cpu_model']}, load average "
        f"{machine_then['load_average'][0]:.1f} -> "
        f"{machine_then['load_average_end'][0]:.1f}, whole machine busy "
        f"{machine_then['busy_cores']:.2f} cores"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--viewers", type=int, nargs="+", default=[0, 1, 10, 50, 100, 200]
    )
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=list(DEFAULT_SYSTEMS)
    )
    parser.add_argument(
        "--worker-viewers",
        type=int,
        default=50,
        help="with --systems workers: the viewers each of the 2 workers carries",
    )
    parser.add_argument("--reference-max", type=int, default=10)
    parser.add_argument("--collapse-fps", type=float, default=15)
    parser.add_argument("--per-process", type=int, default=10)
    parser.add_argument(
        "--janus-event-loops",
        type=int,
        default=2,
        help="Janus's event_loops; 0 keeps its default of a thread per handle",
    )
    parser.add_argument(
        "--full-viewers",
        dest="light",
        action="store_false",
        help="counting viewers use aiortc's whole receive path (RTCP, NACK)",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="run Stage with bench/probe.py inside and print what the server adds",
    )
    parser.add_argument("--hard-limit", type=float, default=3600)
    parser.add_argument("--budget", type=float, help="default: hard limit - 240 s")
    parser.add_argument(
        "--report",
        metavar="JSON",
        type=Path,
        help="print the tables of an earlier run's results file, and run nothing",
    )
    args = parser.parse_args()
    if args.seconds + 4 > LOOP_SECONDS:
        # Frames are paired by their bytes from 2 s before the window to the pairing,
        # after it: a longer span sees the publisher's loop come round, pairs a
        # frame's arrival with its next send, and gives negative latencies.
        parser.error(f"--seconds must be at most {LOOP_SECONDS - 4:g}")
    if args.budget is None:
        args.budget = max(60, args.hard_limit - 240)
    if args.report:
        report(args.report, args.collapse_fps)
    elif netns.inside():
        inner(args)
    else:
        sys.exit(netns.reexec_inside("bench.relay", sys.argv[1:], args.hard_limit))


if __name__ == "__main__":
    main()
