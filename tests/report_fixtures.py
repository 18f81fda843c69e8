"""Synthetic finished runs for the report tests: the files a run leaves (tables, markers, overlays, previews),
with known numbers and any number of scans, made without a model so a 2,000-scan run takes seconds."""

from __future__ import annotations

import csv
import json
import random
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from mri_lrp.report.preview import write_preview

CLASSES = ("glioma", "meningioma", "pituitary", "no_tumour")
BUILTIN = ("left_anterior_superior", "left_posterior_inferior", "right_anterior_superior", "right_posterior_inferior")


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _png(path: Path, seed: int) -> None:
    from matplotlib.image import imsave

    rng = np.random.default_rng(seed)
    img = np.zeros((60, 90, 3))
    img[10:50, 20:70] = 0.4
    img[rng.integers(15, 40), 25:65] = (1.0, 0.1, 0.1)
    imsave(path, img)


def make_run(out: Path, scans: int = 6, failures: int = 1, skipped: int = 1, masks: bool = True,
             seed: int = 0) -> dict:
    """Write a finished flat-layout run under ``out``; returns what was written, for the tests to compare."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    summary, regions = [], []
    # One preview and one overlay serve every scan: their content is not what the page tests look at.
    anat = np.zeros((24, 28, 20), np.float32)
    anat[4:20, 4:24, 3:17] = 100.0
    rel = np.zeros_like(anat)
    rel[8:12, 10:14, 8:12] = 0.02
    rel[14:16, 6:8, 5:7] = -0.01
    template = out / ".preview.js"
    write_preview(template, anat, rel, np.diag([2.0, 2.0, 2.5, 1.0]))
    preview_text = template.read_text()
    template.unlink()
    overlay = out / ".overlay.png"
    _png(overlay, seed)
    overlay_bytes = overlay.read_bytes()
    overlay.unlink()
    for n in range(scans):
        scan_id = f"sub-{n:04d}_T1w"
        cls = CLASSES[n % len(CLASSES)]
        has_mask = masks and cls != "no_tumour"
        row = {
            "scan_id": scan_id, "source": f"{scan_id}.nii.gz", "kind": "nifti", "shape": "24x28x20",
            "spacing_mm": "2x2x2.5", "predicted_class": cls, "predicted_prob": f"{rng.uniform(0.4, 1):.6g}",
            "target_class": cls, "target_prob": "", "output_relevance": "1", "relevance_sum": "1",
            "conservation_error": f"{10 ** rng.uniform(-8, -2):.6g}" if n % 7 else "0",
            "absorbed": "0", "top_region": BUILTIN[n % len(BUILTIN)],
            "relevance_mass_accuracy": f"{rng.uniform(0, 1):.6g}" if has_mask else "",
            "pointing_game": ("true" if n % 2 else "false") if has_mask else "",
            "mask_volume_ml": f"{rng.uniform(1, 40):.6g}" if has_mask else "",
            "warnings": "low contrast <b>not bold</b>" if n % 5 == 3 else "", "status": "ok", "seconds": "1.5",
        }
        summary.append(row)
        shares = [rng.uniform(-0.2, 1) for _ in BUILTIN]
        total = sum(shares)
        for rank, (name, share) in enumerate(zip(BUILTIN, shares, strict=True), start=1):
            regions.append({"scan_id": scan_id, "partition": "builtin", "region_id": rank, "region_name": name,
                            "relevance_sum": f"{share / total:.6g}", "relevance_fraction": f"{share / total:.6g}",
                            "target_class": cls})
        if has_mask:
            inside = rng.uniform(0, 1)
            for rid, (name, value) in enumerate((("inside_mask", inside), ("outside_mask", 1 - inside)), 1):
                regions.append({"scan_id": scan_id, "partition": "mask", "region_id": rid, "region_name": name,
                                "relevance_sum": f"{value:.6g}", "relevance_fraction": f"{value:.6g}",
                                "target_class": cls})
        folder = out / "scans" / scan_id
        folder.mkdir(parents=True)
        (folder / "overlay.png").write_bytes(overlay_bytes)
        (folder / "preview.js").write_text(preview_text)
        (folder / "result.json").write_text(json.dumps({"fingerprint": "f", "summary": row,
                                                        "files": ["overlay.png", "preview.js"]}))
    failed = [{"scan_id": f"broken_{n}", "source": f"broken_{n}.nii.gz", "stage": "read",
               "error": f"broken_{n}.nii.gz: not a readable NIfTI file"} for n in range(failures)]
    skipped_rows = [{"path": f"/data/notes_{n}.txt", "reason": "not a DICOM or NIfTI file"} for n in range(skipped)]
    region_columns = ["scan_id", "partition", "region_id", "region_name", "relevance_sum", "relevance_fraction",
                      "target_class"]
    _write_csv(out / "summary.csv", summary, list(summary[0]) if summary else ["scan_id"])
    _write_csv(out / "regions.csv", regions, region_columns)
    _write_csv(out / "failures.csv", failed, ["scan_id", "source", "stage", "error"])
    _write_csv(out / "skipped.csv", skipped_rows, ["path", "reason"])
    run = {"tool": "mri-lrp", "version": "0.1.0", "versions": {"python": "3.12", "torch": "2.13.0"},
           "started": "2026-01-01T00:00:00+0000", "settings": {"rule": "alphabeta", "alpha": 2.0, "beta": 1.0},
           "fingerprint": "f", "checkpoint": {"sha256": "ab" * 32, "architecture": "cnn3d"}, "device": "cpu",
           "counts": {"found": scans + failures, "done": scans, "failed": failures}}
    (out / "run.json").write_text(json.dumps(run))
    return {"summary": summary, "regions": regions, "failures": failed, "skipped": skipped_rows, "run": run}


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, with the table's attributes; plus every src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self.links: list[str] = []
        self.scripts: dict[str, str] = {}
        self._stack: list[dict] = []
        self._cell: list[str] | None = None
        self._script: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if a.get(key):
                self.links.append(a[key] or "")
        if tag == "table":
            self._stack.append({"attrs": a, "rows": []})
        elif tag == "tr" and self._stack:
            self._stack[-1]["rows"].append([])
        elif tag in ("td", "th") and self._stack:
            self._cell = []
        elif tag == "script" and a.get("id"):
            self._script = a["id"]
            self.scripts[self._script] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self._stack:
            self.tables.append(self._stack.pop())
        elif tag in ("td", "th") and self._cell is not None and self._stack:
            self._stack[-1]["rows"][-1].append(" ".join(" ".join(self._cell).split()))
            self._cell = None
        elif tag == "script":
            self._script = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._script is not None:
            self.scripts[self._script] += data


def parse_page(path: Path) -> Tables:
    parser = Tables()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser
