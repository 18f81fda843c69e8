"""Bad inputs from a held-out corpus: each gives one clear row (or warning) and the batch goes on."""

from __future__ import annotations

import csv
import errno
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from test_resume_identity import write_volume

from mri_lrp.errors import ScanError
from mri_lrp.scans import discover, read_scan

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mri_lrp.cli", *args], capture_output=True, timeout=300,
                          cwd=ROOT, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


def absurd_nifti(path: Path, gz: bool = False) -> Path:
    """A 368-byte NIfTI whose header claims 32,767 volumes."""
    header = nib.Nifti1Header()
    header.set_data_shape((2, 2, 2, 32767))
    header.set_data_dtype(np.float32)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        header.write_to(f)
        f.write(b"\0" * 16)
    return path


def nifti_with_pixdim(path: Path, pixdim: tuple[float, float, float], qform_code: int = 0) -> Path:
    """A NIfTI whose stored pixdim[1:4] is exactly ``pixdim`` (nibabel would fix it on save)."""
    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), None)
    img.header["qform_code"], img.header["sform_code"] = qform_code, 0
    nib.save(img, path)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<3f", raw, 80, *pixdim)  # pixdim[1..3] live at bytes 80-91
    path.write_bytes(bytes(raw))
    return path


def one_ref(path: Path):  # type: ignore[no-untyped-def]
    refs, _ = discover([path])
    assert len(refs) == 1, refs
    return refs[0]


@pytest.mark.parametrize("gz", [False, True])
def test_a_header_claiming_32767_volumes_in_368_bytes_is_one_failure(tmp_path: Path, gz: bool) -> None:
    path = absurd_nifti(tmp_path / ("big.nii.gz" if gz else "big.nii"), gz=gz)
    assert gz or path.stat().st_size == 368
    ref = one_ref(path)  # not 32,767 scans
    with pytest.raises(ScanError, match=r"header (needs|claims)"):
        read_scan(ref)


def test_the_odd_sized_file_is_named_even_when_it_sorts_first(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", n_slices=6)
    odd = series.paths[0]  # IM00000: first in name order
    ds = pydicom.dcmread(odd)
    pixels = ds.pixel_array[:32, :32].copy()
    ds.Rows, ds.Columns = 32, 32
    ds.PixelData = pixels.tobytes()
    ds.save_as(odd)
    with pytest.raises(ScanError) as err:
        read_scan(one_ref(tmp_path / "s"))
    assert err.value.reason == ("IM00000: image size 32x32 differs from the other 5 image(s) of the stack "
                                "(64x64)")


def test_the_file_with_another_pixel_spacing_is_named(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", n_slices=6)
    ds = pydicom.dcmread(series.paths[0])
    ds.PixelSpacing = [0.9, 0.9]
    ds.save_as(series.paths[0])
    with pytest.raises(ScanError) as err:
        read_scan(one_ref(tmp_path / "s"))
    assert err.value.reason.startswith("IM00000: pixel spacing 0.9x0.9 mm differs from the other 5 image(s)")


def test_one_stray_slice_between_3mm_slices_is_named_not_read_as_missing_slices(tmp_path: Path) -> None:
    z = [0.0, 3.0, 6.0, 9.0, 10.5, 12.0, 15.0, 18.0, 21.0, 24.0, 27.0, 30.0]  # 10.5: half-way, a stray
    write_series(tmp_path / "s", n_slices=len(z), positions=[(-20.0, -15.0, v) for v in z], file_order="shuffled")
    with pytest.raises(ScanError) as err:
        read_scan(one_ref(tmp_path / "s"))
    reason = err.value.reason
    assert reason.startswith("1 slice(s) off the regular 3.00 mm spacing: ") and "10.50 mm" in reason
    stray = next(p for p in (tmp_path / "s").iterdir() if float(pydicom.dcmread(p).ImagePositionPatient[2]) == 10.5)
    assert stray.name in reason and "missing" not in reason


def test_a_real_gap_is_still_reported_as_missing_slices(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n_slices=10, skip=[4, 5])
    with pytest.raises(ScanError) as err:
        read_scan(one_ref(tmp_path / "s"))
    assert err.value.reason.startswith("2 missing slice(s): a 6.00 mm gap after slice 4 of 8")


def test_nibabel_header_repairs_are_warnings_naming_the_file_and_nothing_on_stderr(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    zero = read_scan(one_ref(nifti_with_pixdim(tmp_path / "zero.nii", (0.0, 2.0, 2.0))))
    negative = read_scan(one_ref(nifti_with_pixdim(tmp_path / "neg.nii", (-2.0, 2.0, 2.0), qform_code=1)))
    assert capfd.readouterr().err == ""
    assert any(w.startswith("zero.nii: nibabel repaired the header: pixdim[1,2,3] should be non-zero")
               for w in zero.warnings)
    assert "zero.nii: pixdim[1] is 0, so the voxel size there is unknown; 1 mm assumed" in zero.warnings
    assert any("neg.nii: negative pixdim[1] taken as a flip" in w for w in negative.warnings)
    # The qform of a positive pixdim (2, 2, 2) with an identity rotation is diag(2, 2, 2); the sign flips x.
    np.testing.assert_allclose(negative.affine[:3, :3], np.diag([-2.0, 2.0, 2.0]))
    assert negative.spacing == pytest.approx((2.0, 2.0, 2.0))


def test_analyze_and_nifti_pairs_and_freesurfer_mgz_are_read(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    affine = np.array([[0, 0, 1.5, -10], [-1.2, 0, 0, 20], [0, 1.1, 0, -5], [0, 0, 0, 1.0]])
    nib.save(nib.Nifti1Pair(data, affine), tmp_path / "pair.hdr")
    nib.save(nib.AnalyzeImage(data, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "analyze.hdr")
    nib.save(nib.MGHImage(data, affine), tmp_path / "brain.mgz")
    refs, skipped = discover([tmp_path])
    assert [r.scan_id for r in refs] == ["analyze", "brain", "pair"]
    assert sorted(s.path for s in skipped) == [str(tmp_path / "analyze.img"), str(tmp_path / "pair.img")]
    for ref in refs:
        scan = read_scan(ref)
        expected = nib.load(ref.paths[0])
        np.testing.assert_allclose(scan.data, data)
        np.testing.assert_allclose(scan.affine, expected.affine, atol=1e-5)
    assert any("Analyze 7.5 header" in w for w in read_scan(refs[0]).warnings)


def test_a_text_file_as_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    write_volume(scans / "a.nii.gz", (12, 12, 12), seed=1)
    notes = tmp_path / "model.pt"
    notes.write_text("a\nthe weights are on the shared drive\n")
    res = run_cli("explain", str(scans), "--checkpoint", str(notes), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = res.stderr.decode().strip().splitlines()
    assert lines == [f"mri-lrp: error: {notes}: not a readable PyTorch checkpoint: a text file (it starts with "
                     "'a'); give the file that torch.save wrote"]
    assert not (tmp_path / "out").exists()


def test_a_night_of_bad_inputs_gives_one_row_each_and_reruns_cleanly(tmp_path: Path) -> None:
    """Non-UTF-8 names end to end (ids, CSV, JSON, log, done markers), beside other bad inputs."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    write_volume(scans / "good.nii.gz", (12, 12, 12), seed=1)
    latin1 = write_volume(scans / "tmp.nii.gz", (12, 14, 12), seed=2)
    os.rename(latin1, os.fsencode(scans) + b"/scan_\xff.nii.gz")  # a Latin-1 name on a UTF-8 system
    absurd_nifti(scans / "big.nii")
    junk = os.fsencode(scans) + b"/bad_\xe9.dcm"
    with open(junk, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + b"not really")
    for attempt in (1, 2):
        res = run_cli("explain", str(scans), "--out", str(out), "--workers", "0")
        err = res.stderr.decode()
        assert res.returncode == 3, err
        assert "Traceback" not in err
        with (out / "summary.csv").open(newline="", encoding="utf-8") as f:
            summary = {r["scan_id"]: r for r in csv.DictReader(f)}
        with (out / "failures.csv").open(newline="", encoding="utf-8") as f:
            failures = {r["scan_id"]: r for r in csv.DictReader(f)}
        assert set(summary) == {"good", "scan__xff"}
        assert summary["scan__xff"]["source"] == "scan_\\xff.nii.gz"
        assert set(failures) == {"big", "bad__xe9.dcm"}
        assert failures["bad__xe9.dcm"]["source"] == "bad_\\xe9.dcm"
        log = res.stdout.decode("utf-8")
        assert "scan__xff ok" in log or attempt == 2
    assert "done 0 · resumed 2 · failed 2" in log


def test_mixed_spacing_lists_the_steps_found(tmp_path: Path) -> None:
    z = [0.0, 1.5, 3.0, 4.5, 6.0, 9.0, 12.0, 15.0, 18.0]  # 1.5 mm, then 3 mm: neither a gap nor a stray
    write_series(tmp_path / "s", n_slices=len(z), positions=[(-20.0, -15.0, v) for v in z])
    with pytest.raises(ScanError) as err:
        read_scan(one_ref(tmp_path / "s"))
    assert err.value.reason == "irregular slice spacing: steps of 1.500 to 3.000 mm (4 of 1.50 mm, 4 of 3.00 mm)"


def _bad_checkpoint(kind: str, folder: Path) -> Path:
    """A checkpoint as users get them wrong: cut short, notes, nothing, a whole pickled model, bare weights."""
    import torch

    from mri_lrp.model.checkpoint import DEMO_CHECKPOINT
    from mri_lrp.model.zoo import build_model

    path = folder / f"{kind}.pt"
    model = build_model("cnn3d", in_channels=1, num_classes=4, width=4)
    if kind == "truncated":
        raw = DEMO_CHECKPOINT.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "text":
        path.write_text("the weights are on the shared drive\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickled":
        torch.save(model, path)
    else:
        torch.save(model.state_dict(), path)
    return path


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    """The console entry point in this process: its exit code and the lines it wrote to stderr."""
    from mri_lrp.cli import main

    monkeypatch.setattr(sys, "argv", ["mri-lrp", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(("kind", "says"), [
    ("truncated", "not a readable PyTorch checkpoint: a zip archive without its end (truncated"),
    ("text", "not a readable PyTorch checkpoint: a text file (it starts with 'the weights are on"),
    ("empty", "empty file"),
    ("pickled", "holds a pickled Python object (mri_lrp.model.zoo."),
    ("bare", "holds a plain state_dict with no architecture; name it with --model"),
])
def test_a_bad_checkpoint_exits_2_with_one_line_and_creates_no_out_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, kind: str,
        says: str) -> None:
    checkpoint = _bad_checkpoint(kind, tmp_path)
    out = tmp_path / "out"
    code, err = _main(monkeypatch, capsys, "explain", str(ROOT / "sample_scans" / "t1" / "sub-02_T1w.nii.gz"),
                      "--checkpoint", str(checkpoint), "--out", str(out), "--quiet", "--workers", "0")
    assert code == 2
    assert err == [f"mri-lrp: error: {checkpoint}: {err[0].split(': ', 3)[-1]}"] and says in err[0]
    assert not out.exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--target", "nonsense"], "--target: 'nonsense' is not a class of this model (glioma, meningioma"),
    (["--target", "7"], "--target: class index 7 is out of range (the model has 4 classes)"),
    (["--rule", "alphabeta", "--alpha=-1", "--beta", "1"], "--alpha: must be a number >= 0"),
    (["--config", "CONFIG"], "override 'classifier': unknown LRP rule 'nonsense'"),
    (["--atlas", "ATLAS", "--atlas-labels", "LABELS"], "atlas.nii.gz"),
    (["--layout", "bids"], "no sub-<label>"),
])
def test_a_usage_error_exits_2_with_one_line_and_creates_no_out_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: list[str],
        says: str) -> None:
    atlas, labels, config = tmp_path / "atlas.nii.gz", tmp_path / "labels.csv", tmp_path / "rules.toml"
    atlas.write_text("not an image\n")
    labels.write_text("index,name\n1,left\n")
    config.write_text('[overrides]\n"classifier" = "nonsense"\n')
    args = [{"ATLAS": str(atlas), "LABELS": str(labels), "CONFIG": str(config)}.get(a, a) for a in args]
    scans = tmp_path / "scans"  # no sub-<label> in the path
    write_volume(scans / "head.nii.gz", (12, 12, 12), seed=1)
    out = tmp_path / "out"
    code, err = _main(monkeypatch, capsys, "explain", str(scans), "--out", str(out), "--quiet", "--workers", "0",
                      *args)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("mri-lrp: error: ") and says in err[0], err
    assert not out.exists()


def test_a_usage_error_leaves_an_existing_out_folder_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    (out / "scans").mkdir(parents=True)
    (out / "notes.txt").write_text("mine\n")
    write_volume(tmp_path / "scans" / "head.nii.gz", (12, 12, 12), seed=1)  # no sub-<label>: no BIDS name
    code, _ = _main(monkeypatch, capsys, "explain", str(tmp_path / "scans"), "--layout", "bids", "--out", str(out),
                    "--quiet", "--workers", "0")
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "scans"]


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder on a tmpfs of its own, mounted for the test: ``small_disk(kib)`` sizes it (as root; skipped
    where mounting is not allowed)."""
    mounts: list[Path] = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"disk{len(mounts)}"
        where.mkdir()
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                             capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=True)  # lazily: a file left open cannot block it


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    with open(disk / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def test_a_disk_that_fills_up_mid_run_stops_with_one_line_exit_3_and_no_temporary_file(
        small_disk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    disk = small_disk(4096)  # a sample scan's outputs take about 2.5 MiB: the first fits, the next does not
    out = disk / "out"
    scans = [str(ROOT / "sample_scans" / "t1" / f"sub-0{n}_T1w.nii.gz") for n in (2, 4, 5)]
    code, err = _main(monkeypatch, capsys, "explain", *scans, "--out", str(out), "--workers", "0", "--quiet")
    assert code == 3, err
    assert err[-1].startswith(f"mri-lrp: error: {out}: no space left on device (1 scan(s) written"), err
    assert not any("Traceback" in line or "unexpected" in line for line in err)
    assert [p.name for p in out.rglob("result.json")] == ["result.json"]
    assert not [p for p in disk.rglob("*") if ".tmp" in p.name]


def test_a_disk_full_at_the_start_is_one_line_exit_2_and_leaves_no_out_folder(
        small_disk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    disk = small_disk(256)
    _fill(disk)
    out = disk / "out"
    code, err = _main(monkeypatch, capsys, "explain", str(ROOT / "sample_scans" / "t1" / "sub-02_T1w.nii.gz"),
                      "--out", str(out), "--workers", "0", "--quiet")
    assert code == 2
    assert err == [f"mri-lrp: error: {out}: no space left on device (nothing was written; free some space and "
                   "run again)"]
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]


def test_report_assets_that_do_not_fit_leave_no_temporary_file(small_disk) -> None:  # type: ignore[no-untyped-def]
    from mri_lrp.report.build import copy_assets

    disk = small_disk(512)  # the viewer script alone is over 2 MiB
    with pytest.raises(OSError) as failed:
        copy_assets(disk / "assets")
    assert failed.value.errno == errno.ENOSPC
    assert not [p for p in disk.rglob("*") if ".tmp" in p.name]


def test_report_on_a_full_disk_is_one_line_naming_the_folder_and_leaves_no_temporary_file(
        small_disk, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    from report_fixtures import make_run

    disk = small_disk(1024)  # the tables fit; the report's 2 MiB viewer script does not
    out = disk / "out"
    make_run(out, scans=2)
    code, err = _main(monkeypatch, capsys, "report", str(out))
    assert code == 2
    (line,) = err
    assert line == f"mri-lrp: error: {out}: no space left on device"
    assert not [p for p in disk.rglob("*") if ".tmp" in p.name]
