"""Policies, the decision rule, λ calibration and save/load, on small synthetic data (no
embedding model needed: the router is driven with embeddings directly), plus one round trip
through the real MiniLM encoder."""

import json

import numpy as np
import pytest

from fleetlm.compound.router.data import RoutingExample
from fleetlm.compound.router.policies import POLICIES
from fleetlm.compound.router.router import Router, train_router

MODELS = ["cheap", "mid", "strong"]
COST = np.array([1.0, 4.0, 20.0])  # USD per query


def _synthetic(n=600, d=16, seed=0):
    """Queries on a sphere; each model is right with a probability that depends on the query."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    logits = np.stack([4 * X[:, 0] - 0.5, 3 * X[:, 1] + 0.5, np.full(n, 1.5)], axis=1)
    Y = (rng.random((n, 3)) < 1 / (1 + np.exp(-logits))).astype(np.float64)
    C = np.tile(COST, (n, 1))
    return X, Y, C


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_predict_quality_in_range_and_learn(name):
    X, Y, _ = _synthetic()
    policy = POLICIES[name]().fit(X[:500], Y[:500])
    P = policy.predict(X[500:])
    assert P.shape == (100, 3) and P.dtype == np.float32
    assert (P >= 0).all() and (P <= 1).all()
    # The cheap model's quality follows X[:, 0]: predictions must rank it that way.
    corr = np.corrcoef(P[:, 0], X[500:, 0])[0, 1]
    assert corr > 0.5, corr


def _router(policy="knn", lam=0.0):
    X, Y, C = _synthetic()
    return Router(MODELS, POLICIES[policy]().fit(X, Y), COST, lam), X, Y, C


def test_lambda_trades_quality_for_cost():
    router, X, Y, C = _router()
    rows = np.arange(len(X))
    spent = [C[rows, router.scores(X, lam).argmax(1)].mean() for lam in (0.0, 0.3, 100.0)]
    assert spent[0] > spent[1] > spent[2] == COST.min()


def test_calibrate_hits_the_budget():
    router, X, Y, C = _router()
    rows = np.arange(len(X))
    for budget in (3.0, 8.0):
        lam = router.calibrate(X, C, budget=budget)
        spent = C[rows, router.scores(X).argmax(1)].mean()
        assert router.lam == lam
        assert 0.95 * budget <= spent <= budget, (budget, spent)
    with pytest.raises(ValueError, match="below the cheapest"):
        router.calibrate(X, C, budget=0.5)


def test_calibrate_to_target_quality_takes_the_cheapest_routing_that_reaches_it():
    router, X, Y, C = _router()
    rows = np.arange(len(X))
    lam = router.calibrate(X, C, target_quality=0.8, scores=Y)
    assert Y[rows, router.scores(X).argmax(1)].mean() >= 0.8
    # A little more cost weight and the target is missed (or the choice does not change).
    more = router.scores(X, lam * 1.5).argmax(1)
    assert Y[rows, more].mean() < 0.8 or (more == router.scores(X).argmax(1)).all()


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_save_load_round_trip_gives_identical_scores(tmp_path, name):
    X, Y, _ = _synthetic()
    router = Router(MODELS, POLICIES[name]().fit(X, Y), COST, 0.2, card={"note": "t"})
    loaded = Router.load(router.save(tmp_path / name))
    assert loaded.models == MODELS and loaded.lam == 0.2 and loaded.card == {"note": "t"}
    np.testing.assert_array_equal(loaded.scores(X), router.scores(X))
    assert not list((tmp_path / name).glob("*.pkl"))


def test_rank_with_the_real_encoder_survives_save_and_load(tmp_path):
    prompts = ["Write a python function to sort a list.", "What is 17 * 23?",
               "Translate 'good morning' to French.", "Prove that sqrt(2) is irrational.",
               "Which gas do plants absorb? A) O2 B) CO2", "def f(x): return x  # fix the bug"]
    examples = [RoutingExample(p, {"cheap": float(i % 2), "strong": 1.0}, {"cheap": 0.001, "strong": 0.01})
                for i, p in enumerate(prompts)]
    router = train_router(examples, policy="knn", params={"k": 2}, lam=0.05, data_name="unit")
    loaded = Router.load(router.save(tmp_path / "r"), embedder=router.encoder.embedder)
    for p in prompts + ["an unseen prompt about cooking pasta"]:
        assert loaded.rank(p) == router.rank(p)
        assert sorted(loaded.rank(p)) == ["cheap", "strong"]
    assert loaded.card["n_train"] == 6 and len(loaded.card["data_sha256"]) == 64


def test_rank_breaks_ties_toward_the_cheaper_model():
    class Flat:  # every model predicted equally good
        name, params = "flat", {}

        def predict(self, X):
            return np.full((len(X), 3), 0.5, dtype=np.float32)

    router = Router(["pricey", "cheap", "mid"], Flat(), [9.0, 1.0, 3.0], lam=0.0)
    router.embed = lambda prompts: np.zeros((len(prompts), 4), np.float32)
    assert router.rank("anything") == ["cheap", "mid", "pricey"]


# -- clusters and the per-query cost model ---------------------------------------------------

from fleetlm.compound.router.clusters import ClusterTable, assign, kmeans  # noqa: E402


def _blobs(seed=0, per=50):
    """Three well-separated groups of unit vectors in 8-d."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[:3] * 5
    X = np.concatenate([c + rng.normal(scale=0.3, size=(per, 8)) for c in centres]).astype(np.float32)
    return X, np.repeat(np.arange(3), per)


