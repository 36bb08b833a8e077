"""Charts as inline SVG, drawn on the server: no chart library to vendor, no script to run, nothing fetched.

Each chart is a `<figure>` with an `<svg role="img">` whose colours come from CSS classes (`s0`..`s7`), so
the page's stylesheet themes them and the Content-Security-Policy needs no inline styles. Every label is
escaped; a chart with no data says so instead of drawing empty axes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from markupsafe import Markup, escape

Series = Mapping[str, Sequence[float | None]]
Fmt = Callable[[float], str]

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 24, 12, 28
TICKS = 5  # horizontal grid intervals: a 1-2-5 axis top splits into round steps
CHAR_PX = 6.5  # about one tick-label character
PALETTE = 8


def num(value: float) -> str:
    """A short tick label: 0.25, 12, 1.2k, 3.4M."""
    size = abs(value)
    if size >= 1e6:
        return f"{value / 1e6:.1f}M"
    if size >= 1e3:
        return f"{value / 1e3:.1f}k"
    if size >= 10 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.3g}"


def pct(value: float) -> str:
    return f"{value * 100:.0f}%"


def clock(ts: float) -> str:
    return time.strftime("%H:%M", time.localtime(ts))


def day_clock(ts: float) -> str:
    return time.strftime("%d %b %H:%M", time.localtime(ts))


def _nice_max(value: float) -> float:
    """The axis top: the data's maximum rounded up to 1, 2 or 5 times a power of ten."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def _empty(title: str, note: str) -> Markup:
    return Markup(
        '<figure class="chart empty"><figcaption>{}</figcaption><p class="muted">{}</p></figure>'
    ).format(title, note)


def _line(cls: str, x1: float, y1: float, x2: float, y2: float, note: str = "") -> str:
    tip = f"<title>{escape(note)}</title>" if note else ""
    return f'<line class="{cls}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}">{tip}</line>'


def _frame(
    title: str, body: list[str], legend: Sequence[str], y_max: float, y_fmt: Fmt, below: int = 0
) -> Markup:
    """Axes, grid, the plotted body and a legend, as one figure; `below`: room for slanted x labels."""
    plot_h = HEIGHT - TOP - BOTTOM
    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT + below}" role="img" aria-label="{escape(title)}" '
        'preserveAspectRatio="xMidYMid meet">',
        f"<title>{escape(title)}</title>",
    ]
    for i in range(TICKS + 1):
        y = TOP + plot_h * i / TICKS
        value = y_max * (TICKS - i) / TICKS
        parts.append(_line("grid", LEFT, y, WIDTH - RIGHT, y))
        tick = escape(y_fmt(value))
        parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
    parts.extend(body)
    parts.append(_line("axis", LEFT, HEIGHT - BOTTOM, WIDTH - RIGHT, HEIGHT - BOTTOM))
    parts.append("</svg>")
    keys = "".join(
        f'<li><span class="swatch s{i % PALETTE}"></span>{escape(name)}</li>' for i, name in enumerate(legend)
    )
    legend_html = f'<ul class="legend">{keys}</ul>' if keys else ""
    caption = f"<figcaption>{escape(title)}</figcaption>"
    return Markup(f'<figure class="chart">{caption}{"".join(parts)}{legend_html}</figure>')


def _x_ticks(xs: Sequence[float], x_of: Callable[[int], float], x_fmt: Fmt, count: int = 6) -> list[str]:
    if not xs:
        return []
    step = max(1, math.ceil(len(xs) / count))
    return [
        f'<text class="tick" x="{x_of(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
        f"{escape(x_fmt(xs[i]))}</text>"
        for i in range(0, len(xs), step)
    ]


