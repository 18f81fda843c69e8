"""Inputs as users bring them (public JPEG sets, BraTS, MSD, PACS exports): regressions found using the CLI."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from case_factory import bids, brats2021, msd, save
from PIL import Image

from mri_lrp.errors import SettingsError
from mri_lrp.model.spec import InputSpec
from mri_lrp.scans import discover
from mri_lrp.scans.case_match import ChannelPlan, description_sequence

COLOUR_2D = InputSpec(dims=2, channels=3, shape=(64, 64), resize=True, normalization="imagenet")


def test_a_colour_model_reads_grey_slices_and_bids_volumes_as_single_images_not_cases(tmp_path: Path) -> None:
    """The three channels of an ImageNet-style model are red/green/blue, not sequences: no case grouping, so no
    'fits no case' warning on a grey JPEG and no case failure for BIDS volumes with no channel names."""
    assert ChannelPlan.of(COLOUR_2D) is None
    with pytest.raises(SettingsError, match="channel_files needs channel_names"):  # globs are never ignored
        ChannelPlan.of(InputSpec(dims=2, channels=3, channel_files={"a": "A/*.png", "b": "B/*", "c": "C/*"}))
    grey = (np.arange(40 * 30).reshape(40, 30) % 255).astype(np.uint8)
    (tmp_path / "Training" / "glioma").mkdir(parents=True)
    Image.fromarray(grey, mode="L").save(tmp_path / "Training" / "glioma" / "Tr-gl_0000.jpg")
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "Training" / "glioma" / "Tr-gl_0001.png")
    bids(tmp_path / "bids")
    refs, _ = discover([tmp_path], channels=ChannelPlan.of(COLOUR_2D))
    assert len(refs) == 6 and all(not r.channels and not r.error and not r.notes for r in refs)


def _picture_with_a_bright_top_left(path: Path) -> None:
    """A 60x40 picture: a dim head with a bright block in its top-left quarter as displayed."""
    pixels = np.zeros((60, 40), dtype=np.uint8)
    pixels[5:55, 5:35] = 60
    pixels[8:20, 8:16] = 250
    Image.fromarray(pixels).save(path)


def test_an_image_file_gets_picture_quarters_not_hemispheres_and_no_side_letters(tmp_path: Path) -> None:
    """A PNG has no anatomy: regions are the picture's quarters as displayed, the overlay shows it as stored
    (bright block top left) without A/P/L/R letters."""
    from mri_lrp.regions import builtin_partition
    from mri_lrp.render import compose_overlay
    from mri_lrp.scans import read_scan

    _picture_with_a_bright_top_left(tmp_path / "slice.png")
    refs, _ = discover([tmp_path])
    scan = read_scan(refs[0])
    part = builtin_partition(scan)
    assert part.names == ("outside_head", "image_top_left", "image_top_right", "image_bottom_left",
                          "image_bottom_right")
    assert part.names[int(part.index[10, 10, 0])] == "image_top_left"
    assert part.names[int(part.index[50, 30, 0])] == "image_bottom_right"
    overlay = compose_overlay(scan.data, np.zeros(scan.shape, np.float32), scan.affine, title="t", image=True)
    (panel,) = overlay.panels
    assert panel.sides == ("", "", "", "")
    grey = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width].mean(axis=2)
    h, w = grey.shape
    assert grey[h * 14 // 60, w * 12 // 40] > grey[h * 45 // 60, w * 28 // 40] + 50
    letters = compose_overlay(scan.data, np.zeros(scan.shape, np.float32), scan.affine, title="t")
    assert letters.panels[0].sides != ("", "", "", "")


def _four_channel_run(tmp_path: Path) -> tuple[Path, Path]:
    """A small 4-channel cnn3d state_dict and a config naming the BraTS channels."""
    import torch

    from mri_lrp.model.zoo import build_model

    torch.manual_seed(0)
    torch.save(build_model("cnn3d", in_channels=4, num_classes=2, width=2, depth=1).state_dict(), tmp_path / "m.pth")
    config = tmp_path / "c.toml"
    config.write_text('model = "mri_lrp.model.zoo:cnn3d"\n'
                      'model_kwargs = { in_channels = 4, num_classes = 2, width = 2, depth = 1 }\n'
                      'class_names = ["LGG", "HGG"]\n[input_spec]\ndims = 3\nchannels = 4\n'
                      'channel_names = ["t1", "t1ce", "t2", "flair"]\nshape = [8, 8, 8]\nresize = true\n')
    return tmp_path / "m.pth", config


def test_dry_run_and_inspect_name_each_channels_file_and_the_case_that_will_fail(tmp_path: Path) -> None:
    """The plan must not list an incomplete case as if it had every channel; both listings show the matching."""
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    data = tmp_path / "data"
    brats2021(data, "BraTS2021_00000")
    brats2021(data, "BraTS2021_00001")
    (data / "BraTS2021_00001" / "BraTS2021_00001_t2.nii.gz").unlink()
    msd(data / "msd")
    checkpoint, config = _four_channel_run(tmp_path)
    res = CliRunner().invoke(app, ["explain", str(data), "--checkpoint", str(checkpoint), "--config", str(config),
                                   "--out", str(tmp_path / "out"), "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = {line.split("\t")[0].strip(): line for line in res.output.splitlines() if "\t" in line}
    assert "t2 = BraTS2021_00000_t2.nii.gz, flair = BraTS2021_00000_flair.nii.gz" in lines["BraTS2021_00000"]
    assert "will fail: BraTS 2021 case is missing channel(s) t2" in lines["BraTS2021_00001"]
    assert "will fail" not in lines["BraTS2021_00000"]
    assert "t1 = BRATS_007.nii.gz[0]" in lines["msd__imagesTr__BRATS_007"] and "flair = BRATS_007.nii.gz[3]" \
        in lines["msd__imagesTr__BRATS_007"]
    assert not (tmp_path / "out").exists()
    res = CliRunner().invoke(app, ["inspect", str(data), "--config", str(config)])
    assert "channel_files" in res.output.splitlines()[0]
    row = next(line for line in res.output.splitlines() if line.startswith("BraTS2021_00000\t"))
    assert "t1ce = BraTS2021_00000_t1ce.nii.gz" in row


def test_the_resampling_warning_says_whose_grid_lies_outside_the_channel(tmp_path: Path) -> None:
    """'that grid' was ambiguous (the channel's own grid was just named): the share is of the first channel's grid."""
    from case_factory import AFFINE

    from mri_lrp.scans import read_scan

    brats2021(tmp_path, "BraTS2021_00000")
    t2 = tmp_path / "BraTS2021_00000" / "BraTS2021_00000_t2.nii.gz"
    half = AFFINE.copy()
    half[:3, :3] *= 0.5
    save(np.asarray(nib.load(t2).dataobj), t2, half)
    (ref,), _ = discover([tmp_path], channels=ChannelPlan(4, ("t1", "t1ce", "t2", "flair")))
    (note,) = [w for w in read_scan(ref).warnings if "resampled" in w]
    assert "% of the t1 grid lies outside t2 and is 0 there" in note


def test_a_nifti_file_without_an_extension_is_named_as_nifti_with_the_fix(tmp_path: Path) -> None:
    """PACS/web exports drop extensions; 'not a DICOM or NIfTI file' was false for a NIfTI-1 or NIfTI-2 file."""
    image = nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    nib.save(image, tmp_path / "a.nii")
    nib.save(nib.Nifti2Image(image.get_fdata(), np.eye(4)), tmp_path / "b.nii")
    (tmp_path / "a.nii").rename(tmp_path / "brain")
    (tmp_path / "b.nii").rename(tmp_path / "brain2")
    (tmp_path / "notes").write_text("x" * 400)
    _, skipped = discover([tmp_path])
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["brain"] == reasons["brain2"] == \
        "a NIfTI file without a .nii name: rename it (add .nii) to have it read"
    assert reasons["notes"] == "not a DICOM or NIfTI file"


def test_dry_run_shows_that_an_msd_dataset_json_orders_the_channels_otherwise(tmp_path: Path) -> None:
    """MSD's Task01 stores FLAIR, T1w, t1gd, T2w: a model named t1, t1ce, t2, flair gets them by number, which the
    plan must say before a night is spent on swapped sequences."""
    import json

    from typer.testing import CliRunner

    from mri_lrp.cli import app

    task = tmp_path / "Task01_BrainTumour"
    msd(task)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}))
    checkpoint, config = _four_channel_run(tmp_path)
    res = CliRunner().invoke(app, ["explain", str(task), "--checkpoint", str(checkpoint), "--config", str(config),
                                   "--out", str(tmp_path / "out"), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "    warning: dataset.json calls channel 0 'FLAIR' but the model's channel 0 is 't1'" in res.output


def test_a_16_bit_or_float_grey_image_for_a_colour_model_is_not_claimed_as_convert_rgb_values(tmp_path: Path) -> None:
    """Image.convert('RGB') clips 16-bit values to 255 and turns float [0, 1] into 0, so the stored values the
    product keeps are not 'what ToTensor of Image.convert("RGB") gives': a warning says so; 8-bit keeps the note."""
    from mri_lrp.model.transform import to_model
    from mri_lrp.scans import read_scan

    ramp = np.add.outer(np.arange(30), np.arange(20))
    Image.fromarray((ramp * 100).astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray((ramp / 50).astype(np.float32), mode="F").save(tmp_path / "float.tif")
    Image.fromarray(ramp.astype(np.uint8)).save(tmp_path / "eight.png")
    notes = {r.scan_id: to_model(read_scan(r), COLOUR_2D).notes for r in discover([tmp_path])[0]}
    for name in ("sixteen", "float"):
        (note,) = [n for n in notes[name] if "colour channels" in n]
        assert note.startswith("warning:") and "clipped to 8 bits" in note
    assert any("as ToTensor of Image.convert('RGB') gives" in n for n in notes["eight"])
    assert not any(n.startswith("warning:") for n in notes["eight"])


@pytest.mark.parametrize(("description", "sequence"), [
    ("t2_tirm_tra_dark-fluid", "flair"),     # Siemens FLAIR: was matched as a T2 (two series for t2, no flair)
    ("T1 MPRAGE PRE contrast", "t1"),        # was t1ce: a pre-contrast T1 silently in the contrast channel
    ("T1 SE ax pre Gd", "t1"),
    ("t1_mprage_tra_nativ", "t1"),
    ("AX T1 POST GD", "t1ce"),
    ("t2_tse_tra", "t2"),
])
def test_vendor_series_descriptions_map_to_the_right_sequence(description: str, sequence: str) -> None:
    assert description_sequence(description) == sequence


def test_inspect_forms_cases_from_the_files_explain_uses_and_says_what_explain_skips(tmp_path: Path) -> None:
    """A derived MPR of the contrast T1 doubled the t1ce channel in inspect (a case 'error') while explain left the
    MPR out and explained the case; single-scan rows now say when explain would skip them."""
    import json

    from dicom_factory import CORONAL, write_series
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    study = tmp_path / "PAT 1"
    for n, description in enumerate(("t1_mprage_tra_nativ", "t1_mprage_tra_KM", "t2_tse_tra", "AX T2 FLAIR")):
        write_series(study / f"S{n}", n_slices=6, rows=16, cols=16, series_number=n + 1, description=description,
                     seed=n)
    write_series(study / "MPR", CORONAL, n_slices=6, rows=16, cols=16, series_number=20,
                 description="t1_mprage_KM MPR cor", image_type=("DERIVED", "SECONDARY", "MPR"))
    _, config = _four_channel_run(tmp_path)
    res = CliRunner().invoke(app, ["inspect", str(study), "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    (case,) = [r for r in rows if r["scan_id"]]
    assert case["status"] == "ok"
    assert case["channel_files"].startswith("t1 = t1_mprage_tra_nativ, t1ce = t1_mprage_tra_KM")
    assert [r["source"] for r in rows if r["kind"] == "skipped"] == [str(study / "MPR")]
    res = CliRunner().invoke(app, ["inspect", str(study), "--json"])
    mpr = next(r for r in json.loads(res.output) if r["source"] == str(study / "MPR"))
    assert mpr["status"] == "skipped" and mpr["problems"][-1].startswith("explain skips it: derived image")
    res = CliRunner().invoke(app, ["inspect", str(study / "MPR")])
    assert res.exit_code == 4, res.output  # explain would find nothing to explain there either


def test_an_earlier_runs_output_in_the_input_folder_is_one_skipped_folder_and_its_model_input_no_case(
        tmp_path: Path) -> None:
    """`--save-model-input` writes a 4D (X, Y, Z, C) stack: for a 4-channel model it passed for an MSD case and
    was explained; the whole earlier output folder is now one skipped line (its run.json names the tool)."""
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    data = tmp_path / "data"
    brats2021(data, "BraTS2021_00000")
    checkpoint, config = _four_channel_run(tmp_path)
    common = ["--checkpoint", str(checkpoint), "--config", str(config), "--workers", "0", "--quiet"]
    res = CliRunner().invoke(app, ["explain", str(data), "--out", str(data / "lrp"), "--save-model-input", *common])
    assert res.exit_code == 0, res.output
    model_input = data / "lrp" / "scans" / "BraTS2021_00000" / "model_input.nii.gz"
    assert nib.load(model_input).shape[-1] == 4
    refs, skipped = discover([data], channels=ChannelPlan(4, ("t1", "t1ce", "t2", "flair")))
    assert [r.scan_id for r in refs] == ["BraTS2021_00000"]
    assert {s.path: s.reason for s in skipped}[str(data / "lrp")] == \
        "output folder of an explain run (its run.json), not scans"
    (data / "lrp" / "run.json").unlink()  # a shard's or a killed run's folder: its files are still told apart
    refs, skipped = discover([data], channels=ChannelPlan(4, ("t1", "t1ce", "t2", "flair")))
    assert [r.scan_id for r in refs] == ["BraTS2021_00000"]
    reasons = {s.path: s.reason for s in skipped}
    assert reasons[str(model_input)] == "model input written by an earlier explain run, not a scan"
    assert reasons[str(model_input.with_name("model_relevance.nii.gz"))] == \
        "relevance map written by an earlier explain run, not a scan"


def test_bids_functional_diffusion_and_field_map_images_are_skipped_once_per_file_not_explained(
        tmp_path: Path) -> None:
    """Each volume of a BOLD run was a 'scan' for a structural classifier (hundreds per subject); now one
    skipped line per file with the reason, for single- and multi-channel models; --include reads them."""
    from mri_lrp.scans.filters import ScanFilter, apply_filter, why_skipped

    root = tmp_path / "bids"
    save(np.ones((6, 6, 6), np.float32), root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    save(np.ones((6, 6, 6, 5), np.float32), root / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz")
    save(np.ones((6, 6, 6, 3), np.float32), root / "sub-01" / "dwi" / "sub-01_dwi.nii.gz")
    save(np.ones((6, 6, 6), np.float32), root / "sub-01" / "fmap" / "sub-01_phasediff.nii.gz")
    refs, _ = discover([root])
    kept, skipped = apply_filter(refs, ScanFilter())
    assert [r.scan_id for r in kept] == ["sub-01__anat__sub-01_T1w"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert len(skipped) == 3
    assert reasons["sub-01_task-rest_bold.nii.gz"].startswith("BIDS _bold image (functional), not a structural")
    assert reasons["sub-01_dwi.nii.gz"].startswith("BIDS _dwi image (diffusion)")
    assert reasons["sub-01_phasediff.nii.gz"].startswith("BIDS _phasediff image (field map)")
    f = ScanFilter()
    _, skipped = discover([root], channels=ChannelPlan(2, ("t1", "t2")), pre_filter=lambda r: why_skipped(r, f))
    assert sum("BIDS _bold" in s.reason for s in skipped) == 1
    kept, _ = apply_filter(refs, ScanFilter(include=("sub-*/func/*",)))
    assert len(kept) == 5


def test_inspect_gives_an_image_file_no_anatomical_orientation(tmp_path: Path) -> None:
    from mri_lrp.scans import inspect_rows

    _picture_with_a_bright_top_left(tmp_path / "slice.png")
    (row,) = inspect_rows([tmp_path])
    assert row["orientation"] == "none (image file)" and row["kind"] == "image"


def test_alpha_beta_creating_relevance_is_told_the_rule_that_conserves_and_that_rule_does() -> None:
    """The note used to advise 'use alpha-beta' to a run already using alpha-beta. A net whose neurons see inputs
    of one sign only (all weights and inputs positive) creates relevance under alpha=2, beta=1; zplus conserves."""
    import warnings

    import torch
    from torch import nn

    from mri_lrp.lrp.explain import explain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv3d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4 * 4, 2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.abs_()
        model[3].weight[1].neg_()  # the explained class still has positive weights only
    x = torch.rand(1, 1, 6, 6, 6) + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (note,) = explain(model, x, target=0).notes()
    assert note.startswith("the explanation creates relevance") and "--rule zplus conserves" in note
    assert explain(model, x, target=0, rule="zplus").notes() == [""]


def test_a_colour_image_for_a_grey_model_is_refused_with_what_to_do(tmp_path: Path) -> None:
    from mri_lrp.errors import ScanError
    from mri_lrp.model.transform import to_model
    from mri_lrp.scans import read_scan

    rgb = np.zeros((20, 16, 3), np.uint8)
    rgb[4:12, 4:10] = (200, 30, 60)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    (ref,) = discover([tmp_path])[0]
    with pytest.raises(ScanError, match=r"has 3 channels, the model takes 1; save it as grey \(as Image.convert"):
        to_model(read_scan(ref), InputSpec(dims=2, channels=1))


def test_the_public_jpeg_layout_with_an_imagenet_style_model_through_the_cli(tmp_path: Path) -> None:
    """Training/{glioma,...}/*.jpg (grey saved as RGB or L) with a 3-channel 2D model: exit 0, no case warnings,
    picture-quarter regions, no hemispheres."""
    import csv

    import torch
    from typer.testing import CliRunner

    from mri_lrp.cli import app
    from mri_lrp.model.zoo import build_model

    root = tmp_path / "Training"
    for n, label in enumerate(("glioma", "notumor")):
        (root / label).mkdir(parents=True)
        grey = np.zeros((40, 32), np.uint8)
        grey[5:35, 4:28] = 90 + 40 * n
        Image.fromarray(grey, mode="L").save(root / label / f"Tr-{label[:2]}_0000.jpg")
        Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(root / label / f"Tr-{label[:2]}_0001.jpg")
    torch.manual_seed(0)
    torch.save(build_model("cnn2d", in_channels=3, num_classes=2, width=2, depth=1).state_dict(), tmp_path / "m.pth")
    config = tmp_path / "c.toml"
    config.write_text('model = "mri_lrp.model.zoo:cnn2d"\nmodel_kwargs = { in_channels = 3, num_classes = 2, '
                      'width = 2, depth = 1 }\nclass_names = ["glioma", "notumor"]\n[input_spec]\ndims = 2\n'
                      'channels = 3\nshape = [32, 32]\nresize = true\nnormalization = "imagenet"\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["explain", str(root), "--checkpoint", str(tmp_path / "m.pth"), "--config",
                                   str(config), "--out", str(out), "--workers", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    with (out / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and all(r["status"] == "ok" and "fits no case" not in r["warnings"] for r in rows)
    with (out / "regions.csv").open(newline="") as f:
        names = {r["region_name"] for r in csv.DictReader(f)}
    assert names == {"outside_head", "image_top_left", "image_top_right", "image_bottom_left", "image_bottom_right"}
    from mri_lrp.report.preview import read_preview

    # The report's viewer draws no anatomical side letters on a picture either.
    assert all(read_preview(p)["world"] is False for p in out.glob("scans/*/preview.js"))


def test_an_msd_stack_for_a_single_channel_model_is_one_scan_per_volume_and_each_says_so(tmp_path: Path) -> None:
    """A 1-channel model given an MSD 4D stack: each volume explained alone, which the scan's warnings now state;
    the same stack for a 4-channel model is one case without that note."""
    from mri_lrp.scans import read_scan

    msd(tmp_path)
    refs, _ = discover([tmp_path])
    assert [r.scan_id for r in refs] == [f"imagesTr__BRATS_007_vol{v:04d}" for v in range(4)]
    assert all(f"volume {v} of a 4D file, explained as a scan of its own" in " ".join(read_scan(r).warnings)
               for v, r in enumerate(refs))
    (only,) = discover([tmp_path], volume=2)[0]
    assert not only.notes
    (case,) = discover([tmp_path], channels=ChannelPlan(4, ("t1", "t1ce", "t2", "flair")))[0]
    assert not any("explained as a scan of its own" in w for w in read_scan(case).warnings)


def test_ids_that_differ_only_in_case_get_their_own_folders(tmp_path: Path) -> None:
    """'Image (1).JPG' and 'image (1).jpg' (the public sets have both) gave ids differing only in case: one
    folder on macOS, Windows and SMB shares, so one scan's outputs overwrote the other's."""
    from mri_lrp.scans.ids import make_unique

    assert make_unique(["Image__1_", "image__1_", "IMAGE__1__2"]) == ["Image__1_", "image__1__3", "IMAGE__1__2"]
    grey = np.full((12, 12), 80, np.uint8)
    for name in ("Image (1).JPG", "image (1).jpg"):
        Image.fromarray(grey).save(tmp_path / name)
    ids = [r.scan_id for r in discover([tmp_path])[0]]
    assert len({i.casefold() for i in ids}) == 2
