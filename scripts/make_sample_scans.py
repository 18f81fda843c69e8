"""Write sample_scans/: synthetic heads of real anatomy, as NIfTI and DICOM series, with their lesion masks.

``t1/`` holds single-contrast scans (contrast-enhanced T1, one per file or DICOM series) of every class;
``brats/`` holds four-sequence cases named as BraTS 2023 names them, each with its segmentation. The heads come
from ``mri_lrp.mni_heads`` (the MNI152 template, read from nilearn's files only here). The command is
deterministic: the same command writes the same voxels, headers and DICOM UIDs. The seeds are far from the ones
the demo models train and are evaluated on, so the sample scans are new to them.

    python scripts/make_sample_scans.py [--out sample_scans] [--per-class 3] [--dicom 2] [--cases 3]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from mri_lrp.dicom_write import write_dicom_series
from mri_lrp.mni_heads import LABELS, TEMPLATE_NOTICE, Head, generate_head

SEED_BASE = 900_000   # training uses seeds below 500 000, evaluation 500 000 and up; see scripts/train_demo.py
CASE_SEED_BASE = 910_000
SPACING_RANGE = (2.2, 2.8)  # modest grids (about 70-100 voxels per axis) keep the folder a few MB
BRATS_TAGS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}  # BraTS 2023 file suffixes
CASE_LABELS = ("glioma", "meningioma", "pituitary")


def save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, label: bool = False) -> None:
    """int16 NIfTI with the affine in both sform and qform (code 1, scanner), as converters write them.

    Masks are marked as label maps (NIfTI intent 'label'), so scan discovery knows they are not scans.
    """
    img = nib.Nifti1Image(data, affine)
    if label:
        img.header.set_intent("label")
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = b"mri-lrp synthetic head (MNI152 anatomy)"
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)


def as_int16(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.round(volume), 0, np.iinfo(np.int16).max).astype(np.int16)


def t1_head(n: int, label: str) -> Head:
    """Sample scan ``n`` (1-based) of the single-contrast set."""
    return generate_head(SEED_BASE + n, label, sequences=("t1ce",), spacing_range=SPACING_RANGE)


def case_head(n: int, label: str) -> Head:
    """Case ``n`` (1-based) of the four-sequence set."""
    return generate_head(CASE_SEED_BASE + n, label, sequences=tuple(BRATS_TAGS), spacing_range=SPACING_RANGE)


def t1_order(per_class: int) -> list[str]:
    """Classes interleaved, so that a file's number says nothing about its class."""
    return [label for _ in range(per_class) for label in LABELS]


