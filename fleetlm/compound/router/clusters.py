"""Query clusters: k-means over routing embeddings, and per-cluster tables of any per-query
quantity (model accuracy, USD cost).

Why clusters: on benchmark-style traffic most of what predicts a model's score — and nearly
all of what predicts its cost — is *which kind of query* this is (multiple-choice science vs
code vs commonsense, long few-shot prompt vs a one-liner). A per-cluster mean over hundreds of
training queries estimates that far less noisily than a 40-neighbour average, and the router
reads it from one nearest-centroid lookup (K dot products).

Contract:

* :func:`kmeans` ``(X (n, d), K, seed) -> (K, d)`` float32 centroids; deterministic for a
  seed (k-means++ seeding, then Lloyd iterations on squared Euclidean distance). ``K`` is
  capped at the number of distinct rows.
* :func:`assign` ``(X, centroids) -> (n,)`` int index of the nearest centroid.
* :class:`ClusterTable` ``fit(X, V (n, M))``: per-cluster column means of ``V``, shrunk toward
  the global mean with weight ``shrink`` (``(Σ_c V + shrink·mean) / (n_c + shrink)``: a cluster
  with few queries borrows from everyone). ``predict(X) -> (n, M)`` float64.

Matrix products go through torch (the routers' ``_mm``), for the thread-pool reason given in
:mod:`.policies`.
"""

from __future__ import annotations

import numpy as np


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch

    return (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            @ torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))).numpy()


def _sq_dist(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, K) squared Euclidean distances (up to the per-row constant ‖x‖², which argmin ignores)."""
    return (centroids * centroids).sum(1)[None, :] - 2 * _mm(X, centroids.T)


def assign(X: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    return np.argmin(_sq_dist(X, centroids), axis=1)


def kmeans(X: np.ndarray, K: int, *, seed: int = 0, iters: int = 50) -> np.ndarray:
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"kmeans needs X (n, d) with n > 0, got {X.shape}")
    if K < 1:
        raise ValueError(f"need K >= 1 clusters, got {K}")
    X = np.asarray(X, dtype=np.float32)
    K = min(K, len(np.unique(X, axis=0)))
    rng = np.random.default_rng(seed)
    centroids = [X[rng.integers(len(X))]]
    d2 = ((X - centroids[0]) ** 2).sum(1)
    for _ in range(1, K):  # k-means++: next seed drawn proportionally to squared distance
        nxt = X[rng.choice(len(X), p=d2 / d2.sum())] if d2.sum() > 0 else X[rng.integers(len(X))]
        centroids.append(nxt)
        d2 = np.minimum(d2, ((X - nxt) ** 2).sum(1))
    C = np.stack(centroids)
    labels = None
    for _ in range(iters):
        new = assign(X, C)
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        for c in range(K):
            members = X[labels == c]
            if len(members):  # an emptied cluster keeps its old centroid
                C[c] = members.mean(0)
    return C.astype(np.float32)


class ClusterTable:
    """Per-cluster means of a per-query matrix, shrunk toward the global mean."""

    def __init__(self, clusters: int = 8, shrink: float = 20.0, seed: int = 0):
        if clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {clusters}")
        if shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {shrink}")
        self.clusters, self.shrink, self.seed = clusters, shrink, seed

    def fit(self, X: np.ndarray, V: np.ndarray) -> ClusterTable:
        if X.ndim != 2 or V.ndim != 2 or len(X) != len(V) or len(X) == 0:
            raise ValueError(f"fit needs X (n, d) and V (n, M) with n > 0, got {X.shape} and {V.shape}")
        self.centroids = kmeans(X, self.clusters, seed=self.seed)
        labels = assign(X, self.centroids)
        mean = V.mean(0)
        rows = []
        for c in range(len(self.centroids)):
            n_c = int((labels == c).sum())
            rows.append(mean if n_c + self.shrink == 0 else
                        (V[labels == c].sum(0) + self.shrink * mean) / (n_c + self.shrink))
        self.table = np.stack(rows)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.table[assign(X, self.centroids)]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids, "table": self.table}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> ClusterTable:
        self.centroids, self.table = arrays["centroids"], arrays["table"]
        return self
