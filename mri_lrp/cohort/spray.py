"""Spectral relevance analysis (SpRAy) of one class's maps: features, a sparse kNN graph, the normalised
Laplacian's spectrum, the eigengap, clusters and a 2D layout.

Features: each map's positive part (what spoke for the class), block-summed to at most ``POOL_SIZE`` voxels
per axis and divided by its total, so every scan weighs the same whatever its confidence. The affinity is the
symmetric k-nearest-neighbour graph (an edge where either scan is among the other's ``KNN`` nearest, Euclidean
distance on the features), stored sparse: nothing of size N x N is ever built for more than ``DENSE_MAX``
scans. The embedding is the ``N_EIGEN`` eigenvectors of the symmetric normalised Laplacian with the smallest
eigenvalues (scipy's sparse Lanczos eigensolver); the number of clusters is the position of the first
gap among the first ``MAX_CLUSTERS`` + 1 eigenvalues that is at least half the largest (or given), and
k-means (scikit-learn) clusters the row-normalised first k eigenvectors (Ng, Jordan and Weiss). t-SNE
(scikit-learn) lays the embedding out in 2D, eigenvectors weighted as in a diffusion map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.linalg import eigh
from scipy.sparse.csgraph import laplacian
from scipy.sparse.linalg import eigsh

POOL_SIZE = 16        # feature grid: at most this many voxels along each axis (16^3 = 4,096 features)
KNN = 10              # neighbours per scan in the affinity graph
N_EIGEN = 32          # eigenvectors in the embedding
MAX_CLUSTERS = 10     # the eigengap looks for at most this many clusters
GAP_SHARE = 0.5       # the chosen gap is the first at least this share of the largest
MIN_SCANS = 6         # a class with fewer maps is one cluster: too few to split
DENSE_MAX = 500       # up to this many scans, the Laplacian's spectrum is taken densely (exact and fast)
LAYOUT_FLOOR = 0.05    # the least weight an eigenvector gets in the layout
TSNE_STEPS = 500      # t-SNE iterations (the layout is for display only)
SEED = 0              # k-means and t-SNE are seeded: the same run gives the same clusters


def pool_factor(shape: tuple[int, ...], size: int = POOL_SIZE) -> tuple[int, ...]:
    """Block size per axis so that the pooled grid has at most ``size`` voxels along each axis."""
    return tuple(max(1, -(-int(n) // size)) for n in shape)


def block_sum(volume: np.ndarray, factor: tuple[int, ...]) -> np.ndarray:
    """Sum over non-overlapping blocks of ``factor`` voxels (the grid padded with zeros to a multiple)."""
    padded_shape = [-(-n // f) * f for n, f in zip(volume.shape, factor, strict=True)]
    padded = np.zeros(padded_shape, dtype=np.float64)
    padded[tuple(slice(0, n) for n in volume.shape)] = volume
    blocks = [dim for n, f in zip(padded_shape, factor, strict=True) for dim in (n // f, f)]
    return padded.reshape(blocks).sum(axis=tuple(range(1, 2 * volume.ndim, 2)))


def features(volume: np.ndarray, size: int = POOL_SIZE) -> np.ndarray:
    """One map's feature vector: positive part, block-summed, normalised to sum 1 (all zero when nothing is
    positive)."""
    pooled = block_sum(np.clip(np.asarray(volume, dtype=np.float64), 0.0, None), pool_factor(volume.shape, size))
    total = pooled.sum()
    return (pooled / total if total > 0 else pooled).ravel().astype(np.float32)


@dataclass(frozen=True)
class Spectrum:
    """One class's analysis: the eigenvalues (ascending), the embedding, the clusters and the 2D layout."""

    eigenvalues: np.ndarray      # (m,)
    embedding: np.ndarray        # (N, m) eigenvectors of the normalised Laplacian
    k: int                       # number of clusters
    k_from: str                  # "eigengap", "given" or "too few scans"
    labels: np.ndarray           # (N,) cluster of each scan, 0 the largest
    layout: np.ndarray           # (N, 2) t-SNE of the embedding
    neighbours: int              # k of the kNN graph


