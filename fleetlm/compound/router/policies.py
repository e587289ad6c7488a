"""Quality predictors: from query embeddings to each model's expected score.

A policy answers one question — *how well will each of the M models answer this query?* —
as ``predict(X (n, d) float32) -> (n, M)`` values in [0, 1] (expected score; for 0/1 tasks
the probability of a correct answer). Cost is not the policy's business: the decision rule in
:mod:`.router` trades the prediction off against price.

Every policy has the same small surface, so ``POLICIES[name](**params)`` builds any of them
(as RouteLLM's ``ROUTER_CLS``):

* ``fit(X, Y)`` — ``X`` (n, d) float32 embeddings (L2-normalised), ``Y`` (n, M) scores;
  returns ``self``. Deterministic for a fixed ``seed``.
* ``predict(X) -> (n, M)`` float32 numpy. Its matrix products run in torch (:func:`_mm`):
  numpy's BLAS keeps its own spinning thread pool, which fights torch's for the same cores
  right after each embedding and doubled ``rank()`` latency on a 2-core CPU (24 → 11 ms p50).
* ``params`` (JSON-able constructor arguments) and ``arrays()`` / ``load_arrays(arrays)``
  (the fitted state as named numpy arrays): how :class:`~.router.Router` saves a policy
  without pickle.

Policies:

* ``knn`` — mean score of the k most cosine-similar training queries.
* ``mf`` — RouteLLM's matrix factorisation generalised to N models: a query projection
  ``W`` (d, r) and one r-vector per model, ``logit[q, m] = w · (W·x_q ⊙ v_m) + b_m``, trained
  with binary cross-entropy on every (query, model) score (RouteLLM trains a pairwise
  win-probability for two models; the per-model form ranks any number).
* ``lr`` — one L2-regularised logistic head per model on the embedding (soft labels allowed).
* ``blend`` — the mean of ``knn`` and ``lr``: the local average corrects the linear head
  where neighbours are close, the linear head smooths where they are sparse.
* ``cluster`` — a per-cluster accuracy table (k-means over the training queries, each
  cluster's per-model mean shrunk toward the global mean; :mod:`.clusters`) blended with
  ``knn``: the table carries the query-type prior with little noise, the neighbours the
  per-query deviation. Chosen by 5-fold cross-validation inside routerbench_zs's train split
  (README, router section).
"""

from __future__ import annotations

import numpy as np


def _check_xy(X: np.ndarray, Y: np.ndarray) -> None:
    if X.ndim != 2 or Y.ndim != 2 or len(X) != len(Y) or len(X) == 0:
        raise ValueError(f"fit needs X (n, d) and Y (n, M) with n > 0, got {X.shape} and {Y.shape}")


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (float32) on torch's thread pool, the one the embedder already uses."""
    import torch

    return (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            @ torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))).numpy()


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))).astype(np.float32)


def _fit_bce(forward, params: list, X: np.ndarray, Y: np.ndarray, *, weight_decay: float,
             steps: int, lr: float, seed: int) -> None:
    """Full-batch Adam on mean BCE(sigmoid(forward(X)), Y) + weight_decay·Σ‖p‖² (soft labels)."""
    import torch  # training only: predict() stays numpy

    torch.manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(Y, dtype=np.float32))
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(forward(x), y)
        loss = loss + weight_decay * sum((p * p).sum() for p in params)
        loss.backward()
        opt.step()


class KNNPolicy:
    """Mean score of the ``k`` nearest training queries (cosine similarity)."""

    name = "knn"

    def __init__(self, k: int = 40):
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.params = {"k": k}

    def fit(self, X: np.ndarray, Y: np.ndarray) -> KNNPolicy:
        _check_xy(X, Y)
        self.X, self.Y = X.astype(np.float32), Y.astype(np.float32)
        self._XT = np.ascontiguousarray(self.X.T)  # (d, n_train): no copy per predict
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        k = min(self.k, len(self.X))
        sims = _mm(X, self._XT)  # (n, n_train)
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # (n, k), unordered
        return self.Y[top].mean(axis=1)  # (n, M)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"X": self.X, "Y": self.Y}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> KNNPolicy:
        return self.fit(arrays["X"], arrays["Y"])


class LogisticPolicy:
    """Per-model logistic head on the embedding: ``sigmoid(X @ A + b)``."""

    name = "lr"

    def __init__(self, weight_decay: float = 1e-4, steps: int = 300, seed: int = 0):
        self.params = {"weight_decay": weight_decay, "steps": steps, "seed": seed}

    def fit(self, X: np.ndarray, Y: np.ndarray) -> LogisticPolicy:
        import torch

        _check_xy(X, Y)
        p = self.params
        A = torch.zeros(X.shape[1], Y.shape[1], requires_grad=True)
        # Start the bias at each model's training logit: the head then learns only deviations.
        mean = np.clip(Y.mean(0), 1e-3, 1 - 1e-3)
        b = torch.tensor(np.log(mean / (1 - mean)), dtype=torch.float32, requires_grad=True)
        _fit_bce(lambda x: x @ A + b, [A], X, Y, weight_decay=p["weight_decay"], steps=p["steps"],
                 lr=0.05, seed=p["seed"])
        self.A, self.b = A.detach().numpy(), b.detach().numpy()
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return _sigmoid(_mm(X, self.A) + self.b)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"A": self.A, "b": self.b}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> LogisticPolicy:
        self.A, self.b = arrays["A"], arrays["b"]
        return self


