"""Group plots for the report, drawn as plain HTML and inline SVG (no plotting library, nothing to load).

Each function takes table rows as read back from CSV (strings) and returns markup ready to embed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from html import escape

_TOTAL_CHANNELS = ("", "all", "sum", "total")


def _number(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def region_class_means(summary: Iterable[Mapping[str, str]], regions: Iterable[Mapping[str, str]],
                       ) -> dict[str, dict[str, dict[str, tuple[float, int]]]]:
    """Mean relevance_fraction per partition, region and predicted class: {partition: {region: {class: (mean, n)}}}.

    Only the map of the predicted class counts (with --target all a scan has one per class), only the total
    over channels when regions are split by channel, and each partition (builtin or atlas, mask) is kept apart:
    mixing them would count a scan's relevance twice. Rows without a ``partition`` column form one group.
    """
    predicted = {r["scan_id"]: r.get("predicted_class", "") for r in summary if r.get("predicted_class")}
    sums: dict[str, dict[str, dict[str, list[float]]]] = {}
    for row in regions:
        cls = predicted.get(row.get("scan_id", ""))
        if cls is None:
            continue
        if row.get("target_class") and row["target_class"] != cls:
            continue
        if str(row.get("channel", "")).lower() not in _TOTAL_CHANNELS:
            continue
        value = _number(row.get("relevance_fraction"))
        if value is None:
            continue
        cell = sums.setdefault(row.get("partition", ""), {}).setdefault(row.get("region_name", ""), {})
        cell.setdefault(cls, []).append(value)
    return {part: {region: {cls: (sum(v) / len(v), len(v)) for cls, v in by_cls.items()}
                   for region, by_cls in by_region.items()}
            for part, by_region in sums.items()}


def heat_table(summary: Sequence[Mapping[str, str]], regions: Iterable[Mapping[str, str]]) -> str:
    """One table per partition: regions as rows, predicted classes as columns, cells shaded by the mean."""
    means = region_class_means(summary, regions)
    if not means:
        return "<p class=\"empty\">No region rows to average.</p>"
    classes = sorted({cls for by_region in means.values() for cells in by_region.values() for cls in cells})
    parts = []
    for part in sorted(means):
        by_region = means[part]
        peak = max((abs(m) for cells in by_region.values() for m, _ in cells.values()), default=0.0) or 1.0
        # scans that have this partition: a class without masks heads the mask table with 0, not its class size
        counts = {cls: max((cells[cls][1] for cells in by_region.values() if cls in cells), default=0)
                  for cls in classes}
        head = "".join(f"<th scope=\"col\">{escape(c)}<br><small>{counts[c]} scans</small></th>" for c in classes)
        rows = []
        for region, cells in by_region.items():
            tds = []
            for cls in classes:
                if cls not in cells:
                    tds.append("<td class=\"na\">–</td>")
                    continue
                mean, n = cells[cls]
                tds.append(f"<td style=\"background:{_diverging(mean / peak)}\" title=\"{n} scans\">"
                           f"{mean:.3f}</td>")
            rows.append(f"<tr><th scope=\"row\">{escape(region)}</th>{''.join(tds)}</tr>")
        caption = f"partition: {escape(part)}" if part else "all regions"
        parts.append(f"<table class=\"heat\" data-partition=\"{escape(part)}\"><caption>{caption}</caption>"
                     f"<thead><tr><th>region</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
    return "\n".join(parts)


def _diverging(x: float) -> str:
    """A colour for x in [-1, 1]: white at 0, red for positive, blue for negative relevance."""
    x = max(-1.0, min(1.0, x))
    fade = int(round(255 * (1 - 0.7 * abs(x))))  # the darkest cell still shows its number
    return f"rgb(255,{fade},{fade})" if x >= 0 else f"rgb({fade},{fade},255)"


def histogram_svg(values: Sequence[float], *, label: str, width: int = 560, height: int = 200,
                  bins: int = 24) -> str:
    """A histogram on a log10 axis (errors span decades); exact zeros get their own bar at the left."""
    values = [v for v in (_number(v) for v in values) if v is not None]
    if not values:
        return "<p class=\"empty\">No values.</p>"
    zeros = sum(1 for v in values if v <= 0)
    logs = [math.log10(v) for v in values if v > 0]
    lo, hi = (math.floor(min(logs)), math.ceil(max(logs))) if logs else (0, 1)
    hi = max(hi, lo + 1)
    step = (hi - lo) / bins
    counts = [0] * bins
    for x in logs:
        counts[min(bins - 1, int((x - lo) / step))] += 1
    bars = [("0", zeros)] if zeros else []
    bars += [(f"1e{lo + i * step:.2g}", c) for i, c in enumerate(counts)]
    top = max(c for _, c in bars) or 1
    pad, plot_h = 30, height - 50
    bar_w = (width - 2 * pad) / len(bars)
    shapes = []
    for i, (edge, count) in enumerate(bars):
        h = plot_h * count / top
        x = pad + i * bar_w
        shapes.append(f"<rect x=\"{x:.1f}\" y=\"{10 + plot_h - h:.1f}\" width=\"{bar_w - 1:.1f}\" height=\"{h:.1f}\" "
                      f"class=\"{'zero' if edge == '0' else 'bar'}\"><title>{escape(edge)}: {count}</title></rect>")
    ticks = []
    for decade in range(lo, hi + 1):
        x = pad + (len(bars) - bins + (decade - lo) / step) * bar_w
        ticks.append(f"<text x=\"{x:.1f}\" y=\"{height - 24}\" text-anchor=\"middle\">1e{decade}</text>")
    if zeros:
        ticks.append(f"<text x=\"{pad + bar_w / 2:.1f}\" y=\"{height - 24}\" text-anchor=\"middle\">0</text>")
    return (f"<svg class=\"plot\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" "
            f"aria-label=\"{escape(label)}\">{''.join(shapes)}{''.join(ticks)}"
            f"<text x=\"{width / 2}\" y=\"{height - 6}\" text-anchor=\"middle\">{escape(label)} "
            f"({len(values)} scans, max {_fmt(max(values))})</text></svg>")


def strip_svg(groups: Mapping[str, Sequence[float]], *, label: str, width: int = 560) -> str:
    """Per group a row of dots (one per scan) on a 0..1 axis, with the group mean marked."""
    groups = {k: [v for v in (_number(x) for x in vs) if v is not None] for k, vs in groups.items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return "<p class=\"empty\">No scans with a mask.</p>"
    left, right, row_h = 130, 20, 28
    height = row_h * len(groups) + 40
    span = width - left - right
    shapes = []
    for i, (name, vs) in enumerate(sorted(groups.items())):
        y = 20 + i * row_h
        shapes.append(f"<text x=\"{left - 8}\" y=\"{y + 4}\" text-anchor=\"end\">{escape(name)} (n={len(vs)})</text>")
        shapes.append(f"<line x1=\"{left}\" x2=\"{left + span}\" y1=\"{y}\" y2=\"{y}\" class=\"axis\"/>")
        for v in vs:
            shapes.append(f"<circle cx=\"{left + span * min(max(v, 0), 1):.1f}\" cy=\"{y}\" r=\"3\" class=\"dot\"/>")
        mean = sum(vs) / len(vs)
        shapes.append(f"<rect x=\"{left + span * min(max(mean, 0), 1) - 1.5:.1f}\" y=\"{y - 9}\" width=\"3\" "
                      f"height=\"18\" class=\"mean\"><title>mean {mean:.3f}</title></rect>")
    for tick in (0, 0.25, 0.5, 0.75, 1):
        x = left + span * tick
        shapes.append(f"<text x=\"{x:.1f}\" y=\"{height - 18}\" text-anchor=\"middle\">{tick:g}</text>")
    return (f"<svg class=\"plot\" viewBox=\"0 0 {width} {height}\" width=\"{width}\" height=\"{height}\" role=\"img\" "
            f"aria-label=\"{escape(label)}\">{''.join(shapes)}<text x=\"{left + span / 2}\" y=\"{height - 4}\" "
            f"text-anchor=\"middle\">{escape(label)}</text></svg>")
