"""Synthetic heads on the MNI152 template and the sample scans made of them: deterministic, masks on the lesions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mri_lrp.mni_heads import LABELS, SEQUENCES, TISSUES, generate_head, matched_set
from mri_lrp.scans.discover import discover

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_scans"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def glioma_set() -> list:
    return matched_set(11, ("glioma", "no_tumour"), sequences=SEQUENCES)


def test_the_same_seed_gives_the_same_head_voxel_for_voxel() -> None:
    first, again = generate_head(3, "meningioma"), generate_head(3, "meningioma")
    assert np.array_equal(first.volume, again.volume) and np.array_equal(first.mask, again.mask)
    assert np.array_equal(first.affine, again.affine)
    other = generate_head(4, "meningioma")
    assert other.volume.shape != first.volume.shape or not np.array_equal(other.volume, first.volume)


def test_asking_for_fewer_sequences_leaves_each_sequence_unchanged(glioma_set: list) -> None:
    alone = generate_head(11, "glioma", sequences=("flair",))
    assert np.array_equal(alone.volume, glioma_set[0].volumes["flair"])


def test_a_matched_set_differs_only_at_the_lesion_and_the_anatomy_it_pushes_aside(glioma_set: list) -> None:
    tumour, healthy = glioma_set
    assert np.array_equal(tumour.affine, healthy.affine) and not healthy.mask.any()
    mask = tumour.mask > 0
    difference = np.abs(tumour.volumes["t1ce"] - healthy.volumes["t1ce"])
    assert difference[mask].sum() > 0.8 * difference.sum()
    far = ~ndimage.binary_dilation(mask, iterations=15)
    assert difference[far].max() < 1e-2 * float(np.median(healthy.volumes["t1ce"][healthy.tissues > 0]))


def test_the_mask_holds_what_each_sequence_shows_of_the_glioma(glioma_set: list) -> None:
    tumour, _ = glioma_set
    mask = tumour.mask > 0
    white = (tumour.tissues == TISSUES["white_matter"]) & ~mask
    mean = {s: float(tumour.volumes[s][white].mean()) for s in SEQUENCES}
    core, oedema, enhancing = (tumour.parts == code for code in (1, 2, 3))
    assert np.array_equal(tumour.parts > 0, mask) and core.any() and oedema.any() and enhancing.any()
    assert tumour.volumes["t1ce"][enhancing].mean() > 1.3 * mean["t1ce"]      # enhancing rim
    assert tumour.volumes["t1ce"][core].mean() < 0.5 * mean["t1ce"]           # necrotic core
    assert tumour.volumes["flair"][oedema].mean() > 1.5 * mean["flair"]       # oedema on FLAIR
    assert tumour.volumes["t2"][oedema].mean() > 1.5 * mean["t2"]


@pytest.mark.parametrize("label", ["meningioma", "pituitary"])
def test_extra_axial_tumours_enhance_inside_their_mask(label: str) -> None:
    head = generate_head(5, label)
    mask = head.mask > 0
    white = head.volume[(head.tissues == TISSUES["white_matter"]) & ~mask].mean()
    assert 100 < mask.sum() and head.volume[mask].mean() > 1.15 * white
    brain = np.isin(head.tissues, [TISSUES["grey_matter"], TISSUES["white_matter"]])
    centre = np.argwhere(mask).mean(0)
    world = head.affine[:3, :3] @ centre + head.affine[:3, 3]
    middle = head.affine[:3, :3] @ ((np.asarray(mask.shape) - 1) / 2) + head.affine[:3, 3]
    if label == "pituitary":  # midline, low in the head: at the sella
        assert abs(world[0] - middle[0]) < 10 and world[2] < middle[2] - 15
    else:  # on the brain's surface: the mask touches brain and what lies outside it
        assert (ndimage.binary_dilation(mask, iterations=2) & brain).any()
        assert (ndimage.binary_dilation(mask, iterations=2) & ~brain & (head.tissues > 0)).any()


def test_no_tumour_has_an_empty_mask_and_every_label_is_known() -> None:
    assert not generate_head(2, "no_tumour").mask.any()
    with pytest.raises(ValueError, match="label"):
        generate_head(2, "astrocytoma")
    with pytest.raises(ValueError, match="sequences"):
        generate_head(2, "glioma", sequences=("dwi",))


def test_sample_scan_script_writes_both_sets_with_masks_and_readme(tmp_path: Path) -> None:
    module = _script("make_sample_scans")
    t1_rows = module.make_t1(tmp_path / "t1", per_class=1, dicom=1)
    case_rows = module.make_brats(tmp_path / "brats", cases=1)
    (tmp_path / "README.md").write_text(module.readme(t1_rows, case_rows))
    assert [r["class"] for r in t1_rows] == list(LABELS) and len(case_rows) == 1
    readme = (tmp_path / "README.md").read_text()
    assert "MNI152" in readme and "McGill" in readme and "-seg" in readme
    for row in t1_rows + case_rows:
        assert (tmp_path / ("t1" if row in t1_rows else "brats") / row["file"]).exists() and row["file"] in readme
    case = case_rows[0]["file"].rstrip("/")
    names = sorted(p.name for p in (tmp_path / "brats" / case).iterdir())
    assert names == sorted(f"{case}-{tag}.nii.gz" for tag in ("t1n", "t1c", "t2w", "t2f", "seg"))
    seg = nib.load(tmp_path / "brats" / case / f"{case}-seg.nii.gz")
    mask = nib.load(tmp_path / "brats" / "masks" / f"{case}.nii.gz")
    assert np.array_equal(np.asarray(seg.dataobj) > 0, np.asarray(mask.dataobj) > 0)
    assert set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2, 3}
    refs, skipped = discover([tmp_path / "brats"])
    assert sorted(r.source for r in refs) == sorted(f"{case}/{case}-{t}.nii.gz" for t in ("t1n", "t1c", "t2w", "t2f"))
    assert any("seg" in s.path for s in skipped)


def test_committed_sample_scans_are_what_the_script_writes() -> None:
    """The shipped folders hold what the script writes: same classes, same voxels, same masks."""
    module = _script("make_sample_scans")
    readme = (SAMPLES / "README.md").read_text()
    order = module.t1_order(3)
    for n in (2, 11):  # a meningioma and a pituitary, both NIfTI
        head = module.t1_head(n, order[n - 1])
        img = nib.load(SAMPLES / "t1" / f"sub-{n:02d}_T1w.nii.gz")
        assert f"| sub-{n:02d}_T1w.nii.gz | {order[n - 1]} |" in readme
        assert np.array_equal(np.asanyarray(img.dataobj), module.as_int16(head.volume))
        assert np.allclose(img.affine, head.affine)
        mask = nib.load(SAMPLES / "t1" / "masks" / f"sub-{n:02d}_T1w.nii.gz")
        assert np.array_equal(np.asanyarray(mask.dataobj), head.mask)
    case = module.case_name(1)
    head = module.case_head(1, module.CASE_LABELS[0])
    for sequence, tag in module.BRATS_TAGS.items():
        img = nib.load(SAMPLES / "brats" / case / f"{case}-{tag}.nii.gz")
        assert np.array_equal(np.asanyarray(img.dataobj), module.as_int16(head.volumes[sequence]))
