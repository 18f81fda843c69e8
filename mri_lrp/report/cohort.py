"""The report's "Cohort" section: what `mri-lrp cohort` wrote under OUT/cohort/, as one part of report.html.

The layout is an inline SVG with one linked dot per scan (a few thousand stay light), coloured by cluster or,
through the menu, by a metadata column; pictures are linked, not embedded, and load lazily.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mri_lrp.outputs import read_csv
from mri_lrp.scans.ids import safe_part

COHORT_DIR = "cohort"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
THUMBS = 4          # member overlays shown per cluster
_SIZE = 320         # one class's scatter, in px
_TABLE = ("cluster", "predicted_class", "size", "share_of_class", "relevance_outside_head", "relevance_border",
          "top_region", "flag", "why")
_SCRIPT = """(function(){var data=JSON.parse(document.getElementById('cohort-colour-data').textContent);
var pal=%s;var sel=document.getElementById('cohort-colour');if(!sel)return;
sel.addEventListener('change',function(){var col=sel.value;var seen={};
document.querySelectorAll('#cohort circle').forEach(function(c){var v=col?(data[col]||{})[c.dataset.scan]||'':
c.dataset.cluster;if(!(v in seen))seen[v]=Object.keys(seen).length;c.setAttribute('fill',v===''?'#ccc':
pal[seen[v]%%pal.length]);});});})();"""


def _href(path: str) -> str:
    return quote(path, safe="/._-~")


def _scatter(class_name: str, members: list[dict[str, str]], pages: Mapping[str, Mapping[str, Any]],
             clusters: list[str]) -> str:
    xs = [float(m["x"]) for m in members]
    ys = [float(m["y"]) for m in members]
    lo_x, hi_x, lo_y, hi_y = min(xs), max(xs), min(ys), max(ys)
    span_x, span_y = (hi_x - lo_x) or 1.0, (hi_y - lo_y) or 1.0
    dots = []
    for m, x, y in zip(members, xs, ys, strict=True):
        px = 10 + (x - lo_x) / span_x * (_SIZE - 20)
        py = _SIZE - 10 - (y - lo_y) / span_y * (_SIZE - 20)
        colour = PALETTE[clusters.index(m["cluster"]) % len(PALETTE)]
        page = (pages.get(m["scan_id"]) or {}).get("_page", "")
        dot = (f"<circle cx=\"{px:.1f}\" cy=\"{py:.1f}\" r=\"4\" fill=\"{colour}\" "
               f"data-scan=\"{escape(m['scan_id'])}\" data-cluster=\"{escape(m['cluster'])}\">"
               f"<title>{escape(m['scan_id'])} · {escape(m['cluster'])}</title></circle>")
        dots.append(f"<a href=\"{page}\">{dot}</a>" if page else dot)
    legend = " ".join(f"<span style=\"color:{PALETTE[i % len(PALETTE)]}\">●</span> {escape(c)}"
                      for i, c in enumerate(clusters))
    return (f"<figure><svg width=\"{_SIZE}\" height=\"{_SIZE}\" viewBox=\"0 0 {_SIZE} {_SIZE}\" role=\"img\" "
            f"aria-label=\"layout of {escape(class_name)}\"><rect width=\"100%\" height=\"100%\" fill=\"none\" "
            f"stroke=\"#ccc\"/>{''.join(dots)}</svg><figcaption>{escape(class_name)}: {legend}</figcaption></figure>")


def cohort_section(out: Path, pages: Mapping[str, Mapping[str, Any]]) -> str:
    """The section's HTML, or "" when the run has no cohort analysis. ``pages``: scan_id -> the report's row
    for the scan (its page ``_page`` and first overlay ``_thumb``, relative to OUT)."""
    folder = out / COHORT_DIR
    if not (folder / "members.csv").is_file() or not (folder / "clusters.csv").is_file():
        return ""
    members = read_csv(folder / "members.csv")
    clusters = read_csv(folder / "clusters.csv")
    try:
        info = json.loads((folder / "cohort.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    columns = [c for c in info.get("metadata_columns", []) if members and c in members[0]]
    by_class: dict[str, list[dict[str, str]]] = {}
    for m in members:
        by_class.setdefault(m["predicted_class"], []).append(m)
    names = {c: [r["cluster"] for r in clusters if r["predicted_class"] == c] for c in by_class}
    scatters = "".join(_scatter(c, ms, pages, names[c]) for c, ms in sorted(by_class.items()))
    options = "".join(f"<option value=\"{escape(c)}\">{escape(c)}</option>" for c in columns)
    colour_data = {c: {m["scan_id"]: m.get(c, "") for m in members} for c in columns}
    head = "".join(f"<th scope=\"col\">{escape(c)}</th>" for c in _TABLE)
    body = "".join(
        f"<tr class=\"{'flagged' if r.get('flag') == 'true' else ''}\">"
        + "".join(f"<td>{escape(r.get(c, ''))}</td>" for c in _TABLE) + "</tr>" for r in clusters)
    per_cluster = []
    for r in clusters:
        name = r["cluster"]
        inside = [m["scan_id"] for m in members if m["cluster"] == name][:THUMBS]
        shown = [(s, pages.get(s) or {}) for s in inside]
        thumbs = "".join(f"<a href=\"{p.get('_page', '')}\"><img src=\"{p['_thumb']}\" alt=\"{escape(s)}\" "
                         "loading=\"lazy\" width=\"160\"></a>" for s, p in shown if p.get("_thumb"))
        mark = " (flagged)" if r.get("flag") == "true" else ""
        per_cluster.append(
            f"<details><summary>{escape(name)}{mark}: {escape(r.get('size', ''))} scans</summary>"
            f"<p>{escape(r.get('why', '')) or 'no flag'}</p>"
            f"<img src=\"{_href(f'{COHORT_DIR}/cluster_{safe_part(name)}_mean.png')}\" "
            f"alt=\"mean map of {escape(name)}\" loading=\"lazy\"><div class=\"overlays\">{thumbs}</div></details>")
    groups = []
    for class_name in sorted(by_class):
        try:
            t = json.loads((folder / f"group_{safe_part(class_name)}_t.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            t = {}
        threshold = t.get("t_threshold")
        said = (f"|t| > {threshold:.3g} ({t.get('permutations')} sign flips, family-wise 5%): "
                f"{t.get('voxels_above')} voxels" if threshold is not None else t.get("note", "no threshold"))
        stem = f"{COHORT_DIR}/group_{safe_part(class_name)}"
        groups.append(f"<li>{escape(class_name)}: <a href=\"{_href(stem + '_mean.nii.gz')}\">mean</a>, "
                      f"<a href=\"{_href(stem + '_t.nii.gz')}\">t map</a>; {escape(said)}</li>")
    analysed = {m["scan_id"] for m in members}
    stale = ("<p class=\"warning\">The analysis does not cover the run's current scans (it was made before "
             f"scans were added or redone): run <code>mri-lrp cohort {escape(out.name)}</code> again.</p>"
             if analysed - set(pages) or len(set(pages) - analysed) > len(info.get("skipped") or []) else "")
    menu = (f"<label>Colour by <select id=\"cohort-colour\"><option value=\"\">cluster</option>{options}</select>"
            "</label>") if columns else ""
    return f"""<section id="cohort"><h2>Cohort</h2>
<p class="hint">From <code>mri-lrp cohort</code>: the relevance maps of each predicted class clustered by spectral
relevance analysis. <strong>Flags are candidates for a person to look at</strong>, not proof of a shortcut: open
the cluster's scans and read its <em>why</em>. Click a dot for the scan's page. Files: cohort/members.csv,
cohort/clusters.csv.</p>
{stale}{menu}<div class="overlays">{scatters}</div>
<h3>Eigengap</h3><img src="{COHORT_DIR}/eigengap.png" alt="eigenvalues per class" loading="lazy">
<h3>Clusters</h3><table class="data cohort-clusters"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{''.join(per_cluster)}
<h3>Group maps</h3><ul>{''.join(groups)}</ul>
<script type="application/json" id="cohort-colour-data">{_json(colour_data)}</script>
<script>{_SCRIPT % json.dumps(list(PALETTE))}</script></section>"""


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")
