"""The decision rule: rank models by predicted quality − λ × normalised expected cost.

``score[q, m] = quality[q, m] − lam · cost[q, m] / max(expected_cost)``

* ``quality`` comes from the policy (:mod:`.policies`), in [0, 1].
* ``expected_cost[m]`` is model m's mean USD cost per query on the training data. Dividing
  by the largest makes the cost term unitless: ``lam = 1`` means "paying what the most
  expensive model costs on an average query is worth one whole point of quality (a wrong
  answer made right)"; ``lam = 0`` routes on quality alone; a large ``lam`` always picks the
  cheapest model.
* ``cost[q, m]`` is the expected USD of *this* query on model m: with a cost model (the
  default of :func:`train_router`), the mean training cost of the query's cluster
  (:class:`.clusters.ClusterTable`; a long few-shot prompt or a code answer costs several
  times a one-liner, and which model is worth its price depends on it); without one, the
  flat ``expected_cost[m]``.
* Ties go to the cheaper model.

λ is set directly, or calibrated on the training data (:meth:`Router.calibrate`) to the
cheapest routing that still spends at most a target mean cost per query, or to the cheapest
routing that reaches a target mean quality. Calibration uses in-sample predictions, so the
training quality it sees is optimistic; budgets (which depend only on which models are
picked) transfer better than quality targets.

Persistence: ``save(dir)`` writes ``router.json`` (models, policy name and params, λ, encoder
window, expected costs, the cost model's parameters, and a model card: data hash, metrics) and
``arrays.npz`` (the policy's fitted arrays, the cost model's under ``cost.``);
``Router.load(dir)`` reads them back with ``allow_pickle=False``. Routers saved before the
cost model existed load with flat costs.

The server calls ``Router.load(dir)`` once and ``rank(prompt)`` per request; ``rank`` embeds
the prompt (MiniLM, loaded on first call) and returns model names best first.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fleetlm.compound.router.clusters import ClusterTable
from fleetlm.compound.router.data import RoutingExample, data_hash, to_arrays
from fleetlm.compound.router.encoder import EncoderConfig, RoutingEncoder
from fleetlm.compound.router.policies import POLICIES

FORMAT_VERSION = 1
LAMBDA_GRID = np.concatenate([[0.0], np.geomspace(1e-4, 1e4, 801)])  # sweeps and calibration


class Router:
    def __init__(self, models: list[str], policy, expected_cost, lam: float = 0.0, *,
                 encoder: RoutingEncoder | None = None, card: dict | None = None,
                 cost_model: ClusterTable | None = None):
        expected_cost = np.asarray(expected_cost, dtype=np.float64)
        if expected_cost.shape != (len(models),) or not np.all(expected_cost > 0):
            raise ValueError(f"expected_cost must be ({len(models)},) positive USD, got {expected_cost}")
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.models = list(models)
        self.policy = policy
        self.expected_cost = expected_cost  # (M,) USD per query
        self.cost_norm = (expected_cost / expected_cost.max()).astype(np.float32)  # (M,) in (0, 1]
        self.lam = float(lam)
        self.encoder = encoder or RoutingEncoder()
        self.card = dict(card or {})
        self.cost_model = cost_model  # X -> (n, M) expected USD per query, or None: flat costs

    # -- deciding ----------------------------------------------------------------------
    def embed(self, prompts: list[str]) -> np.ndarray:
        """(n, d) routing embeddings of prompts (the encoder's head+tail window)."""
        return self.encoder.encode(prompts)

    def _X(self, queries) -> np.ndarray:
        return self.embed(list(queries)) if _is_text(queries) else np.asarray(queries, dtype=np.float32)

    def quality(self, queries) -> np.ndarray:
        """(n, M) predicted quality; ``queries`` is a list of prompts or (n, d) embeddings."""
        return self.policy.predict(self._X(queries))

    def cost_weights(self, queries) -> np.ndarray:
        """(n, M) float32 expected cost of each query on each model / max(expected_cost)."""
        X = self._X(queries)
        if self.cost_model is None:
            return np.broadcast_to(self.cost_norm, (len(X), len(self.models)))
        cost = np.maximum(self.cost_model.predict(X), 1e-12)  # a zero cost would tie everything
        return (cost / self.expected_cost.max()).astype(np.float32)

    def scores(self, queries, lam: float | None = None) -> np.ndarray:
        """(n, M) predicted quality − lam × normalised cost (``lam`` defaults to ``self.lam``)."""
        lam = self.lam if lam is None else lam
        X = self._X(queries)
        return self.quality(X) - lam * self.cost_weights(X)

    def rank(self, prompt: str) -> list[str]:
        """Model names for one prompt, best first (the server's per-request call)."""
        X = self.embed([prompt])
        s, w = self.scores(X)[0], self.cost_weights(X)[0]
        order = np.lexsort((w, -s))  # by score desc, then cheaper first
        return [self.models[i] for i in order]

    # -- λ -------------------------------------------------------------------------------
    def calibrate(self, X: np.ndarray, costs: np.ndarray, *, budget: float | None = None,
                  target_quality: float | None = None, scores: np.ndarray | None = None) -> float:
        """Set and return λ from data: ``X`` (n, d) embeddings, ``costs`` (n, M) USD.

        ``budget``: the smallest λ whose routing spends at most ``budget`` USD per query on
        average (best quality within budget). ``target_quality`` (needs ``scores`` (n, M)):
        the largest λ whose routing still reaches that mean quality (cheapest such routing).
        Raises ``ValueError`` when no λ meets the target.
        """
        if (budget is None) == (target_quality is None):
            raise ValueError("give exactly one of budget or target_quality")
        P, W = self.quality(X), self.cost_weights(X)
        rows = np.arange(len(P))
        lams = LAMBDA_GRID
        picks = [np.argmax(P - lam * W, axis=1) for lam in lams]
        if budget is not None:
            spent = np.array([costs[rows, c].mean() for c in picks])  # non-increasing in λ
            ok = np.nonzero(spent <= budget)[0]
            if len(ok) == 0:
                raise ValueError(f"budget {budget:.3g} USD/query is below the cheapest routing "
                                 f"({spent[-1]:.3g})")
            lam = self._refine(P, W, costs, budget, lams[ok[0] - 1] if ok[0] > 0 else None, lams[ok[0]])
        else:
            if scores is None:
                raise ValueError("target_quality needs the observed scores")
            got = np.array([scores[rows, c].mean() for c in picks])
            ok = np.nonzero(got >= target_quality)[0]
            if len(ok) == 0:
                raise ValueError(f"no λ reaches mean quality {target_quality} (best {got.max():.4f})")
            lam = float(lams[ok[-1]])
        self.lam = float(lam)
        return self.lam

    def _refine(self, P, W, costs, budget, lo, hi) -> float:
        """Bisect between grid points: the smallest λ in (lo, hi] that keeps within budget."""
        if lo is None:
            return float(hi)
        rows = np.arange(len(P))
        for _ in range(40):
            mid = (lo + hi) / 2
            if costs[rows, np.argmax(P - mid * W, axis=1)].mean() <= budget:
                hi = mid
            else:
                lo = mid
        return float(hi)

    # -- persistence ---------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {
            "format": FORMAT_VERSION,
            "models": self.models,
            "policy": self.policy.name,
            "params": self.policy.params,
            "lam": self.lam,
            "expected_cost_usd": self.expected_cost.tolist(),
            "encoder": self.encoder.config.to_json(),
            "cost_model": None if self.cost_model is None else
            {"clusters": self.cost_model.clusters, "shrink": self.cost_model.shrink,
             "seed": self.cost_model.seed},
            "card": self.card,
        }
        (folder / "router.json").write_text(json.dumps(config, indent=2) + "\n")
        arrays = dict(self.policy.arrays())
        if self.cost_model is not None:
            arrays.update({f"cost.{k}": v for k, v in self.cost_model.arrays().items()})
        np.savez(folder / "arrays.npz", **arrays)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, embedder=None) -> Router:
        """Read a saved router; ``embedder`` (an ``Embedder``) may be shared with the server."""
        folder = Path(folder)
        config = json.loads((folder / "router.json").read_text())
        if config.get("format") != FORMAT_VERSION:
            raise ValueError(f"{folder}: router format {config.get('format')!r}, expected {FORMAT_VERSION}")
        if config["policy"] not in POLICIES:
            raise ValueError(f"{folder}: unknown policy {config['policy']!r}")
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        cost_arrays = {k[5:]: arrays.pop(k) for k in list(arrays) if k.startswith("cost.")}
        policy = POLICIES[config["policy"]](**config["params"]).load_arrays(arrays)
        encoder = RoutingEncoder(EncoderConfig(**config["encoder"]), embedder=embedder)
        cost_model = None
        if config.get("cost_model"):
            cost_model = ClusterTable(**config["cost_model"]).load_arrays(cost_arrays)
        return cls(config["models"], policy, config["expected_cost_usd"], config["lam"],
                   encoder=encoder, card=config["card"], cost_model=cost_model)


