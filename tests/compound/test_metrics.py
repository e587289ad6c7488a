"""Router metrics on hand-made cases whose answers are worked out in the comments."""

import numpy as np
import pytest

from fleetlm.compound.router.evaluate import (CurvePoint, aiq, apgr_cpt, cost_at_best_quality,
                                              evaluate, format_report, oracle, upper_hull)


def test_upper_hull_drops_dominated_and_concave_points():
    pts = [(1, 0.5), (2, 0.6), (3, 0.9), (4, 0.8), (1.5, 0.4)]
    # (2, .6) lies under the chord (1,.5)-(3,.9) (0.7 at 2); (4,.8) and (1.5,.4) are dominated.
    assert upper_hull(pts) == [(1, 0.5), (3, 0.9)]


def test_aiq_by_hand():
    # Hull (1,.5)-(3,.9) over [1, 5]: trapezoid 2·0.7 = 1.4, then flat 2·0.9 = 1.8 → 3.2 / 4.
    assert aiq([(1, 0.5), (3, 0.9), (2, 0.6)], 1, 5) == pytest.approx(0.8)
    # A single model at cost 3: nothing affordable on [1, 3), 0.9 on [3, 5] → 1.8 / 4.
    assert aiq([(3, 0.9)], 1, 5) == pytest.approx(0.45)
    # The cheapest model is flat over the whole range.
    assert aiq([(1, 0.6)], 1, 5) == pytest.approx(0.6)
    assert aiq([(6, 1.0)], 1, 5) == 0.0


def test_apgr_and_cpt_by_hand():
    y_strong = np.array([1.0, 1, 1, 0])
    y_weak = np.array([0.0, 1, 0, 0])  # q_strong .75, q_weak .25: gap .5
    adv = np.array([0.9, 0.1, 0.8, 0.2])  # strong-model order: 0, 2, 3, 1
    # PGR at f = 0, 1/4, 1/2, 3/4, 1: 0, .5, 1, 1, 1. Trapezoids: .0625 + .1875 + .25 + .25.
    out = apgr_cpt(adv, y_strong, y_weak)
    assert out["apgr"] == pytest.approx(0.75)
    assert out["cpt50"] == pytest.approx(0.25)
    assert out["cpt80"] == pytest.approx(0.5)


def test_cost_at_best_quality_by_hand():
    curve = [CurvePoint(3.0, 1.0, 0.8), CurvePoint(1.0, 3.0, 0.95), CurvePoint(2.0, 2.0, 0.9)]
    assert cost_at_best_quality(curve, best_quality=0.9, best_cost=10.0) == pytest.approx(0.2)
    assert cost_at_best_quality(curve, best_quality=0.96, best_cost=10.0) is None


def test_oracle_takes_the_cheapest_best_model():
    Y = np.array([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    C = np.array([[2.0, 1.0], [1.0, 3.0], [5.0, 4.0]])
    assert oracle(Y, C) == (pytest.approx(6.0), pytest.approx(2 / 3))


def test_evaluate_report_on_a_perfect_predictor():
    rng = np.random.default_rng(0)
    Y = (rng.random((200, 3)) < [0.5, 0.7, 0.9]).astype(float)
    C = np.tile([1.0, 2.0, 10.0], (200, 1))
    report = evaluate(Y.copy(), Y, C, np.array([0.1, 0.2, 1.0]), ["a", "b", "c"], pair=("c", "a"))
    assert report.best_model == "c"
    assert report.cost_at_best_quality is not None and report.cost_at_best_quality < 0.5
    assert report.aiq["router"] > max(report.aiq[m] for m in "abc")
    assert report.two_model["apgr"] > 0.5
    text = format_report(report)
    assert text.splitlines()[-1] == f"cost_at_best_quality: {report.cost_at_best_quality:.2f}"
