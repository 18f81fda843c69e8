"""Write sample_scans/: phantoms of every class as NIfTI and as multi-file DICOM series, with their masks.

Deterministic: the same command writes the same voxels, headers and DICOM UIDs. The seeds are far from the
ones the demo model trains and is evaluated on, so the sample scans are new to it.

    python scripts/make_sample_scans.py [--out sample_scans] [--per-class 3] [--dicom 2]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from mri_lrp.dicom_write import write_dicom_series
from mri_lrp.phantoms import LABELS, Phantom, generate_phantom

SEED_BASE = 900_000  # training uses seeds below 500 000, evaluation 500 000 and up; see scripts/train_demo.py
SPACING_RANGE = (2.2, 2.8)  # modest grids (about 80-100 voxels per axis) keep the folder a few MB


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, label: bool = False) -> None:
    """int16 NIfTI with the affine in both sform and qform (code 1, scanner), as converters write them.

    Masks are marked as label maps (NIfTI intent 'label'), so scan discovery knows they are not scans.
    """
    img = nib.Nifti1Image(data, affine)
    if label:
        img.header.set_intent("label")
    img.header.set_xyzt_units("mm")
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = b"mri-lrp synthetic phantom"
    nib.save(img, path)


def _as_int16(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.round(volume), 0, np.iinfo(np.int16).max).astype(np.int16)


def make_sample_scans(out: Path, per_class: int = 3, dicom: int = 2) -> list[dict[str, str]]:
    """Write the scans, masks and README under ``out`` (overwriting them); return one row per scan."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    order = [label for _ in range(per_class) for label in LABELS]  # interleave classes: ids say nothing
    dicom_at = {round(i * len(order) / max(dicom, 1)) for i in range(dicom)} if dicom else set()
    for n, label in enumerate(order, start=1):
        seed = SEED_BASE + n
        phantom = generate_phantom(seed, label, spacing_range=SPACING_RANGE)
        name = f"sub-{n:02d}"
        if n - 1 in dicom_at:
            source = f"dicom/{name}"
            shutil.rmtree(out / source, ignore_errors=True)  # no stale slices from an earlier grid
            write_dicom_series(_as_int16(phantom.volume), phantom.affine, out / source,
                               uid_seed=f"sample-{seed}", series_number=n, patient_id=f"PHANTOM-{n:02d}")
            mask_name = name
        else:
            source = f"{name}_T1w.nii.gz"
            _save_nifti(_as_int16(phantom.volume), phantom.affine, out / source)
            mask_name = f"{name}_T1w"
        mask = ""
        if phantom.mask.any():
            mask = f"masks/{mask_name}.nii.gz"
            _save_nifti(phantom.mask, phantom.affine, out / mask, label=True)
        rows.append(_describe(source, mask, phantom))
    (out / "README.md").write_text(_readme(rows))
    return rows


def _describe(source: str, mask: str, phantom: Phantom) -> dict[str, str]:
    shape = "x".join(str(n) for n in phantom.volume.shape)
    spacing = "x".join(f"{s:.2f}" for s in phantom.spacing)
    return {"file": source, "class": phantom.label, "mask": mask or "(none: no tumour)", "grid": shape,
            "spacing_mm": spacing, "orientation": phantom.orientation, "seed": str(phantom.seed)}


def _readme(rows: list[dict[str, str]]) -> str:
    header = ["file", "class", "mask", "grid", "spacing_mm", "orientation", "seed"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    table += ["| " + " | ".join(row[h] for h in header) + " |" for row in rows]
    return "\n".join([
        "# Sample scans",
        "",
        "Synthetic T1-weighted head phantoms (no patient data) made by `scripts/make_sample_scans.py` with",
        "`mri_lrp.phantoms.generate_phantom`: scalp, skull, folded cortex over white matter, ventricles, a",
        "bias field and Rician noise, on grids of different spacing and axis orientation. One class each:",
        "",
        "- `glioma`: intra-axial, irregular, necrotic core and enhancing rim, with surrounding oedema;",
        "- `meningioma`: extra-axial, a bright, well-defined dome on the inner table of the skull;",
        "- `pituitary`: a small adenoma in the midline at the sella;",
        "- `no_tumour`: the same kind of head without a lesion.",
        "",
        "NIfTI files are int16 with sform and qform set. The `dicom/` folders are multi-file MR DICOM series",
        "(one file per slice, meaningless file names, non-identifying tags). `masks/` holds the ground-truth",
        "lesion mask of each tumour scan on the scan's own grid, named after the file stem or series folder;",
        "for gliomas it covers the whole lesion including oedema. The demo model never saw these scans.",
        "",
        *table,
        "",
        "Explain them with the shipped demo model and score the relevance against the masks:",
        "",
        "    mri-lrp explain sample_scans/ --masks sample_scans/masks --out demo_out",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "sample_scans")
    parser.add_argument("--per-class", type=int, default=3)
    parser.add_argument("--dicom", type=int, default=2, help="how many of the scans to write as DICOM series")
    args = parser.parse_args()
    for row in make_sample_scans(args.out, args.per_class, args.dicom):
        print(f"{row['file']:28s} {row['class']:11s} {row['grid']:12s} {row['orientation']}")


if __name__ == "__main__":
    main()