class MFPolicy:
    """Matrix factorisation (RouteLLM, N models): ``logit = ((X @ W) * V[m]) @ w + b[m]``."""

    name = "mf"

    def __init__(self, dim: int = 64, weight_decay: float = 1e-3, steps: int = 400, seed: int = 0):
        self.params = {"dim": dim, "weight_decay": weight_decay, "steps": steps, "seed": seed}

    def fit(self, X: np.ndarray, Y: np.ndarray) -> MFPolicy:
        import torch

        _check_xy(X, Y)
        p, (d, M) = self.params, (X.shape[1], Y.shape[1])
        g = torch.Generator().manual_seed(p["seed"])
        W = (torch.randn(d, p["dim"], generator=g) / d**0.5).requires_grad_()
        V = (torch.randn(M, p["dim"], generator=g) / p["dim"] ** 0.5).requires_grad_()
        w = (torch.randn(p["dim"], generator=g) / p["dim"] ** 0.5).requires_grad_()
        mean = np.clip(Y.mean(0), 1e-3, 1 - 1e-3)
        b = torch.tensor(np.log(mean / (1 - mean)), dtype=torch.float32, requires_grad=True)

        def forward(x):  # (n, d) -> (n, M)
            return ((x @ W)[:, None, :] * V[None]) @ w + b

        _fit_bce(forward, [W, V, w, b], X, Y, weight_decay=p["weight_decay"], steps=p["steps"],
                 lr=0.01, seed=p["seed"])
        self.W, self.V, self.w, self.b = (t.detach().numpy() for t in (W, V, w, b))
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        q = _mm(X, self.W)  # (n, r)
        return _sigmoid((q[:, None, :] * self.V[None]) @ self.w + self.b)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "V": self.V, "w": self.w, "b": self.b}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> MFPolicy:
        self.W, self.V, self.w, self.b = (arrays[k] for k in ("W", "V", "w", "b"))
        return self


class BlendPolicy:
    """``knn_weight · knn + (1 − knn_weight) · lr``."""

    name = "blend"

    def __init__(self, k: int = 40, knn_weight: float = 0.5, weight_decay: float = 1e-4,
                 steps: int = 300, seed: int = 0):
        if not 0.0 <= knn_weight <= 1.0:
            raise ValueError(f"knn_weight must be in [0, 1], got {knn_weight}")
        self.params = {"k": k, "knn_weight": knn_weight, "weight_decay": weight_decay,
                       "steps": steps, "seed": seed}
        self.knn = KNNPolicy(k=k)
        self.lr = LogisticPolicy(weight_decay=weight_decay, steps=steps, seed=seed)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> BlendPolicy:
        self.knn.fit(X, Y)
        self.lr.fit(X, Y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        a = self.params["knn_weight"]
        return a * self.knn.predict(X) + (1 - a) * self.lr.predict(X)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"knn.{k}": v for k, v in self.knn.arrays().items()},
                **{f"lr.{k}": v for k, v in self.lr.arrays().items()}}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> BlendPolicy:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        self.knn.load_arrays(part("knn."))
        self.lr.load_arrays(part("lr."))
        return self


class ClusterPolicy:
    """``knn_weight · knn + (1 − knn_weight) · cluster table`` (:class:`.clusters.ClusterTable`)."""

    name = "cluster"

    def __init__(self, clusters: int = 8, shrink: float = 20.0, k: int = 100,
                 knn_weight: float = 0.5, seed: int = 0):
        from fleetlm.compound.router.clusters import ClusterTable

        if not 0.0 <= knn_weight <= 1.0:
            raise ValueError(f"knn_weight must be in [0, 1], got {knn_weight}")
        self.params = {"clusters": clusters, "shrink": shrink, "k": k, "knn_weight": knn_weight,
                       "seed": seed}
        self.table = ClusterTable(clusters=clusters, shrink=shrink, seed=seed)
        self.knn = KNNPolicy(k=k)

    def fit(self, X: np.ndarray, Y: np.ndarray) -> ClusterPolicy:
        _check_xy(X, Y)
        self.table.fit(X, Y)
        self.knn.fit(X, Y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        a = self.params["knn_weight"]
        return (a * self.knn.predict(X) + (1 - a) * self.table.predict(X)).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {**{f"knn.{k}": v for k, v in self.knn.arrays().items()},
                **{f"table.{k}": v for k, v in self.table.arrays().items()}}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> ClusterPolicy:
        self.knn.load_arrays(_part(arrays, "knn."))
        self.table.load_arrays(_part(arrays, "table."))
        return self


def _part(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


POLICIES = {
    "knn": KNNPolicy,
    "mf": MFPolicy,
    "lr": LogisticPolicy,
    "blend": BlendPolicy,
    "cluster": ClusterPolicy,
}