def make_t1(out: Path, per_class: int = 3, dicom: int = 2) -> list[dict[str, str]]:
    """The single-contrast set under ``out`` (overwriting it); one row per scan."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    order = t1_order(per_class)
    dicom_at = {round(i * len(order) / max(dicom, 1)) for i in range(dicom)} if dicom else set()
    for n, label in enumerate(order, start=1):
        head = t1_head(n, label)
        name = f"sub-{n:02d}"
        if n - 1 in dicom_at:
            source = f"dicom/{name}"
            shutil.rmtree(out / source, ignore_errors=True)  # no stale slices from an earlier grid
            write_dicom_series(as_int16(head.volume), head.affine, out / source, uid_seed=f"sample-{head.seed}",
                               series_description="T1 AX POST GD", series_number=n,
                               patient_id=f"SYNTHETIC-{n:02d}")
            mask_name = name
        else:
            source = f"{name}_T1w.nii.gz"
            save_nifti(as_int16(head.volume), head.affine, out / source)
            mask_name = f"{name}_T1w"
        mask = ""
        if head.mask.any():
            mask = f"masks/{mask_name}.nii.gz"
            save_nifti(head.mask, head.affine, out / mask, label=True)
        rows.append(_describe(source, mask, head))
    return rows


def case_name(n: int) -> str:
    return f"BraTS-DEMO-{n:05d}-000"


def make_brats(out: Path, cases: int = 3) -> list[dict[str, str]]:
    """The four-sequence set under ``out``: a folder per case, BraTS 2023 names, a segmentation and a mask."""
    rows = []
    for n in range(1, cases + 1):
        label = CASE_LABELS[(n - 1) % len(CASE_LABELS)]
        head = case_head(n, label)
        case = case_name(n)
        for sequence, tag in BRATS_TAGS.items():
            save_nifti(as_int16(head.volumes[sequence]), head.affine, out / case / f"{case}-{tag}.nii.gz")
        save_nifti(head.parts, head.affine, out / case / f"{case}-seg.nii.gz", label=True)
        mask = f"masks/{case}.nii.gz"
        save_nifti(head.mask, head.affine, out / mask, label=True)
        rows.append(_describe(f"{case}/", mask, head))
    return rows


def _describe(source: str, mask: str, head: Head) -> dict[str, str]:
    shape = "x".join(str(n) for n in head.volume.shape)
    spacing = "x".join(f"{s:.2f}" for s in head.spacing)
    return {"file": source, "class": head.label, "mask": mask or "(none: no tumour)", "grid": shape,
            "spacing_mm": spacing, "orientation": head.orientation, "seed": str(head.seed)}


def _table(rows: list[dict[str, str]]) -> list[str]:
    header = ["file", "class", "mask", "grid", "spacing_mm", "orientation", "seed"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return table + ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]


def readme(t1_rows: list[dict[str, str]], case_rows: list[dict[str, str]]) -> str:
    return "\n".join([
        "# Sample scans",
        "",
        "Synthetic MR heads of real anatomy (no patient data) made by `scripts/make_sample_scans.py` with",
        "`mri_lrp.mni_heads`: the MNI152 2009 template and its tissue maps, deformed per subject (size, shape,",
        "asymmetry, pose), with skull and scalp, a bias field, Rician noise and grids of different spacing and",
        "axis orientation. Each tumour class as it appears on contrast-enhanced T1:",
        "",
        "- `glioma`: in white matter, an enhancing rim around a necrotic core, with oedema (bright on T2/FLAIR);",
        "- `meningioma`: on the dura, a homogeneously enhancing dome under the skull;",
        "- `pituitary`: an adenoma at the sella, growing upwards;",
        "- `no_tumour`: a head without a lesion.",
        "",
        "## `t1/`: contrast-enhanced T1, one scan each",
        "",
        "NIfTI files are int16 with sform and qform set. The `dicom/` folders are multi-file MR DICOM series",
        "(one file per slice, meaningless file names, non-identifying tags). `masks/` holds the ground-truth",
        "lesion mask of each tumour scan on the scan's own grid, named after the file stem or series folder;",
        "for gliomas it covers the whole lesion including oedema. The demo models never saw these scans.",
        "",
        *_table(t1_rows),
        "",
        "## `brats/`: four sequences per case",
        "",
        "One folder per case, named as BraTS 2023 names them: `-t1n` (T1), `-t1c` (T1ce), `-t2w` (T2) and",
        "`-t2f` (FLAIR), all on one grid. `-seg.nii.gz` is the segmentation with BraTS 2023 labels (1 necrotic",
        "core, 2 oedema, 3 enhancing tumour): a file named `-seg`, `_seg`, `_mask` or `_label` (and any image",
        "whose voxels are a few whole numbers) is never read as a scan. `masks/` holds each case's whole-tumour",
        "mask, named after the case, for `--masks`.",
        "",
        *_table(case_rows),
        "",
        "Explain them with the shipped demo models and score the relevance against the masks:",
        "",
        "    mri-lrp explain sample_scans/t1 --masks sample_scans/t1/masks --out demo_out/t1",
        "    mri-lrp explain sample_scans/brats --checkpoint mri_lrp/data/demo_multiseq.pt \\",
        "        --masks sample_scans/brats/masks --out demo_out/brats",
        "",
        "## Licence of the anatomy",
        "",
        TEMPLATE_NOTICE,
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_scans")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--dicom", type=int, default=2, help="how many of the t1/ scans to write as DICOM series")
    parser.add_argument("--cases", type=int, default=3, help="four-sequence cases in brats/")
    args = parser.parse_args()
    t1_rows = make_t1(args.out / "t1", args.per_class, args.dicom)
    case_rows = make_brats(args.out / "brats", args.cases)
    (args.out / "README.md").write_text(readme(t1_rows, case_rows))
    for row in t1_rows + case_rows:
        print(f"{row['file']:28s} {row['class']:11s} {row['grid']:12s} {row['orientation']}")


if __name__ == "__main__":
    main()
