"""Policies, the decision rule, λ calibration and save/load, on small synthetic data (no
embedding model needed: the router is driven with embeddings directly), plus one round trip
through the real MiniLM encoder."""

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
