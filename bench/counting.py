"""What counting costs per viewer join and leave, on the event loop the relay shares.

    .venv/bin/python -m bench.counting [--visits 2000] [--batch 50] [--rounds 5]

Three ways to record one visit (a join, then a leave) in a real SQLite file:

- baseline: one autocommit INSERT at the join and one UPDATE at the leave, as Stage
  did before the audience batched its writes (the same statements, on the same table);
- on the join/leave path now: `Audience.open_watch` and `close_watch`, memory only;
- the flush: what one background write of `--batch` visits costs, per visit; and how
  long that one write holds the loop.

Then reading the numbers of a performance with `--visits` rows. Rounds alternate;
medians are printed, with each figure as a ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from stage.audience import BY_VIEWER, Audience
from stage.store import Store


def per_visit_baseline(store: Store, performance_id: str, visits: int) -> float:
    db = store._db  # the store's own connection, as the old path used it
    start = time.perf_counter()
    for n in range(visits):
        cursor = db.execute(
            "INSERT INTO watches (performance_id, viewer, started_at) VALUES (?, ?, ?)",
            (performance_id, f"viewer{n}", time.time()),
        )
        db.execute(
            "UPDATE watches SET ended_at=? WHERE id=? AND ended_at IS NULL",
            (time.time(), cursor.lastrowid),
        )
    return (time.perf_counter() - start) / visits


def per_visit_now(audience: Audience, performance_id: str, visits: int, batch: int):
    on_path = flushing = 0.0
    longest_flush = 0.0
    done = 0
    while done < visits:
        size = min(batch, visits - done)
        start = time.perf_counter()
        for n in range(size):
            watch = audience.open_watch(performance_id, f"viewer{done + n}")
            audience.close_watch(watch, BY_VIEWER)
        middle = time.perf_counter()
        audience.flush()
        end = time.perf_counter()
        on_path += middle - start
        flushing += end - middle
        longest_flush = max(longest_flush, end - middle)
        done += size
    return on_path / visits, flushing / visits, longest_flush


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visits", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        # Two files: the audience hands out watch ids itself (it is the only writer).
        store = Store(Path(folder) / "baseline.db", 3.0)
        stage, _ = store.create_stage("Bench")
        counted = Store(Path(folder) / "stage.db", 3.0)
        audience = Audience(counted.path, 3.0)
        counted._db.execute(
            "INSERT INTO stages (id, name, key_hash, created_at) VALUES (?, ?, ?, 0)",
            (stage.id, stage.name, stage.key_hash),
        )
        figures: dict[str, list[float]] = {
            "baseline": [],
            "path": [],
            "flush": [],
            "longest": [],
            "read": [],
        }
        for _ in range(args.rounds):
            old = store.start_performance(stage.id, time.time())
            figures["baseline"].append(per_visit_baseline(store, old, args.visits))
            new = counted.start_performance(stage.id, time.time())
            path_cost, flush_cost, longest = per_visit_now(
                audience, new, args.visits, args.batch
            )
            figures["path"].append(path_cost)
            figures["flush"].append(flush_cost)
            figures["longest"].append(longest)
            start = time.perf_counter()
            audience.numbers([new])
            figures["read"].append(time.perf_counter() - start)
        audience.flush()
        store.close()
        counted.close()

    median = {name: statistics.median(values) for name, values in figures.items()}
    base = median["baseline"]

    def line(label: str, seconds: float, ratio: bool = True) -> None:
        text = f"{label:<58} {seconds * 1e6:9.1f} µs"
        if ratio:
            text += f"   {seconds / base:6.3f} x baseline"
        print(text)

    print(
        f"{args.visits} visits per round, flushes of {args.batch} visits,"
        f" {args.rounds} rounds, medians"
    )
    line("baseline: autocommit INSERT + UPDATE per visit", base)
    line("now, on the join/leave path (memory only), per visit", median["path"])
    line("now, background flush, per visit", median["flush"])
    line("now, both together, per visit", median["path"] + median["flush"])
    line(f"longest single flush ({args.batch} visits)", median["longest"], False)
    line(
        f"reading one performance's numbers ({args.visits} rows)", median["read"], False
    )


if __name__ == "__main__":
    main()
