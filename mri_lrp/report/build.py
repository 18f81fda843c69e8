"""Build `OUT/report.html` and one page per scan from a finished run's files.

Everything the pages need is under OUT: the tables are embedded in the page as JSON, the scripts and styles are
copied to `OUT/report/assets/`, overlays are linked where the run wrote them and each scan's viewer data is a
script beside its files (see preview.py). So the report opens from disk, with no server and no network, and
moves with the folder. The summary table and the gallery are drawn by script a page at a time, so a run of
thousands of scans loads as fast as one of ten.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mri_lrp import __version__
from mri_lrp.errors import SettingsError
from mri_lrp.outputs import DONE_MARKER, atomic_write_text, read_csv
from mri_lrp.report.cohort import cohort_section
from mri_lrp.report.folds import fold_section
from mri_lrp.report.plots import heat_table, histogram_svg, strip_svg
from mri_lrp.report.preview import PREVIEW_NAME

REPORT_NAME = "report.html"
REPORT_DIR = "report"
ASSETS = ("report.css", "report.js", "scan.js", "niivue.umd.js", "LICENSE-niivue.txt")
#: Summary columns the table shows (when the run has them), with how to sort them.
TABLE_COLUMNS = (
    ("scan_id", "scan", "text"), ("predicted_class", "predicted", "text"), ("predicted_prob", "probability", "num"),
    ("target_class", "target", "text"), ("conservation_error", "conservation error", "num"),
    ("relevance_mass_accuracy", "mass accuracy", "num"), ("pointing_game", "pointing game", "text"),
    ("mask_volume_ml", "mask ml", "num"), ("top_region", "top region", "text"),
    ("fold_vote", "fold vote", "num"), ("map_agreement", "fold agreement", "num"),
    ("fitness", "input fitness", "text"),
    ("warnings", "warnings", "text"), ("status", "status", "text"), ("source", "source", "text"),
)
_MASK_COLUMNS = ("relevance_mass_accuracy", "pointing_game", "mask_volume_ml")
_FOLD_COLUMNS = ("fold_vote", "map_agreement")  # a fold ensemble's
_REGION_COLUMNS = ("partition", "channel", "target_class", "fold", "region_name", "voxels", "volume_ml",
                   "relevance_sum", "relevance_fraction", "relevance_density", "rank")


def _table(path: Path) -> list[dict[str, str]]:
    return read_csv(path) if path.is_file() else []


def _json_for_script(value: Any) -> str:
    """JSON safe inside a <script> element (no `</script>` or `<!--` can end it early)."""
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e")


def _href(path: str) -> str:
    return quote(path.replace(os.sep, "/"), safe="/._-~")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _scan_page_name(scan_id: str) -> str:
    return f"{scan_id}.html"


def _scan_files(out: Path, scan_id: str) -> list[str]:
    """The files a scan's done marker lists, relative to OUT (a missing or broken marker lists none)."""
    folder = out / "scans" / scan_id
    try:
        marker = json.loads((folder / DONE_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(marker, dict):
        return []
    files = []
    for name in marker.get("files", []):
        path = Path(os.path.normpath(folder / name))  # BIDS files sit outside the folder
        try:
            files.append(path.relative_to(out).as_posix())
        except ValueError:
            continue  # a listed file outside OUT is nothing the report may link to
    return files


def _write_page(path: Path, text: str) -> None:
    """Write a scan page unless it already holds ``text``; renamed into place but not fsynced.

    A page is derived from the run's files and rebuilt by `mri-lrp report`, so thousands of fsyncs (most of the
    time a large report takes) buy nothing; an unchanged page is not rewritten at all.
    """
    data = text.encode("utf-8")
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return
    except OSError:
        pass
    _write_via_tmp(path, data)


def _write_via_tmp(path: Path, data: bytes) -> None:
    """``data`` into ``path`` by a rename; a write that fails (a full disk) leaves no temporary file."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def copy_assets(target: Path) -> None:
    """Copy the page scripts, styles and the vendored viewer to ``target`` (skipping ones already there)."""
    target.mkdir(parents=True, exist_ok=True)
    source = resources.files("mri_lrp.report") / "assets"
    for name in ASSETS:
        data = (source / name).read_bytes()
        dest = target / name
        if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
            continue
        _write_via_tmp(dest, data)


def write_report(out: Path) -> Path:
    """Write OUT/report.html and OUT/report/ from the run's tables and files; returns the page's path."""
    out = Path(out)
    summary_path = out / "summary.csv"
    if not summary_path.is_file() and not (out / "failures.csv").is_file():
        raise SettingsError(f"{out}: no summary.csv or failures.csv here; is it a finished run's output folder?"
                            " (a sharded run's tables are under parts/: merge them first)")
    try:
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        run = {}
    summary = _table(summary_path)
    failures = _table(out / "failures.csv")
    skipped = _table(out / "skipped.csv")
    regions = _table(out / "regions.csv")
    report_dir = out / REPORT_DIR
    copy_assets(report_dir / "assets")
    (report_dir / "scans").mkdir(parents=True, exist_ok=True)

    by_scan: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in regions:
        by_scan[row.get("scan_id", "")].append(row)
    folds_by_scan: dict[str, list[dict[str, str]]] = defaultdict(list)  # a fold ensemble's folds.csv
    for row in _table(out / "folds.csv"):
        folds_by_scan[row.get("scan_id", "")].append(row)
    rows = []
    ids = [r.get("scan_id", "") for r in summary]
    for n, row in enumerate(summary):
        scan_id = row.get("scan_id", "")
        files = _scan_files(out, scan_id)
        overlays = [f for f in files if f.endswith(".png")]
        page = f"{REPORT_DIR}/scans/{_scan_page_name(scan_id)}"
        rows.append({**{k: row.get(k, "") for k, _, _ in TABLE_COLUMNS}, "_page": _href(page),
                     "_thumb": _href(overlays[0]) if overlays else ""})
        neighbours = (ids[n - 1] if n else None, ids[n + 1] if n + 1 < len(ids) else None)
        html = scan_page(out, row, files, by_scan.get(scan_id, []), neighbours, folds_by_scan.get(scan_id, []))
        _write_page(report_dir / "scans" / _scan_page_name(scan_id), html)
    page = out / REPORT_NAME
    atomic_write_text(page, main_page(out, run, summary, rows, failures, skipped, regions))
    return page


def _columns(summary: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """The table's columns: mask metrics only when some scan has a mask, no column the run lacks."""
    present = set(summary[0]) if summary else {c for c, _, _ in TABLE_COLUMNS}
    has_mask = any(r.get("relevance_mass_accuracy") not in (None, "") for r in summary)
    has_folds = any(r.get("folds") not in (None, "") for r in summary)
    return [{"key": key, "label": label, "type": kind} for key, label, kind in TABLE_COLUMNS
            if key in present and (has_mask or key not in _MASK_COLUMNS) and (has_folds or key not in _FOLD_COLUMNS)]


def _kv_table(items: Mapping[str, Any], cls: str = "kv") -> str:
    cells = []
    for key, value in items.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        cells.append(f"<tr><th scope=\"row\">{escape(str(key))}</th><td>{escape('' if value is None else str(value))}"
                     "</td></tr>")
    return f"<table class=\"{cls}\"><tbody>{''.join(cells)}</tbody></table>"


def _rows_table(rows: Sequence[Mapping[str, str]], columns: Sequence[str], cls: str, empty: str) -> str:
    if not rows:
        return f"<p class=\"empty\">{escape(empty)}</p>"
    head = "".join(f"<th scope=\"col\">{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(r.get(c, '')))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table class=\"{cls}\"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_section(run: Mapping[str, Any]) -> str:
    if not run:
        return "<p class=\"empty\">No run.json in this folder.</p>"
    facts = {"version": run.get("version", ""), "started": run.get("started", ""), "device": run.get("device", ""),
             "fingerprint": run.get("fingerprint", "")}
    if run.get("merged"):
        facts["merged"] = (run.get("merge") or {}).get("finished", "yes")
    if run.get("interrupted"):
        facts["interrupted"] = run["interrupted"]
    checkpoint = run.get("checkpoint") or {}
    parts = [_kv_table({k: v for k, v in facts.items() if v not in ("", None)})]
    if run.get("counts"):
        parts.append(f"<h3>Counts</h3>{_kv_table(run['counts'])}")
    if checkpoint:
        parts.append(f"<h3>Model</h3>{_kv_table(checkpoint)}")
    if run.get("settings"):
        parts.append(f"<details><summary>Settings</summary>{_kv_table(run['settings'])}</details>")
    if run.get("versions"):
        parts.append(f"<details><summary>Versions</summary>{_kv_table(run['versions'])}</details>")
    if run.get("seconds"):
        parts.append(f"<details><summary>Timings (s)</summary>{_kv_table(run['seconds'])}</details>")
    if run.get("warnings"):
        parts.append(f"<h3>Merge warnings</h3><ul>{''.join(f'<li>{escape(str(w))}</li>' for w in run['warnings'])}"
                     "</ul>")
    return "\n".join(parts)


def _group_section(summary: Sequence[Mapping[str, str]], regions: Sequence[Mapping[str, str]]) -> str:
    errors = [r.get("conservation_error", "") for r in summary]
    parts = ["<h3>Mean relevance fraction per region and predicted class</h3>", heat_table(summary, regions),
             "<h3>Conservation error</h3>", histogram_svg(errors, label="conservation error (log scale)")]
    with_mask = [r for r in summary if r.get("relevance_mass_accuracy") not in (None, "")]
    if with_mask:
        groups: dict[str, list[str]] = defaultdict(list)
        for r in with_mask:
            groups[r.get("predicted_class", "")].append(r["relevance_mass_accuracy"])
        parts += ["<h3>Relevance mass accuracy per predicted class</h3>",
                  strip_svg(groups, label="share of positive relevance inside the mask")]
    return "\n".join(parts)


def _evaluation_section(out: Path) -> str:
    """`mri-lrp evaluate` run into this folder: its ranking of the rules and its curve plots."""
    ranking = _table(out / "ranking.csv")
    if not ranking or not (out / "faithfulness.csv").is_file():
        return ""
    columns = ["rule", "scans", "abpc", "aopc_morf", "aopc_lerf", "morf_minus_random", "relevance_mass_accuracy",
               "sanity_spearman_abs", "survives_randomisation"]
    plots = "".join(f"<figure><img src=\"{_href(name)}\" alt=\"{escape(caption)}\" loading=\"lazy\">"
                    f"<figcaption>{escape(caption)}</figcaption></figure>"
                    for name, caption in (("curves.png", "mean perturbation curves per rule"),
                                          ("sanity.png", "similarity to the trained model's maps as layers are "
                                                         "randomised"))
                    if (out / name).is_file())
    return ("<section id=\"evaluation\"><h2>Rule evaluation</h2><p class=\"hint\">From <code>mri-lrp evaluate"
            "</code>: rules best first by ABPC (area between the LeRF and MoRF curves); a rule whose maps survive "
            "randomisation is ranked last. Per-scan numbers in faithfulness.csv, curves.csv and sanity.csv.</p>"
            f"{_rows_table(ranking, columns, 'data ranking', 'No rule evaluated.')}{plots}</section>")


def _page(title: str, body: str, assets: str, scripts: Sequence[str] = ()) -> str:
    tags = "".join(f"<script src=\"{_href(s)}\"></script>" for s in scripts)
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<meta name=\"generator\" content=\"mri-lrp {escape(__version__)}\">"
            f"<title>{escape(title)}</title><link rel=\"stylesheet\" href=\"{_href(assets)}/report.css\"></head>"
            f"<body>{body}{tags}</body></html>\n")


def main_page(out: Path, run: Mapping[str, Any], summary: Sequence[Mapping[str, str]], rows: list[dict],
              failures: Sequence[Mapping[str, str]], skipped: Sequence[Mapping[str, str]],
              regions: Sequence[Mapping[str, str]]) -> str:
    name = out.resolve().name
    classes = sorted({r.get("predicted_class", "") for r in summary if r.get("predicted_class")})
    options = "".join(f"<option value=\"{escape(c)}\">{escape(c)}</option>" for c in classes)
    evaluation = _evaluation_section(out)
    evaluation_link = ' <a href="#evaluation">Rule evaluation</a>' if evaluation else ""
    cohort = cohort_section(out, {r["scan_id"]: r for r in rows})
    evaluation_link += ' <a href="#cohort">Cohort</a>' if cohort else ""
    body = f"""
<header><h1>mri-lrp report: {escape(name)}</h1>
<p class="counts"><span id="count-ok">{_count(len(summary), "scan")} explained</span> ·
<span id="count-failed">{len(failures)} failed</span> ·
<span id="count-skipped">{_count(len(skipped), "input")} skipped</span>
</p>
<nav><a href="#summary">Summary</a> <a href="#gallery">Gallery</a> <a href="#failures">Failures</a>
<a href="#skipped">Skipped</a> <a href="#groups">Group plots</a>{evaluation_link} <a href="#run">Run</a></nav></header>
<main>
<section id="summary"><h2>Summary</h2>
<div class="controls"><label>Filter <input id="filter" type="search" placeholder="any text"></label>
<label>Predicted class <select id="class-filter"><option value="">all</option>{options}</select></label>
<label>Input fitness <select id="fitness-filter"><option value="">all</option><option value="ok">ok</option>
<option value="doubtful">doubtful</option><option value="out">out</option></select></label>
<label><input id="warnings-only" type="checkbox"> with warnings only</label>
<span id="shown"></span></div>
<div class="table-box"><table id="summary-table" class="data"><thead><tr></tr></thead><tbody></tbody></table></div>
<div class="pager" data-for="table"><button type="button" data-step="-1">previous</button>
<span class="where"></span><button type="button" data-step="1">next</button></div>
<noscript><p>The table needs JavaScript; summary.csv holds the same rows.</p></noscript>
</section>
<section id="gallery"><h2>Gallery</h2><p class="hint">Same order and filter as the table; click a picture for the
scan's page.</p><div id="gallery-grid" class="gallery"></div>
<div class="pager" data-for="gallery"><button type="button" data-step="-1">previous</button>
<span class="where"></span><button type="button" data-step="1">next</button></div></section>
<section id="failures"><h2>Failures</h2>
{_rows_table(failures, ["scan_id", "source", "stage", "error"], "data failures", "No scan failed.")}</section>
<section id="skipped"><h2>Skipped inputs</h2>
{_rows_table(skipped, ["path", "reason"], "data skipped", "No input was skipped.")}</section>
<section id="groups"><h2>Group plots</h2>{_group_section(summary, regions)}</section>
{evaluation}{cohort}<section id="run"><h2>Run</h2>{_run_section(run)}</section>
</main>
<footer>Written by mri-lrp {escape(__version__)}. Slice viewer: NiiVue (BSD-2-Clause,
<a href="{REPORT_DIR}/assets/LICENSE-niivue.txt">licence</a>).</footer>
<script type="application/json" id="columns-data">{_json_for_script(_columns(summary))}</script>
<script type="application/json" id="rows-data">{_json_for_script(rows)}</script>
"""
    return _page(f"mri-lrp report: {name}", body, f"{REPORT_DIR}/assets", [f"{REPORT_DIR}/assets/report.js"])


def scan_page(out: Path, row: Mapping[str, str], files: Sequence[str], regions: Sequence[Mapping[str, str]],
              neighbours: tuple[str | None, str | None], folds: Sequence[Mapping[str, str]] = ()) -> str:
    """One scan's page: its summary row, overlays, region table and the slice viewer."""
    scan_id = row.get("scan_id", "")
    up = "../../"
    overlays = "".join(
        f"<figure><img src=\"{_href(up + f)}\" alt=\"overlay {escape(f)}\" loading=\"lazy\">"
        f"<figcaption>{escape(Path(f).name)}</figcaption></figure>" for f in files if f.endswith(".png"))
    links = "".join(f"<li><a href=\"{_href(up + f)}\">{escape(Path(f).name)}</a></li>" for f in files
                    if not f.endswith((".png", PREVIEW_NAME)))
    prev_id, next_id = neighbours
    nav = [f"<a href=\"{_href(up + REPORT_NAME)}\">all scans</a>"]
    if prev_id is not None:
        nav.append(f"<a rel=\"prev\" href=\"{_href(_scan_page_name(prev_id))}\">previous: {escape(prev_id)}</a>")
    if next_id is not None:
        nav.append(f"<a rel=\"next\" href=\"{_href(_scan_page_name(next_id))}\">next: {escape(next_id)}</a>")
    columns = [c for c in _REGION_COLUMNS if any(c in r for r in regions)]
    preview = f"scans/{scan_id}/{PREVIEW_NAME}"
    has_preview = preview in files or (out / preview).is_file()
    target = row.get("target_class") or ""  # with --target all the viewer shows the predicted class's map
    shown = escape(row.get("predicted_class", "") if target in ("", "all") else target) or "the class"
    viewer = ("""<div class="viewer-controls" role="toolbar" aria-label="slice viewer">
<button type="button" data-plane="axial">axial</button><button type="button" data-plane="coronal">coronal</button>
<button type="button" data-plane="sagittal">sagittal</button><button type="button" data-plane="multi">all three</button>
<label>slice <input id="slice" type="range" min="0" max="1000" value="500"></label>
<label>relevance opacity <input id="opacity" type="range" min="0" max="100" value="80"></label></div>
<div class="viewer-box"><canvas id="viewer"></canvas></div><p id="viewer-status" class="hint">loading…</p>
<p class="hint">Scroll or drag the slider to move through slices; red is relevance for """ + shown + """, blue against
it. The viewer shows a downsampled copy; the full map is the relevance volume below.</p>"""
              if has_preview else "<p class=\"empty\">No viewer data for this scan (made by an older version).</p>")
    body = f"""
<header><h1>{escape(scan_id)}</h1><nav>{' · '.join(nav)}</nav></header>
<main>
<section id="facts"><h2>Result</h2>{_kv_table({k: v for k, v in row.items() if v not in ('', None)})}</section>
<section id="viewer-section"><h2>Slice viewer</h2>{viewer}</section>
<section id="overlays"><h2>Overlays</h2><div class="overlays">{overlays or '<p class="empty">No overlay.</p>'}</div>
</section>
{fold_section(row, folds)}
<section id="regions"><h2>Regions</h2>{_rows_table(regions, columns, "data regions", "No region rows.")}</section>
<section id="files"><h2>Files</h2><ul>{links}</ul></section>
</main>
"""
    scripts = ["../assets/niivue.umd.js", up + preview, "../assets/scan.js"] if has_preview else []
    return _page(f"{scan_id} · mri-lrp", body, "../assets", scripts)

