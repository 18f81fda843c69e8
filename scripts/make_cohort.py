"""Write a small cohort for ``mri-lrp cohort``: contrast-enhanced T1 heads of every class from two scanners.

Each scan is a NIfTI file with a BIDS JSON sidecar naming its scanner (vendor, model, field strength), so the
cohort analysis can check whether a cluster of relevance maps is one site's. The two sites differ the way real
ones do: voxel size, axis orientation and image quality. ``sites.csv`` lists each scan's site and class, for
``--metadata``. Deterministic, from seeds far from the demo models' training and evaluation seeds.

    python scripts/make_cohort.py [--out demo_cohort/scans] [--per-class 12]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from mri_lrp.mni_heads import LABELS, generate_head

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_scans import as_int16, save_nifti  # noqa: E402

SEED_BASE = 920_000
SITES = {
    "A": {"Manufacturer": "Siemens", "ManufacturerModelName": "Prisma", "MagneticFieldStrength": 3.0,
          "spacing_range": (2.0, 2.4), "orientation": "LPS"},
    "B": {"Manufacturer": "GE", "ManufacturerModelName": "Signa HDxt", "MagneticFieldStrength": 1.5,
          "spacing_range": (2.6, 3.0), "orientation": "RAS"},
}


def make_cohort(out: Path, per_class: int = 12) -> list[dict[str, str]]:
    """``per_class`` scans of each class, alternating between the sites; one row per scan."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    order = [label for _ in range(per_class) for label in LABELS]
    for n, label in enumerate(order, start=1):
        site = "AB"[(n - 1) // len(LABELS) % 2]
        facts = SITES[site]
        head = generate_head(SEED_BASE + n, label, sequences=("t1ce",), spacing_range=facts["spacing_range"],
                             orientation=facts["orientation"])
        name = f"sub-c{n:03d}_T1w"
        save_nifti(as_int16(head.volume), head.affine, out / f"{name}.nii.gz")
        sidecar = {k: v for k, v in facts.items() if k[0].isupper()}
        (out / f"{name}.json").write_text(json.dumps({**sidecar, "SeriesDescription": "T1 AX POST GD"}, indent=2))
        rows.append({"source": f"{name}.nii.gz", "site": site, "true_class": label})
    with (out.parent / "sites.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["source", "site", "true_class"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_cohort") / "scans")
    parser.add_argument("--per-class", type=int, default=12)
    args = parser.parse_args()
    rows = make_cohort(args.out, args.per_class)
    print(f"wrote {len(rows)} scans under {args.out} and {args.out.parent / 'sites.csv'}")


if __name__ == "__main__":
    main()
