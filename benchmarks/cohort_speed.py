"""What the cohort analysis of one class costs at 100, 1,000 and 10,000 scans (synthetic maps).

Usage: python benchmarks/cohort_speed.py [--sizes 100,1000,10000] [--grid 56,64,56]
Each map is drawn on the pooled feature grid directly (16^3 = 4,096 features, what a 56x64x56 model grid
pools to): noise plus one of three bumps, so the analysis has groups to find. Reading and pooling the
maps is measured separately on 100 real model_relevance.nii.gz files of that grid. Prints, per size, the
seconds of each step (kNN graph, spectrum, k-means, t-SNE), the k found, whether the planted groups came
back, and the peak memory of the process.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from mri_lrp.cohort import groupmaps, spray
from mri_lrp.cohort.scanfacts import load_model_grid, save_model_grid


def synthetic(n: int, shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, P) features of noise maps with a bump at one of three places (the group), and the groups."""
    groups = rng.integers(0, 3, n)
    centres = [(3, 3, 3), (12, 4, 10), (7, 12, 6)]
    x = rng.gamma(1.0, 1.0, (n, *shape)).astype(np.float32) * 0.3
    for g, (i, j, k) in enumerate(centres):
        x[groups == g, i - 1:i + 2, j - 1:j + 2, k - 1:k + 2] += 4.0
    x = x.reshape(n, -1)
    return x / x.sum(axis=1, keepdims=True), groups


def timed(n: int, rng: np.random.Generator) -> dict[str, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score

    x, groups = synthetic(n, (spray.POOL_SIZE,) * 3, rng)
    out: dict[str, float] = {"scans": n}
    t = time.perf_counter()
    graph = spray.affinity(x, min(spray.KNN, n - 1))
    out["knn_s"] = time.perf_counter() - t
    t = time.perf_counter()
    values, vectors = spray.spectrum(graph, min(spray.N_EIGEN, n - 1))
    out["spectrum_s"] = time.perf_counter() - t
    k = spray.eigengap(values)
    t = time.perf_counter()
    head = vectors[:, :k] / np.linalg.norm(vectors[:, :k], axis=1, keepdims=True)
    labels = KMeans(n_clusters=k, n_init=10, random_state=spray.SEED).fit_predict(head) if k > 1 else np.zeros(n)
    out["kmeans_s"] = time.perf_counter() - t
    t = time.perf_counter()
    spray.layout_2d(vectors, values)
    out["tsne_s"] = time.perf_counter() - t
    t = time.perf_counter()
    groupmaps.t_test(x[:, :4096].astype(np.float32))
    out["t_test_s"] = time.perf_counter() - t
    out["k"] = k
    out["ari"] = adjusted_rand_score(groups, labels)
    out["graph_edges"] = graph.nnz
    return out


def read_cost(grid: tuple[int, int, int], count: int = 100) -> float:
    """Seconds per map to load a model-grid file and make its features and t-grid copy."""
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for n in range(count):
            path = Path(folder) / f"{n}.nii.gz"
            save_model_grid(path, (rng.standard_normal(grid) * 1e-5).astype(np.float32), np.eye(4), "c")
            paths.append(path)
        t = time.perf_counter()
        for path in paths:
            volume, _ = load_model_grid(path)
            spray.features(volume)
            groupmaps.block_mean(groupmaps.normalised(volume), groupmaps.t_factor(volume.shape))
        return (time.perf_counter() - t) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--grid", default="56,64,56")
    args = parser.parse_args()
    grid = tuple(int(v) for v in args.grid.split(","))
    print(f"read + pool one {grid} map: {read_cost(grid) * 1000:.1f} ms")  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    for n in (int(v) for v in args.sizes.split(",")):
        r = timed(n, rng)
        total = sum(v for key, v in r.items() if key.endswith("_s"))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:>6} scans: kNN {r['knn_s']:.2f} s, spectrum {r['spectrum_s']:.2f} s, k-means {r['kmeans_s']:.2f} s, "
              f"t-SNE {r['tsne_s']:.2f} s, t-test (1,000 sign flips, 4,096 voxels) {r['t_test_s']:.2f} s; "
              f"total {total:.1f} s; k = {r['k']}, ARI {r['ari']:.3f}, {r['graph_edges']} edges; "
              f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
