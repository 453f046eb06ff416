"""A performance's chart: watching-now over the show's time, drawn as SVG on the server.

The page shows it as an image, so it needs no script and holds under the strict CSP.
Times on it are counted from the start of the show (0:00), which reads the same in
every time zone. Everything written into the SVG is a number or our own text.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 40, 16, 30, 28
# Seconds between time marks, the first that gives at most MAX_TICKS of them.
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
MAX_TICKS = 7
# Moments of the peak named in the chart's title (read out, not drawn).
MAX_PEAK_MOMENTS = 3

INK = "#a79db9"
GRID = "#2d2640"
LINE = "#ffb547"
PEAK = "#ff3b5c"
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"


def clock(seconds: float) -> str:
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}"


def peak_moments(
    points: list[tuple[float, int]], start: float, peak: int
) -> list[float]:
    """Seconds into the show at which watching-now rose to its peak."""
    if peak <= 0:
        return []
    moments, previous = [], 0
    for at, level in points:
        if level == peak and previous != peak:
            moments.append(max(0.0, at - start))
        previous = level
    return moments


def render(points: list[tuple[float, int]], start: float, end: float, peak: int) -> str:
    """The chart of `points` (moment, watching from then on) over [start, end]."""
    span = max(end - start, 1.0)
    top = max(peak, 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: float) -> float:
        return LEFT + plot_w * min(max(at - start, 0.0), span) / span

    def y(level: int) -> float:
        return TOP + plot_h * (1 - level / top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}"'
        f' width="{WIDTH}" height="{HEIGHT}" role="img" font-family="{FONT}"'
        f' font-size="12" fill="{INK}">'
    ]
    moments = peak_moments(points, start, peak)
    summary = (
        f"peak {peak} at {', '.join(clock(m) for m in moments[:MAX_PEAK_MOMENTS])}"
        if moments
        else "nobody watched"
    )
    parts.append(f"<title>{escape(f'Watching now over the show: {summary}')}</title>")

    # level lines and their numbers
    levels = sorted({0, top} | ({top // 2} if top >= 4 else set()))
    for level in levels:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(level):.1f}"'
            f' y2="{y(level):.1f}" stroke="{GRID}"/>'
        )
        parts.append(
            f'<text x="{LEFT - 6}" y="{y(level) + 4:.1f}" text-anchor="end">'
            f"{level}</text>"
        )

    # time marks
    step = next((s for s in TICK_STEPS if span / s <= MAX_TICKS), TICK_STEPS[-1])
    mark = 0
    while mark <= span + 1e-9:
        at_x = LEFT + plot_w * mark / span
        parts.append(
            f'<line x1="{at_x:.1f}" x2="{at_x:.1f}" y1="{TOP + plot_h}"'
            f' y2="{TOP + plot_h + 4}" stroke="{INK}"/>'
        )
        parts.append(
            f'<text x="{at_x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
            f"{clock(mark)}</text>"
        )
        mark += step

    # the steps: flat while nobody joins or leaves, a straight rise or fall when one does
    path = [f"M{x(start):.1f},{y(0):.1f}"]
    for at, level in points:
        path.append(f"H{x(at):.1f}V{y(level):.1f}")
    path.append(f"H{x(end):.1f}")
    line = "".join(path)
    parts.append(
        f'<path d="{line}V{y(0):.1f}Z" fill="{LINE}" fill-opacity="0.18"'
        ' stroke="none"/>'
    )
    parts.append(
        f'<path d="{line}" fill="none" stroke="{LINE}" stroke-width="2"'
        ' stroke-linejoin="round"/>'
    )

    # peaks: a dot where each rise to the peak happened; only the first is labelled,
    # since every label would say the same and they would run into each other
    for moment in moments:
        px, py = x(start + moment), y(peak)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{PEAK}"/>')
    if moments:
        first = moments[0]
        px, py = x(start + first), y(peak)
        anchor = "end" if px > WIDTH - RIGHT - 100 else "start"
        dx = -6 if anchor == "end" else 6
        parts.append(
            f'<text x="{px + dx:.1f}" y="{py - 7:.1f}" text-anchor="{anchor}"'
            f' fill="{PEAK}" font-weight="600">peak {peak} at {clock(first)}</text>'
        )
    else:
        parts.append(
            f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}"'
            ' text-anchor="middle">Nobody watched this performance.</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
