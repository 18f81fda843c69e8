"""Resume is keyed to the input files themselves: a replaced file is redone, reordered roots change nothing."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri_lrp.lrp import rules
from mri_lrp.pipeline import resume, run_explain, write
from mri_lrp.pipeline.resume import input_identity, is_done
from mri_lrp.progress import Reporter
from mri_lrp.scans import discover
from mri_lrp.settings import build_settings


def write_volume(path: Path, shape: tuple[int, int, int], seed: int) -> Path:
    """A smooth random head-sized blob on a 4 mm grid: cheap to explain, different per seed."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    data = np.exp(-3 * (grid**2).sum(0)) * 1000 + rng.normal(0, 20, shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([4.0, 4.0, 4.0, 1.0])), path)
    return path


def explain(scans: list[Path], out: Path) -> tuple[int, str]:
    log = io.StringIO()
    settings = build_settings({"scans": [str(s) for s in scans], "out": str(out), "workers": 0})
    return run_explain(settings, Reporter(tty=False, stream=log)), log.getvalue()


def rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open(newline="", encoding="utf-8") as f:
        return {r["scan_id"]: r for r in csv.DictReader(f)}


def test_a_replaced_file_is_redone_and_only_that_one(tmp_path: Path) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "keep.nii.gz", (20, 24, 18), seed=1)
    write_volume(scans / "stale" / "case.nii.gz", (20, 24, 18), seed=2)
    code, _ = explain([scans], out)
    assert code == 0
    kept_marker = out / "scans" / "keep" / "result.json"
    kept_mtime = kept_marker.stat().st_mtime_ns

    write_volume(scans / "stale" / "case.nii.gz", (22, 26, 16), seed=3)  # a PACS re-send under the same name
    code, log = explain([scans], out)
    assert code == 0
    assert "done 1 · resumed 1" in log
    assert "stale__case: input files changed since it was explained: redone" in log
    table = rows(out)
    assert table["stale__case"]["shape"] == "22x26x16"  # the new file's result, not the old prediction
    assert table["keep"]["shape"] == "20x24x18"
    assert kept_marker.stat().st_mtime_ns == kept_mtime  # the untouched scan was not redone
    marker = json.loads((out / "scans" / "stale__case" / "result.json").read_text())
    assert marker["inputs"] == input_identity([str(scans / "stale" / "case.nii.gz")])


def test_a_same_size_copy_with_the_old_mtime_is_still_a_different_input(tmp_path: Path) -> None:
    """cp -p / rsync -a keep size and mtime; the hash of the first bytes still tells the files apart."""
    a = write_volume(tmp_path / "a.nii", (16, 16, 16), seed=1)
    b = write_volume(tmp_path / "b.nii", (16, 16, 16), seed=2)
    before = input_identity([str(a)])
    st = a.stat()
    shutil.copyfile(b, a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = input_identity([str(a)])
    assert (after[0]["size"], after[0]["mtime_ns"]) == (before[0]["size"], before[0]["mtime_ns"])
    assert after != before
    scan_dir = tmp_path / "done"
    scan_dir.mkdir()
    (scan_dir / "result.json").write_text(json.dumps({"fingerprint": "f", "inputs": before, "files": []}))
    assert is_done(scan_dir, "f", before) and not is_done(scan_dir, "f", after)
    assert not is_done(scan_dir, "f", input_identity([str(tmp_path / "gone.nii")]))


def test_every_file_of_a_dicom_series_is_part_of_its_identity(tmp_path: Path) -> None:
    from dicom_factory import write_series

    series = write_series(tmp_path / "dicom", n_slices=4)
    (ref,), _ = discover([tmp_path / "dicom"])
    identity = input_identity(ref.paths)
    assert sorted(item["path"] for item in identity) == sorted(os.path.realpath(p) for p in series.paths)
    with open(series.paths[2], "r+b") as f:  # one slice rewritten in place, header bytes changed
        f.seek(200)
        f.write(b"X")
    assert input_identity(ref.paths) != identity


def test_reordered_roots_keep_every_id_on_its_file_and_resume_everything(tmp_path: Path) -> None:
    r1, r2, out = tmp_path / "site_a", tmp_path / "site_b", tmp_path / "out"
    write_volume(r1 / "T1w.nii.gz", (20, 24, 18), seed=1)
    write_volume(r2 / "T1w.nii.gz", (18, 20, 22), seed=2)

    def ids(roots: list[Path]) -> dict[str, tuple[str, ...]]:
        refs, _ = discover(roots)
        return {r.scan_id: r.paths for r in refs}

    assert ids([r1, r2]) == ids([r2, r1])
    assert set(ids([r1, r2])) == {"T1w", "T1w_2"}

    code, _ = explain([r1, r2], out)
    assert code == 0
    first = rows(out)
    code, log = explain([r2, r1], out)
    assert code == 0
    assert "done 0 · resumed 2" in log
    second = rows(out)
    assert {k: v["shape"] for k, v in second.items()} == {k: v["shape"] for k, v in first.items()}
    manifest = json.loads((out / "run.json").read_text())
    assert [root["given"] for root in manifest["roots"]] == [str(r2), str(r1)]
    assert [root["resolved"] for root in manifest["roots"]] == [os.path.realpath(r2), os.path.realpath(r1)]


def test_the_img_of_an_analyze_pair_is_part_of_its_identity(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), np.float32)
    nib.save(nib.Nifti1Pair(data, np.eye(4)), tmp_path / "pair.hdr")
    (ref,), _ = discover([tmp_path])
    before = input_identity(ref.paths)
    nib.save(nib.Nifti1Pair(data + 1, np.eye(4)), tmp_path / "other.hdr")
    shutil.copyfile(tmp_path / "other.img", tmp_path / "pair.img")  # new voxels, same header file
    assert [Path(item["path"]).name for item in before] == ["pair.hdr", "pair.img"]
    assert input_identity(ref.paths) != before


def test_a_scan_explained_by_other_relevance_rules_is_explained_again_and_then_resumed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upgrade that changes the maps a rule gives (RULES_VERSION) must not resume the old maps."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "a.nii.gz", (20, 24, 18), seed=1)
    current = rules.RULES_VERSION
    for module in (rules, write, resume):  # as an earlier release would have written it
        monkeypatch.setattr(module, "RULES_VERSION", current - 1)
    assert explain([scans], out)[0] == 0
    marker = out / "scans" / "a" / "result.json"
    assert json.loads(marker.read_text())["rules_version"] == current - 1
    monkeypatch.undo()

    code, log = explain([scans], out)
    assert code == 0
    assert "done 1 · resumed 0" in log
    assert "1 scan(s) explained by an earlier version of the relevance rules (the maps changed): explained again" in log
    assert json.loads(marker.read_text())["rules_version"] == current
    code, log = explain([scans], out)
    assert code == 0
    assert "done 0 · resumed 1" in log and "explained again" not in log