def test_kmeans_recovers_separated_groups_deterministically():
    X, truth = _blobs()
    C = kmeans(X, 3, seed=1)
    labels = assign(X, C)
    # Each true group maps to exactly one cluster and vice versa.
    assert {(t, lab) for t, lab in zip(truth, labels)} == {(t, labels[truth == t][0]) for t in range(3)}
    assert len(set(labels)) == 3
    np.testing.assert_array_equal(kmeans(X, 3, seed=1), C)
    assert len(kmeans(X[:2], 5)) == 2  # capped at the distinct rows
    with pytest.raises(ValueError):
        kmeans(X, 0)


def test_cluster_table_shrinks_small_clusters_toward_the_global_mean():
    X, truth = _blobs(per=40)
    V = np.stack([truth == 0, truth == 1], axis=1).astype(np.float64)  # (n, 2)
    raw = ClusterTable(clusters=3, shrink=0.0).fit(X, V)
    assert sorted(map(tuple, raw.table.round(6))) == [(0, 0), (0, 1), (1, 0)]
    shrunk = ClusterTable(clusters=3, shrink=40.0).fit(X, V)
    # (40 · 1 + 40 · 1/3) / (40 + 40) = 2/3 for a group's own column, 1/6 for the others.
    row = shrunk.predict(X[truth == 0][:1])[0]
    np.testing.assert_allclose(row, [2 / 3, 1 / 6])


def test_per_query_costs_change_the_route_and_survive_save_load(tmp_path):
    X, truth = _blobs(per=30)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    n = len(X)
    Y = np.tile([0.6, 0.9], (n, 1))  # "strong" is always better by 0.3
    # "strong" costs 1 USD in group 0 but 10 USD elsewhere; "cheap" costs 0.1 everywhere.
    C = np.stack([np.full(n, 0.1), np.where(truth == 0, 1.0, 10.0)], axis=1)
    cost_model = ClusterTable(clusters=3, shrink=1.0).fit(X, C)
    router = Router(["cheap", "strong"], POLICIES["knn"](k=5).fit(X, Y), C.mean(0), lam=0.3,
                    cost_model=cost_model)
    router.embed = lambda prompts: X[[int(p) for p in prompts]]
    first0, first1 = int(np.nonzero(truth == 0)[0][0]), int(np.nonzero(truth == 1)[0][0])
    assert router.rank(str(first0))[0] == "strong"  # 0.9 − 0.3·1/7 beats 0.6
    assert router.rank(str(first1))[0] == "cheap"  # 0.9 − 0.3·10/7 does not
    flat = Router(["cheap", "strong"], router.policy, C.mean(0), lam=0.3)
    assert len(set(flat.scores(X).argmax(1))) == 1  # flat costs: one route for all
    loaded = Router.load(router.save(tmp_path / "r"))
    np.testing.assert_array_equal(loaded.scores(X), router.scores(X))
    np.testing.assert_array_equal(loaded.cost_weights(X), router.cost_weights(X))
    # Calibrating to a budget uses the per-query costs too.
    lam = router.calibrate(X, C, budget=1.0)
    assert C[np.arange(n), router.scores(X).argmax(1)].mean() <= 1.0 and lam > 0


def test_router_saved_without_a_cost_model_loads_with_flat_costs(tmp_path):
    X, Y, _ = _synthetic()
    router = Router(MODELS, POLICIES["knn"]().fit(X, Y), COST, 0.1)
    folder = router.save(tmp_path / "old")
    config = json.loads((folder / "router.json").read_text())
    del config["cost_model"]  # what routers written before the cost model look like
    (folder / "router.json").write_text(json.dumps(config))
    loaded = Router.load(folder)
    assert loaded.cost_model is None
    np.testing.assert_array_equal(loaded.cost_weights(X[:3]), np.tile(router.cost_norm, (3, 1)))