def train_router(examples: list[RoutingExample], *, policy: str = "blend", params: dict | None = None,
                 encoder: RoutingEncoder | None = None, X: np.ndarray | None = None,
                 data_name: str = "", lam: float = 0.0, cost_clusters: int | None = 16) -> Router:
    """Fit a router on examples (all of them: pass the train split only).

    ``X`` may carry precomputed routing embeddings of ``examples`` (same encoder window).
    ``cost_clusters``: clusters of the per-query cost model (module docstring); ``None``
    routes on each model's flat mean cost.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {sorted(POLICIES)}")
    arrays = to_arrays(examples)
    encoder = encoder or RoutingEncoder()
    X = encoder.encode(arrays.prompts) if X is None else X
    fitted = POLICIES[policy](**(params or {})).fit(X, arrays.scores)
    cost_model = None
    if cost_clusters is not None:  # shrink 1: cost is near-constant within a query type
        cost_model = ClusterTable(clusters=cost_clusters, shrink=1.0).fit(X, arrays.costs)
    card = {"data": data_name, "data_sha256": data_hash(examples), "n_train": len(examples),
            "train_accuracy": dict(zip(arrays.models, arrays.scores.mean(0).round(4).tolist()))}
    return Router(arrays.models, fitted, arrays.costs.mean(0), lam, encoder=encoder, card=card,
                  cost_model=cost_model)


def _is_text(queries) -> bool:
    return isinstance(queries, (list, tuple)) and len(queries) > 0 and isinstance(queries[0], str)
