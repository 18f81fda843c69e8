"""CPU time to discover and read a 200-slice 256x256 DICOM series (goal: well under one second).

Usage: python benchmarks/dicom_read.py [--slices 200] [--size 256] [--repeats 5]
The series is generated in a temporary folder from pydicom's real MR slice (tests/dicom_factory.py), written
in shuffled order with meaningless file names, so sorting is part of the measured work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import dicom_factory  # noqa: E402

from mri_lrp.scans import discover, read_scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        series = dicom_factory.write_series(Path(tmp) / "series", dicom_factory.OBLIQUE, args.slices,
                                            rows=args.size, cols=args.size, file_order="shuffled",
                                            rescale=(1.5, -10.0))
        cpu, wall, split = [], [], []
        for _ in range(args.repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            refs, _ = discover([Path(tmp)])
            c1 = time.process_time()
            scan = read_scan(refs[0])
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
            split.append((c1 - c0, time.process_time() - c1))
        assert scan.shape == (args.size, args.size, args.slices)
        assert np.array_equal(scan.data, series.volume), "benchmark read returned wrong data"
    best = min(range(len(cpu)), key=cpu.__getitem__)
    print(f"{args.slices} slices of {args.size}x{args.size}, {args.repeats} runs (files in the page cache)")
    print(f"discover+read_scan CPU seconds: median {statistics.median(cpu):.3f}, best {cpu[best]:.3f} "
          f"(discover {split[best][0]:.3f} + read {split[best][1]:.3f}); wall median {statistics.median(wall):.3f}")


if __name__ == "__main__":
    main()
