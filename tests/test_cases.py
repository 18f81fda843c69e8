"""Cases: files grouped into multi-channel model inputs in every layout, and read onto one grid."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from case_factory import (
    AFFINE,
    GLOBS,
    LAYOUTS,
    NAMES,
    OWN_GLOBS,
    SHAPE,
    box,
    brats2021,
    channel_volumes,
    dicom_study,
    flat_prefixed,
    globbed,
    label_map,
    per_patient,
    save,
)

from mri_lrp.errors import ScanError, SettingsError
from mri_lrp.model.spec import InputSpec
from mri_lrp.scans import discover, read_scan
from mri_lrp.scans.case_match import ChannelPlan, description_sequence, sequence_of
from mri_lrp.scans.cases import channel_files_text
from mri_lrp.scans.channels import resample_linear

PLAN = ChannelPlan(4, NAMES)


def cases(root: Path, plan: ChannelPlan | None = PLAN):
    return discover([root], channels=plan)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_gives_one_case_with_every_file_in_its_own_channel(tmp_path: Path, layout: str) -> None:
    expected = LAYOUTS[layout](tmp_path)
    plan = ChannelPlan(4, NAMES, tuple(GLOBS.items()) if layout == "globs" else ())
    refs, skipped = cases(tmp_path, plan)
    assert len(refs) == 1, [r.scan_id for r in refs]
    ref = refs[0]
    assert ref.error == "" and ref.channels == NAMES
    scan = read_scan(ref)
    assert scan.data.shape == (4, *expected.shape[1:]) and scan.channels == NAMES
    np.testing.assert_array_equal(scan.data, expected)
    assert not any("resampled" in w for w in scan.warnings)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", ref.scan_id) for ref in refs)
    # segmentations and label folders are reported, never read as channels or scans
    assert not any("seg" in p or "labelsTr" in p for p in ref.paths)


def test_case_ids_come_from_the_case_folder_or_prefix_and_are_unique(tmp_path: Path) -> None:
    brats2021(tmp_path / "a")
    brats2021(tmp_path / "b")
    brats2021(tmp_path / "a", case="BraTS2021_00008")
    refs, _ = cases(tmp_path)
    assert [r.scan_id for r in refs] == ["a__BraTS2021_00007", "a__BraTS2021_00008", "b__BraTS2021_00007"]
    assert [r.source for r in refs] == ["a/BraTS2021_00007", "a/BraTS2021_00008", "b/BraTS2021_00007"]


def test_files_of_several_cases_in_one_folder_split_by_their_prefix(tmp_path: Path) -> None:
    vols = channel_volumes()
    for case in ("P1", "P2"):
        for c, tag in enumerate(("t1", "t1ce", "t2", "flair")):
            save(vols[c], tmp_path / "flat" / f"{case}_{tag}.nii.gz")
    refs, _ = cases(tmp_path)
    assert [(r.scan_id, len(r.parts)) for r in refs] == [("flat__P1", 4), ("flat__P2", 4)]
    assert refs[0].location.endswith("flat/P1*")


def test_a_seg_file_is_never_a_scan_for_any_model(tmp_path: Path) -> None:
    brats2021(tmp_path)
    for plan in (None, PLAN):
        refs, skipped = cases(tmp_path, plan)
        assert not any(p.endswith("_seg.nii.gz") for r in refs for p in r.paths)
        assert any(s.path.endswith("_seg.nii.gz") and "segmentation or mask" in s.reason for s in skipped)
    single, _ = cases(tmp_path, None)
    assert len(single) == 4 and all(not r.parts for r in single)


def test_a_label_map_under_a_plain_name_fails_as_one_clear_row(tmp_path: Path) -> None:
    save(label_map(), tmp_path / "tumour.nii.gz")
    (ref,), _ = cases(tmp_path, None)
    with pytest.raises(ScanError, match=r"only the whole numbers 0, 1, 2, 4: a label map"):
        read_scan(ref)


def test_a_freesurfer_subject_gives_its_images_and_never_its_segmentations(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(5)
    mri = tmp_path / "bert" / "mri"
    mri.mkdir(parents=True)
    t1 = np.clip(rng.normal(110, 40, (32, 32, 32)), 0, 255).astype(np.uint8)  # conformed 8-bit images
    labels = np.array([2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 41, 42, 43, 44, 46, 47,
                       49, 50, 51, 52, 53, 54, 58, 60, 77, 85, 251, 252, 253, 254, 255])
    aseg = np.zeros((32, 32, 32), np.int32)
    aseg[4:28, 4:28, 4:28] = rng.choice(labels, (24, 24, 24))
    for name, data in [("T1", t1), ("brain", t1), ("aseg", aseg), ("aparc+aseg", aseg), ("wmparc", aseg),
                       ("lh.ribbon", (aseg > 40).astype(np.uint8))]:
        nib.save(nib.MGHImage(data, AFFINE), mri / f"{name}.mgz")
    refs, skipped = cases(tmp_path, None)
    assert sorted(Path(r.source).name for r in refs) == ["T1.mgz", "brain.mgz"]
    assert {Path(s.path).name for s in skipped if "FreeSurfer segmentation" in s.reason} == \
        {"aseg.mgz", "aparc+aseg.mgz", "wmparc.mgz", "lh.ribbon.mgz"}
    assert all(read_scan(r).shape == (32, 32, 32) for r in refs)


def test_a_parcellation_under_a_plain_name_fails_as_a_label_map_but_a_scaled_image_does_not(tmp_path: Path) -> None:
    import nibabel as nib

    rng = np.random.default_rng(6)
    parcels = np.zeros((32, 32, 32), np.int16)
    parcels[4:28, 4:28, 4:28] = rng.choice(np.array([3, 8, 11, 17, 28, 41, 52, 60, 77, 251, 1021, 2035]),
                                           (24, 24, 24))
    nib.save(nib.Nifti1Image(parcels, AFFINE), tmp_path / "atlas_in_subject_space.nii.gz")
    # An 8-bit image stored as 16 bits (times 257): few levels far apart, but evenly spaced: an image.
    nib.save(nib.Nifti1Image((rng.integers(0, 200, (32, 32, 32)) * 257).astype(np.uint16), AFFINE),
             tmp_path / "scaled.nii.gz")
    refs, _ = cases(tmp_path, None)
    by_id = {r.scan_id: r for r in refs}
    with pytest.raises(ScanError, match=r"holds only 13 whole numbers from 0 to 2035, far apart: a label map"):
        read_scan(by_id["atlas_in_subject_space"])
    assert read_scan(by_id["scaled"]).shape == (32, 32, 32)


def test_nnunet_labels_folder_is_skipped(tmp_path: Path) -> None:
    LAYOUTS["nnunet"](tmp_path)
    refs, skipped = cases(tmp_path, None)
    assert len(refs) == 4
    assert any("labelsTr" in s.path and "nnU-Net" in s.reason for s in skipped)


def test_a_missing_channel_makes_one_failure_that_names_what_was_found(tmp_path: Path) -> None:
    brats2021(tmp_path)
    next(tmp_path.rglob("*_t1ce.nii.gz")).unlink()
    (ref,), _ = cases(tmp_path)
    assert "missing channel(s) t1ce" in ref.error and "flair = BraTS2021_00007_flair.nii.gz" in ref.error
    with pytest.raises(ScanError, match="missing channel"):
        read_scan(ref)


def test_two_files_for_one_channel_are_refused_not_guessed(tmp_path: Path) -> None:
    LAYOUTS["bids"](tmp_path)
    save(channel_volumes()[0], tmp_path / "sub-07" / "ses-1" / "anat" / "sub-07_ses-1_acq-fast_T1w.nii.gz")
    (ref,), _ = cases(tmp_path)
    assert ref.scan_id == "sub-07_ses-1"
    assert "several files for one channel (t1: sub-07_ses-1_T1w.nii.gz, sub-07_ses-1_acq-fast_T1w.nii.gz" \
        in ref.error


def test_named_layouts_without_channel_names_ask_for_them(tmp_path: Path) -> None:
    brats2021(tmp_path)
    (ref,), _ = cases(tmp_path, ChannelPlan(4))
    assert "set [input_spec] channel_names" in ref.error


def test_index_layouts_need_no_names_and_take_dataset_json_names(tmp_path: Path) -> None:
    expected = LAYOUTS["nnunet"](tmp_path)
    (ref,), _ = cases(tmp_path, ChannelPlan(4))
    assert ref.channels == ("T1", "T1Gd", "T2", "FLAIR")
    np.testing.assert_array_equal(read_scan(ref).data, expected)


def test_dataset_json_that_contradicts_the_model_is_a_warning_and_the_number_wins(tmp_path: Path) -> None:
    expected = LAYOUTS["nnunet"](tmp_path)
    meta = next(tmp_path.rglob("dataset.json"))
    meta.write_text(json.dumps({"channel_names": {"0": "FLAIR", "1": "T1Gd", "2": "T2", "3": "T1"}}))
    (ref,), _ = cases(tmp_path)
    scan = read_scan(ref)
    np.testing.assert_array_equal(scan.data, expected)
    assert any("dataset.json calls channel 0 'FLAIR' but the model's channel 0 is 't1'" in w for w in scan.warnings)


def test_a_4d_file_with_the_wrong_number_of_volumes_fails(tmp_path: Path) -> None:
    save(np.moveaxis(channel_volumes()[:3], 0, -1), tmp_path / "three.nii.gz")
    (ref,), _ = cases(tmp_path)
    assert "4D file has 3 volumes but the model takes 4 channels" in ref.error


def test_a_single_image_for_a_multichannel_model_carries_a_loud_warning(tmp_path: Path) -> None:
    save(channel_volumes()[0], tmp_path / "T1_only.nii.gz")
    (ref,), _ = cases(tmp_path)
    assert not ref.parts
    scan = read_scan(ref)
    assert scan.data.ndim == 3
    assert any(w.startswith("warning:") and "fits no case of the model's 4 channels" in w for w in scan.warnings)


def test_a_sequence_the_model_does_not_take_is_skipped_with_a_reason(tmp_path: Path) -> None:
    brats2021(tmp_path)
    refs, skipped = cases(tmp_path, ChannelPlan(2, ("t1", "flair")))
    assert len(refs) == 1 and len(refs[0].parts) == 2
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert "none of the model's channels (t1, flair)" in reasons["BraTS2021_00007_t1ce.nii.gz"]


def test_overlapping_channel_globs_are_refused(tmp_path: Path) -> None:
    brats2021(tmp_path)
    globs = (("t1", "*_t1*.nii.gz"), ("t1ce", "*_t1ce.nii.gz"), ("t2", "*_t2.nii.gz"), ("flair", "*_flair.nii.gz"))
    (ref,), skipped = cases(tmp_path, ChannelPlan(4, NAMES, globs))
    assert any("matches the channel_files globs of t1 and t1ce" in s.reason for s in skipped)
    assert "missing channel(s) t1ce" in ref.error


def test_case_refs_pickle_for_the_reader_processes(tmp_path: Path) -> None:
    brats2021(tmp_path)
    (ref,), _ = cases(tmp_path)
    assert pickle.loads(pickle.dumps(ref)) == ref


@pytest.mark.parametrize("name, sequence", [("T1Gd", "t1ce"), ("t1c", "t1ce"), ("T1w", "t1"), ("t2f", "flair"),
                                            ("T2-FLAIR", "flair"), ("T2w", "t2"), ("adc", None)])
def test_channel_names_map_to_sequences(name: str, sequence: str | None) -> None:
    assert sequence_of(name) == sequence


@pytest.mark.parametrize("description, sequence", [
    ("T1 AX POST GD", "t1ce"), ("t1_mprage_sag_p2_iso+C", "t1ce"), ("AX T1 SE", "t1"), ("Ax T2 FLAIR", "flair"),
    ("T2W_TSE_TRA", "t2"), ("T2* GRE", None), ("DWI b1000", None), ("3-plane localizer", None),
    ("POST-CONTRAST 3D T1", "t1ce"), ("sag T1 posterior fossa", "t1"), ("AX T1 FLAIR", "t1"),
    ("T1_FLAIR_POST GD", "t1ce")])
def test_series_descriptions_map_to_sequences(description: str, sequence: str | None) -> None:
    assert description_sequence(description) == sequence


# ------------------------------------------------------------------------------------------- other grids

def _world(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _linear(world: np.ndarray) -> np.ndarray:
    return (3.0 * world[..., 0] - 2.0 * world[..., 1] + 0.5 * world[..., 2] + 400.0).astype(np.float32)


def test_resampling_reproduces_a_linear_image_exactly_inside_the_other_grid() -> None:
    # Trilinear interpolation is exact for a function linear in world space: an independent reference.
    rot = np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])
    src_affine = np.eye(4)
    src_affine[:3, :3] = rot @ np.diag([0.7, 0.9, 1.5])
    src_affine[:3, 3] = [14.0, -34.0, 2.0]
    src_shape = (40, 36, 16)
    values, inside = resample_linear(_linear(_world(src_shape, src_affine)), src_affine, SHAPE, AFFINE)
    coords = _world(SHAPE, AFFINE) @ np.linalg.inv(src_affine)[:3, :3].T + np.linalg.inv(src_affine)[:3, 3]
    within = np.all((coords >= 0) & (coords <= np.asarray(src_shape) - 1), axis=-1)
    assert within.sum() > 0.5 * within.size
    np.testing.assert_allclose(values[within], _linear(_world(SHAPE, AFFINE))[within], rtol=1e-5)
    assert 0 < inside <= 1


def test_a_channel_on_another_grid_is_resampled_onto_the_first_and_the_warning_says_so(tmp_path: Path) -> None:
    vols = brats2021(tmp_path)
    flair = next(tmp_path.rglob("*_flair.nii.gz"))
    fine = AFFINE.copy()
    fine[:3, :3] = AFFINE[:3, :3] / 2  # half the voxel size, same origin: every first-grid voxel is a fine one
    big = np.zeros((24, 20, 16), dtype=np.float32)
    big[::2, ::2, ::2] = vols[3]
    save(big, flair, fine)
    (ref,), _ = cases(tmp_path)
    scan = read_scan(ref)
    np.testing.assert_allclose(scan.data[3], vols[3], rtol=1e-5)  # float32 sample positions
    np.testing.assert_array_equal(scan.data[:3], vols[:3])
    assert any(w.startswith("flair resampled (trilinear, world space) onto the t1 grid") for w in scan.warnings)


def test_channels_that_share_no_point_in_world_space_are_refused(tmp_path: Path) -> None:
    vols = brats2021(tmp_path)
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    save(vols[2], next(tmp_path.rglob("*_t2.nii.gz")), far)
    (ref,), _ = cases(tmp_path)
    with pytest.raises(ScanError, match="share no point in world space"):
        read_scan(ref)


def test_dicom_series_on_other_grids_are_resampled_within_their_study(tmp_path: Path) -> None:
    from dicom_factory import AXIAL, Geometry, write_series

    fine = Geometry(pixel_spacing=(0.3, 0.25), slice_step=(0.0, 0.0, 1.0), origin=AXIAL.origin)
    descriptions = ("T1 AX", "T1 AX +C", "T2 AX", "FLAIR AX")
    for c, description in enumerate(descriptions):
        geometry, n, size = (fine, 11, 32) if c == 2 else (AXIAL, 6, 16)
        write_series(tmp_path / "study" / f"s{c}", geometry, n_slices=n, rows=size, cols=size,
                     series_number=c + 1, description=description)
    (ref,), _ = cases(tmp_path)
    scan = read_scan(ref)
    assert scan.data.shape == (4, 16, 16, 6)
    assert any(w.startswith("t2 resampled") for w in scan.warnings)
    assert [p.series_description for p in ref.parts] == list(descriptions)


# --------------------------------------------------------------------------------------------- the spec

def test_channel_names_and_globs_come_from_the_config_spec() -> None:
    spec = InputSpec.from_dict({"channels": 4, "channel_names": list(NAMES), "channel_files": GLOBS})
    assert spec.channel_names == NAMES
    assert InputSpec.from_dict(spec.to_dict()) == spec
    assert ChannelPlan.of(spec) == ChannelPlan(4, NAMES, tuple(GLOBS.items()))
    assert ChannelPlan.of(InputSpec()) is None


@pytest.mark.parametrize("names, globs, message", [
    (("t1", "T1"), {}, "repeat a name"),
    (("t1", "t 2"), {}, "letters, digits"),
    (("all", "t2"), {}, "not 'all'"),
    (("t1", "t2"), {"t1": "*_t1.nii"}, "one glob per channel name"),
    ((), {"t1": "*_t1.nii", "t2": "*_t2.nii"}, "needs channel_names"),
])
def test_bad_channel_names_are_refused_with_the_reason(names: tuple, globs: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        ChannelPlan.of(InputSpec(channels=2, channel_names=names, channel_files=globs))


def test_the_brats_example_config_groups_a_brats_folder_into_cases(tmp_path: Path) -> None:
    from mri_lrp.settings import build_settings

    brats2021(tmp_path, "BraTS2021_00000")
    config = Path(__file__).resolve().parents[1] / "configs" / "brats-4channel.toml"
    (tmp_path.parent / "best_model.pth").touch()
    settings = build_settings({"scans": (str(tmp_path),), "checkpoint": str(tmp_path.parent / "best_model.pth")},
                              str(config))
    plan = ChannelPlan.of(InputSpec.from_dict(settings.input_spec))
    assert plan == ChannelPlan(4, NAMES)
    (ref,), skipped = cases(tmp_path, plan)
    assert ref.scan_id == "BraTS2021_00000" and len(ref.parts) == 4
    assert [Path(s.path).name for s in skipped] == ["BraTS2021_00000_seg.nii.gz"]


def test_inspect_with_a_config_lists_cases_and_their_problems(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    brats2021(tmp_path / "data", "BraTS2021_00000")
    brats2021(tmp_path / "data", "BraTS2021_00001")
    next(tmp_path.rglob("BraTS2021_00001_flair.nii.gz")).unlink()
    config = tmp_path / "c.toml"
    config.write_text('[input_spec]\nchannels = 4\nchannel_names = ["t1", "t1ce", "t2", "flair"]\n')
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "data"), "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    listed = json.loads(res.output)
    rows = {r["scan_id"]: r for r in listed if r["scan_id"]}
    assert list(rows) == ["BraTS2021_00000", "BraTS2021_00001"]
    assert rows["BraTS2021_00000"]["channels"] == list(NAMES) and rows["BraTS2021_00000"]["status"] == "ok"
    assert rows["BraTS2021_00000"]["source"].endswith("data/BraTS2021_00000")
    assert "missing channel(s) flair" in rows["BraTS2021_00001"]["problems"][0]
    assert sorted(Path(r["source"]).name for r in listed if r["kind"] == "skipped") == [
        "BraTS2021_00000_seg.nii.gz", "BraTS2021_00001_seg.nii.gz"]


def test_an_empty_channel_is_named_in_the_warnings(tmp_path: Path) -> None:
    brats2021(tmp_path)
    save(np.zeros(SHAPE, np.float32), next(tmp_path.rglob("*_t2.nii.gz")))
    (ref,), _ = cases(tmp_path)
    assert "t2: every voxel is 0: this channel has no contrast" in read_scan(ref).warnings


def test_a_4d_stack_whose_dataset_json_disagrees_with_the_model_warns(tmp_path: Path) -> None:
    LAYOUTS["msd"](tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd",
                                                                    "3": "T2w"}}))
    (ref,), _ = cases(tmp_path)
    assert any("dataset.json calls channel 0 'FLAIR' but the model's channel 0 is 't1'" in n for n in ref.notes)
    (unnamed,), _ = cases(tmp_path, ChannelPlan(4))
    assert unnamed.channels == ("FLAIR", "T1w", "t1gd", "T2w")


def test_the_overlay_shows_each_sequence_with_its_own_relevance_side_by_side() -> None:
    from mri_lrp.render import compose_channels

    data = channel_volumes() + 10.0
    rel = np.zeros_like(data)
    rel[2][box(2)] = np.linspace(-1.0, 1.0, int(box(2).sum()))
    overlay = compose_channels(data, rel.sum(axis=0), AFFINE, channels=NAMES, channel_relevance=rel, title="case")
    assert len(overlay.panels) == 3 * len(NAMES)
    lefts = sorted({p.left for p in overlay.panels if p.plane == "axial"})
    assert len(lefts) == len(NAMES)
    for panel in overlay.panels:
        pixels = overlay.rgb[panel.top:panel.top + panel.height, panel.left:panel.left + panel.width].astype(int)
        r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
        # bwr's reds and blues keep green at the smaller of red and blue; grey has r = b, yellow letters g > b
        coloured = (np.abs(r - b) > 30) & (np.abs(g - np.minimum(r, b)) < 20)
        column = lefts.index(min(lefts, key=lambda x: abs(x - panel.left)))
        assert coloured.any() == (column == 2), (panel.plane, column)


def test_named_layouts_follow_the_models_channel_order_not_the_files(tmp_path: Path) -> None:
    vols = brats2021(tmp_path)
    order = ("flair", "T1Gd", "t2", "T1")  # another model's order and spelling
    (ref,), _ = cases(tmp_path, ChannelPlan(4, order))
    np.testing.assert_array_equal(read_scan(ref).data, vols[[3, 1, 2, 0]])
    assert ref.channels == order


def test_images_beside_a_case_that_fit_none_of_its_channels_are_skipped_not_explained(tmp_path: Path) -> None:
    from dicom_factory import AXIAL, write_series

    LAYOUTS["dicom"](tmp_path / "dicom")
    write_series(tmp_path / "dicom" / "study" / "dwi", AXIAL, n_slices=6, rows=16, cols=16, series_number=40,
                 description="DWI b1000")
    vols = brats2021(tmp_path / "nifti")
    save(vols[0], tmp_path / "nifti" / "BraTS2021_00007" / "bias_field.nii.gz")
    save(vols[0], tmp_path / "elsewhere" / "lonely.nii.gz")
    refs, skipped = cases(tmp_path)
    assert sorted(len(r.parts) for r in refs) == [0, 4, 4]
    assert [r.source for r in refs if not r.parts] == ["elsewhere/lonely.nii.gz"]
    reasons = {Path(s.path).name: s.reason for s in skipped}
    assert reasons["dwi"].startswith("beside case dicom__study but none of its channels")
    assert reasons["bias_field.nii.gz"].startswith("beside case nifti__BraTS2021_00007")


def test_numbered_files_outside_nnunet_folders_are_single_images_not_channels(tmp_path: Path) -> None:
    vols = channel_volumes()
    for n in range(4):
        save(vols[n], tmp_path / "export" / f"scan_{n:04d}.nii.gz")
    refs, _ = cases(tmp_path)
    assert len(refs) == 4 and not any(r.parts for r in refs)
    assert all(any("fits no case" in n for n in r.notes) for r in refs)


OWN_LAYOUTS = {  # layout -> (builder, the case ids of two patients: None for one DICOM study)
    "per_patient": (per_patient, ("patient_A", "patient_B")),
    "per_sequence": (globbed, ("patient07", "patient08")),
    "flat_prefixed": (flat_prefixed, ("export__P1", "export__P2")),
    "dicom": (dicom_study, None),
}


def _inspect_cases(root: Path, config: Path) -> dict[str, dict]:
    from typer.testing import CliRunner

    from mri_lrp.cli import app

    res = CliRunner().invoke(app, ["inspect", str(root), "--config", str(config), "--json"])
    assert res.exit_code == 0, res.output
    return {r["scan_id"]: r for r in json.loads(res.output) if r["kind"] != "skipped"}


@pytest.mark.parametrize("layout", sorted(OWN_LAYOUTS))
def test_channel_globs_group_each_own_layout_into_its_cases_as_inspect_shows(tmp_path: Path, layout: str) -> None:
    build, ids = OWN_LAYOUTS[layout]
    data = tmp_path / "data"
    if ids is None:
        expected = {"study": build(data)}
    else:
        expected = {ids[0]: build(data, ids[0].rpartition("__")[2], seed=0),
                    ids[1]: build(data, ids[1].rpartition("__")[2], seed=1)}
    globs = OWN_GLOBS[layout]
    config = tmp_path / "c.toml"
    config.write_text('[input_spec]\nchannels = 4\nchannel_names = ["t1", "t1ce", "t2", "flair"]\n'
                      "[input_spec.channel_files]\n" + "".join(f'{k} = "{v}"\n' for k, v in globs.items()))
    rows = _inspect_cases(data, config)
    assert len(rows) == len(expected), rows
    assert all(r["status"] == "ok" and r["channels"] == list(NAMES) for r in rows.values()), rows
    if ids is not None:
        assert sorted(rows) == sorted(ids)
    refs, _ = cases(data, ChannelPlan(4, NAMES, tuple(globs.items())))
    for ref in refs:
        listed = rows[ref.scan_id]["channel_files"]
        assert [part.split(" = ")[0] for part in listed.split(", ")] == list(NAMES)
        want = expected["study"] if ids is None else expected[ref.scan_id]
        np.testing.assert_array_equal(read_scan(ref).data, want)


def test_a_folder_per_patient_is_one_case_whatever_each_glob_matched(tmp_path: Path) -> None:
    per_patient(tmp_path, "patient_A")
    (ref,), skipped = cases(tmp_path, ChannelPlan(4, NAMES, tuple(OWN_GLOBS["per_patient"].items())))
    assert ref.error == "" and ref.scan_id == "patient_A" and not skipped
    assert channel_files_text(ref) == ("t1 = T1_pre.nii.gz, t1ce = T1_post_gd.nii.gz, t2 = T2_tse.nii.gz, "
                                       "flair = FLAIR_3d.nii.gz")


def test_a_patient_folder_with_two_files_for_one_channel_fails_naming_both(tmp_path: Path) -> None:
    per_patient(tmp_path, "patient_A")
    save(channel_volumes()[0], tmp_path / "patient_A" / "T1_pre_repeat.nii.gz")
    (ref,), _ = cases(tmp_path, ChannelPlan(4, NAMES, tuple(OWN_GLOBS["per_patient"].items())))
    assert "several files for one channel (t1: T1_pre.nii.gz, T1_pre_repeat.nii.gz)" in ref.error


def test_a_flat_folder_keeps_an_incomplete_prefix_apart_from_the_complete_ones(tmp_path: Path) -> None:
    flat_prefixed(tmp_path, "P1")
    flat_prefixed(tmp_path, "P2")
    next(tmp_path.rglob("P2_FLAIR.nii.gz")).unlink()
    refs, _ = cases(tmp_path, ChannelPlan(4, NAMES, tuple(OWN_GLOBS["flat_prefixed"].items())))
    assert [(r.scan_id, r.error) for r in refs][0] == ("export__P1", "")
    assert refs[1].scan_id == "export__P2" and "missing channel(s) flair" in refs[1].error
