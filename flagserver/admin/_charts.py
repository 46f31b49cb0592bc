"""Inline SVG charts drawn on the server: per arm, exposed users and each event's
conversion rate with its 95% interval (from `api.stats.stage_report`).

Presentation attributes only (no `style`), so the pages' Content-Security-Policy
needs no 'unsafe-inline'.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from markupsafe import Markup, escape

WIDTH = 860
LABEL_W = 160
VALUE_W = 190
PLOT_W = WIDTH - LABEL_W - VALUE_W - 20
ROW_H = 30
HEAD_H = 30
AXIS_H = 26
COLORS = ("#64748b", "#2563eb", "#d97706", "#059669", "#9333ea", "#db2777")


def _nice_max(value: float) -> float:
    """A round axis end at or above `value` (0.137 → 0.15; 0.6 → 0.6)."""
    if value <= 0:
        return 0.1
    exponent = math.floor(math.log10(value))
    for step in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        candidate = step * 10 ** exponent
        if candidate >= value * 1.02:
            return min(1.0, candidate)
    return 1.0


def _fmt_rate(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def _arm_label(arm: str, control: str, canary: str | None) -> str:
    if arm == control:
        return f"{arm} (control)"
    if arm == canary:
        return f"{arm} (canary)"
    return arm


def arms_in_order(report: dict[str, Any], variants: list[str]) -> list[str]:
    arms = list(report["arms"])
    return [v for v in variants if v in arms] + [a for a in arms if a not in variants]


def stage_chart(report: dict[str, Any], variants: list[str], events: list[str], chart_id: str,
                kinds: Mapping[str, str] | None = None) -> Markup:
    """One stage: a bar per arm for randomized exposed users, then per event a dot
    (the rate) and a whisker (its 95% Wilson interval) per arm, on a shared axis."""
    control = report["control"]
    canary = variants[-1]
    arms = arms_in_order(report, variants)
    if not arms:
        return Markup("")
    color = {arm: COLORS[(variants.index(arm) if arm in variants else len(variants) + i) % len(COLORS)]
             for i, arm in enumerate(arms)}
    parts: list[str] = []
    y = 0
    # Exposures.
    max_exposed = max((report["arms"][a]["randomized_exposed"] for a in arms), default=0) or 1
    parts.append(_heading(y, "Exposed users (randomized split)"))
    y += HEAD_H
    for arm in arms:
        n = report["arms"][arm]["randomized_exposed"]
        total = report["arms"][arm]["exposed"]
        width = PLOT_W * n / max_exposed
        parts.append(_label(y, _arm_label(arm, control, canary)))
        parts.append(f'<rect x="{LABEL_W}" y="{y + 7}" width="{width:.1f}" height="{ROW_H - 14}" rx="3" '
                     f'fill="{color[arm]}"/>')
        extra = f" of {total:,}" if total != n else ""
        parts.append(_value(y, f"{n:,}{extra} users"))
        y += ROW_H
    # Conversion per event.
    for event in events:
        entries = {a: report["arms"][a]["events"].get(event) for a in arms}
        uppers = [e["ci95"][1] for e in entries.values() if e and e.get("ci95")]
        rates = [e["rate"] for e in entries.values() if e and e.get("rate") is not None]
        axis_max = _nice_max(max(uppers + rates + [0.0]))
        y += 8
        what = "error rate" if (kinds or {}).get(event) == "error" else "conversion"
        parts.append(_heading(y, f"{event}: {what}, with 95% interval"))
        y += HEAD_H
        top = y
        for arm in arms:
            entry = entries[arm]
            parts.append(_label(y, _arm_label(arm, control, canary)))
            mid = y + ROW_H / 2
            parts.append(f'<line x1="{LABEL_W}" y1="{mid}" x2="{LABEL_W + PLOT_W}" y2="{mid}" stroke="#e2e8f0"/>')
            if entry is None or entry.get("rate") is None:
                parts.append(_value(y, "no users yet"))
            else:
                low, high = entry["ci95"] or (entry["rate"], entry["rate"])
                x_low, x_high = _x(low, axis_max), _x(high, axis_max)
                x_rate = _x(entry["rate"], axis_max)
                parts.append(f'<line x1="{x_low:.1f}" y1="{mid}" x2="{x_high:.1f}" y2="{mid}" '
                             f'stroke="{color[arm]}" stroke-width="3" stroke-linecap="round"/>')
                for x in (x_low, x_high):
                    parts.append(f'<line x1="{x:.1f}" y1="{mid - 6}" x2="{x:.1f}" y2="{mid + 6}" '
                                 f'stroke="{color[arm]}" stroke-width="2"/>')
                parts.append(f'<circle cx="{x_rate:.1f}" cy="{mid}" r="5.5" fill="{color[arm]}" stroke="#fff" '
                             f'stroke-width="1.5"/>')
                parts.append(_value(y, f"{_fmt_rate(entry['rate'])} [{_fmt_rate(low)}–{_fmt_rate(high)}]"))
            y += ROW_H
        # Axis with ticks.
        parts.append(f'<line x1="{LABEL_W}" y1="{y}" x2="{LABEL_W + PLOT_W}" y2="{y}" stroke="#94a3b8"/>')
        for k in range(5):
            value = axis_max * k / 4
            x = _x(value, axis_max)
            parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{y + 4}" stroke="#cbd5e1" '
                         f'stroke-dasharray="2 3"/>')
            parts.append(f'<text x="{x:.1f}" y="{y + 17}" text-anchor="middle" font-size="11" '
                         f'fill="#475569">{escape(_fmt_rate(value))}</text>')
        y += AXIS_H
    height = y + 4
    title = f"Stage at {report['rollout']}%" if not isinstance(report["rollout"], dict) else "Stage"
    summary = "; ".join(
        f"{a}: {report['arms'][a]['randomized_exposed']:,} users"
        + "".join(f", {e} {_fmt_rate((report['arms'][a]['events'].get(e) or {}).get('rate'))}" for e in events)
        for a in arms)
    svg = (f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-labelledby="{chart_id}-t {chart_id}-d" xmlns="http://www.w3.org/2000/svg" '
           f'font-family="system-ui, -apple-system, Segoe UI, Roboto, sans-serif">'
           f'<title id="{chart_id}-t">{escape(title)}</title><desc id="{chart_id}-d">{escape(summary)}</desc>'
           + "".join(parts) + "</svg>")
    return Markup(svg)


def _x(value: float, axis_max: float) -> float:
    return LABEL_W + PLOT_W * max(0.0, min(1.0, value / axis_max))


def _heading(y: float, text: str) -> str:
    return (f'<text x="0" y="{y + 20}" font-size="13" font-weight="600" fill="#0f172a">'
            f'{escape(text)}</text>')


def _label(y: float, text: str) -> str:
    return (f'<text x="{LABEL_W - 10}" y="{y + ROW_H / 2 + 4}" text-anchor="end" font-size="12" '
            f'fill="#334155">{escape(text)}</text>')


def _value(y: float, text: str) -> str:
    return (f'<text x="{LABEL_W + PLOT_W + 12}" y="{y + ROW_H / 2 + 4}" font-size="12" '
            f'fill="#0f172a">{escape(text)}</text>')