def affinity(x: np.ndarray, neighbours: int) -> sparse.csr_matrix:
    """Symmetric binary kNN affinity (an edge where either is among the other's nearest), sparse."""
    from sklearn.neighbors import NearestNeighbors

    graph = NearestNeighbors(n_neighbors=neighbours + 1).fit(x).kneighbors_graph(x, mode="connectivity")
    graph.setdiag(0)
    graph.eliminate_zeros()
    return graph.maximum(graph.T).tocsr()


def spectrum(graph: sparse.csr_matrix, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` smallest eigenvalues of the symmetric normalised Laplacian and their eigenvectors."""
    lap = laplacian(graph.astype(np.float64), normed=True)
    n = lap.shape[0]
    if n <= DENSE_MAX or count >= n - 1:
        values, vectors = eigh(lap.toarray())
        return values[:count], vectors[:, :count]
    # The smallest eigenvalues of L are the largest of I - L (the normalised affinity): plain Lanczos finds
    # them without factorising anything (several times faster than shift-invert at 10,000 scans).
    values, vectors = eigsh(sparse.identity(n, format="csr") - lap, k=count, which="LA",
                            v0=np.random.default_rng(SEED).uniform(-1, 1, n))
    order = np.argsort(-values)
    return 1.0 - values[order], vectors[:, order]


def eigengap(values: np.ndarray, most: int = MAX_CLUSTERS) -> int:
    """The number of clusters: the first gap between consecutive eigenvalues that is at least half the
    largest of the first ``most`` gaps. The first substantial gap, not the largest: tight groups each add a
    jump of their own further up the spectrum, and the largest gap alone would split them in two."""
    gaps = np.diff(values[: most + 1])
    if not gaps.size or gaps.max() <= 0:
        return 1
    return int(np.flatnonzero(gaps >= GAP_SHARE * gaps.max())[0]) + 1


def analyse(x: np.ndarray, clusters: int | None = None) -> Spectrum:
    """SpRAy of one class's feature matrix ``x`` (N, P); ``clusters`` overrides the eigengap."""
    from sklearn.cluster import KMeans

    n = x.shape[0]
    if n < MIN_SCANS:
        layout = np.zeros((n, 2))
        layout[:, 0] = np.arange(n)
        return Spectrum(np.zeros(0), np.zeros((n, 0)), 1, "too few scans", np.zeros(n, dtype=int), layout, 0)
    neighbours = min(KNN, n - 1)
    values, vectors = spectrum(affinity(x, neighbours), min(N_EIGEN, n - 1))
    k = min(int(clusters), n) if clusters else eigengap(values)
    labels = np.zeros(n, dtype=int)
    if k > 1:
        head = vectors[:, :k]
        norms = np.linalg.norm(head, axis=1, keepdims=True)
        rows = head / np.where(norms > 0, norms, 1.0)
        labels = KMeans(n_clusters=k, n_init=10, random_state=SEED).fit_predict(rows)
        labels = _by_size(labels)
    return Spectrum(values, vectors, k, "given" if clusters else "eigengap", labels, layout_2d(vectors, values),
                    neighbours)


def layout_2d(embedding: np.ndarray, values: np.ndarray) -> np.ndarray:
    """t-SNE of the embedding, each eigenvector weighted by 1 - its eigenvalue (a diffusion map's weights:
    the smooth eigenvectors that carry the groups count, the rough ones near 1 hardly); the trivial first
    eigenvector left out; no weight below ``LAYOUT_FLOOR``; the weighted coordinates themselves for tiny sets."""
    from sklearn.manifold import TSNE

    n = embedding.shape[0]
    weights = np.clip(1.0 - values, LAYOUT_FLOOR, None)
    coords = (embedding * weights)[:, 1:] if embedding.shape[1] > 2 else embedding
    if n < 5 or coords.shape[1] < 2 or not np.ptp(coords, axis=0).any():
        return np.pad(coords, ((0, 0), (0, max(0, 2 - coords.shape[1]))))[:, :2]
    perplexity = float(min(30.0, (n - 1) / 3.0))
    method = "exact" if n <= DENSE_MAX else "barnes_hut"  # exact is the faster of the two for small sets
    return TSNE(n_components=2, perplexity=perplexity, init="pca", method=method, max_iter=TSNE_STEPS,
                random_state=SEED).fit_transform(coords)


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters so 0 is the largest (ties by first appearance)."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    mapping = {int(old): new for new, old in enumerate(order)}
    return np.array([mapping[int(v)] for v in labels], dtype=int)
