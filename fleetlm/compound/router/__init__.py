"""Learned routing: pick, per query, the model that answers it best for its cost.

* :mod:`.data` — per-query outcome data (:class:`RoutingExample`) and its loaders.
* :mod:`.policies` — quality predictors over query embeddings (``POLICIES``).
* :mod:`.clusters` — k-means and per-cluster tables (the cluster policy, per-query costs).
* :mod:`.router` — the decision rule (quality − λ·cost), λ calibration, save/load.
* :mod:`.evaluate` — cost–quality curves and the published metrics (AIQ, APGR, CPT).
* :mod:`.cli` — ``fleet router train`` / ``fleet router eval``.

The server calls ``Router.load(dir)`` once and ``router.rank(prompt)`` per request.
"""

from fleetlm.compound.router.data import RoutingExample
from fleetlm.compound.router.policies import POLICIES
from fleetlm.compound.router.router import Router

__all__ = ["POLICIES", "Router", "RoutingExample"]