def bars(
    title: str,
    xs: Sequence[float] | Sequence[str],
    series: Series,
    *,
    stacked: bool = True,
    x_fmt: Fmt = clock,
    y_fmt: Fmt = num,
    y_max: float | None = None,
    empty: str = "no requests in this window",
) -> Markup:
    """Bars per x (a time bucket or a category), one colour per series, stacked or side by side."""
    names = list(series)
    if not xs or not names or not any(v for values in series.values() for v in values if v):
        return _empty(title, empty)
    n = len(xs)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    column = [[float(series[name][i] or 0.0) for name in names] for i in range(n)]
    top = y_max or _nice_max(max(sum(c) if stacked else max(c) for c in column))
    slot = plot_w / n
    width = max(1.0, slot * 0.8 / (1 if stacked else len(names)))
    body: list[str] = []
    for i, values in enumerate(column):
        base = 0.0
        for k, value in enumerate(values):
            if value <= 0:
                continue
            h = plot_h * min(value, top) / top
            x = LEFT + slot * i + slot * 0.1 + (0 if stacked else k * width)
            y = TOP + plot_h - h - (plot_h * base / top if stacked else 0)
            label = f"{_label(xs[i], x_fmt)} {names[k]}: {y_fmt(value)}"
            body.append(
                f'<rect class="s{k % PALETTE}" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}">'
                f"<title>{escape(label)}</title></rect>"
            )
            if stacked:
                base += value
    below = 0
    if isinstance(xs[0], str):
        longest = max(len(str(x)) for x in xs) * CHAR_PX
        slant = longest > slot  # labels that would overlap are slanted, and the figure grows below
        below = int(longest * 0.5) if slant else 0
        for i, category in enumerate(xs):
            cx, cy = LEFT + slot * (i + 0.5), HEIGHT - BOTTOM + 16
            turn = f' transform="rotate(-30 {cx:.1f} {cy})"' if slant else ""
            anchor = "end" if slant else "middle"
            text = escape(str(category))
            body.append(
                f'<text class="tick" x="{cx:.1f}" y="{cy}" text-anchor="{anchor}"{turn}>{text}</text>'
            )
    else:
        body.extend(_x_ticks([float(x) for x in xs], lambda i: LEFT + slot * (i + 0.5), x_fmt))
    legend = names if len(names) > 1 or not isinstance(xs[0], str) else []
    return _frame(title, body, legend, top, y_fmt, below)


def lines(
    title: str,
    xs: Sequence[float],
    series: Series,
    *,
    x_fmt: Fmt = clock,
    y_fmt: Fmt = num,
    y_max: float | None = None,
    x_range: tuple[float, float] | None = None,
    reference: tuple[str, float] | None = None,
    diagonal: bool = False,
    marker: float | None = None,
    empty: str = "no data in this window",
) -> Markup:
    """Lines over x (missing points break the line), with an optional horizontal reference (a budget cap),
    the y = x diagonal (a reliability curve) and a vertical marker (the current threshold)."""
    names = list(series)
    values = [v for s in series.values() for v in s if v is not None]
    if not xs or not values:
        return _empty(title, empty)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    top = y_max or _nice_max(max(values + ([reference[1]] if reference else [])))
    lo, hi = x_range or (min(xs), max(xs))
    span = (hi - lo) or 1.0

    def px(x: float) -> float:
        return LEFT + plot_w * (x - lo) / span

    def py(y: float) -> float:
        return TOP + plot_h - plot_h * min(max(y, 0.0), top) / top

    body: list[str] = []
    if diagonal:
        body.append(_line("reference", px(lo), py(lo), px(hi), py(hi), "perfect calibration"))
    if reference is not None:
        name, level = reference
        body.append(_line("reference", LEFT, py(level), WIDTH - RIGHT, py(level), f"{name}: {y_fmt(level)}"))
        body.append(
            f'<text class="tick ref" x="{WIDTH - RIGHT - 4}" y="{py(level) - 4:.1f}" text-anchor="end">'
            f"{escape(name)}</text>"
        )
    if marker is not None:
        body.append(_line("marker", px(marker), TOP, px(marker), TOP + plot_h, f"now: {x_fmt(marker)}"))
    for k, name in enumerate(names):
        segments: list[list[str]] = [[]]
        for x, y in zip(xs, series[name], strict=False):
            if y is None:
                segments.append([])
                continue
            segments[-1].append(f"{px(x):.1f},{py(y):.1f}")
            body.append(
                f'<circle class="s{k % PALETTE}" cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5">'
                f"<title>{escape(f'{x_fmt(x)} {name}: {y_fmt(y)}')}</title></circle>"
            )
        body.extend(
            f'<polyline class="line s{k % PALETTE}" points="{" ".join(points)}"/>'
            for points in segments
            if len(points) > 1
        )
    # Over a fixed range (a probability), round ticks; over time, ticks at the data's own points.
    ticks = [lo + span * i / TICKS for i in range(TICKS + 1)] if x_range else list(xs)
    body.extend(_x_ticks(ticks, lambda i: px(ticks[i]), x_fmt))
    return _frame(title, body, names, top, y_fmt)


def _label(x: float | str, x_fmt: Fmt) -> str:
    return x if isinstance(x, str) else x_fmt(x)
