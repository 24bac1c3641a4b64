"""Density-ratio estimators against analytic ratios and hand-computed tables."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from pipeline.errors import UserError
from pipeline.select.ratios import (
    balanced_target,
    classifier_log_ratio,
    combine,
    difficulty_log_ratio,
    groups_log_ratio,
)

DIMS = 12
SHIFT = np.full(DIMS, 0.3)  # target mean; pool is N(0, I), target N(SHIFT, I)


def gaussian_samples(n_pool: int = 4000, n_target: int = 400, shift: np.ndarray = SHIFT):
    """Pool and target embeddings and the analytic log p/q of the pool rows."""
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(n_pool, DIMS))
    target = rng.normal(size=(n_target, DIMS)) + shift
    # log N(x; s, I) - log N(x; 0, I) = x.s - |s|^2 / 2
    return pool, target, pool @ shift - shift @ shift / 2


def test_classifier_log_ratio_tracks_the_analytic_ratio():
    pool, target, truth = gaussian_samples()
    log_w, info = classifier_log_ratio(pool, target, np.random.default_rng(1))
    assert spearmanr(log_w, truth).statistic >= 0.9
    # A calibrated ratio integrates to one under the pool: E_q[w] = 1.
    assert np.mean(np.exp(log_w)) == pytest.approx(1.0, abs=0.1)
    assert info["folds"] == 5 and info["n_pool"] == 4000 and info["n_target"] == 400
    assert 0.7 < info["auc"] < 0.85 and info["clipped"] == 0


def test_classifier_is_cross_fitted():
    # 150 dims, 300 rows, one distribution: an in-sample fit would separate the two sets
    # perfectly; out-of-fold scores cannot, so AUC stays near chance and the ratio near 1.
    rng = np.random.default_rng(0)
    pool, target = rng.normal(size=(240, 150)), rng.normal(size=(60, 150))
    log_w, info = classifier_log_ratio(pool, target, rng, C=1e4, calibrate=False)
    assert info["auc"] < 0.65
    assert np.isfinite(log_w).all()


def test_classifier_is_deterministic_and_supports_pca():
    pool, target, truth = gaussian_samples(1000, 200)
    first, _ = classifier_log_ratio(pool, target, np.random.default_rng(3), pca_dim=4)
    again, info = classifier_log_ratio(pool, target, np.random.default_rng(3), pca_dim=4)
    assert np.array_equal(first, again) and info["pca_dim"] == 4
    assert spearmanr(first, truth).statistic > 0.5


def test_classifier_chooses_the_layer_and_strength_by_cross_fitted_log_loss():
    # layer 1 carries the pool/target shift, layers 0 and 2 are noise: the log loss finds it
    pool, target, truth = gaussian_samples(1000, 200)
    rng = np.random.default_rng(5)

    def stack(x):
        noise = rng.normal(size=(len(x), 2, x.shape[1]))
        return np.stack([noise[:, 0], x, noise[:, 1]], axis=1)

    log_w, info = classifier_log_ratio(stack(pool), stack(target), np.random.default_rng(3))
    assert info["layer"] == 1 and info["layers"] == 3 and info["C"] in (0.01, 0.1, 1.0)
    assert len(info["candidates"]) == 9
    assert info["log_loss"] == min(c["log_loss"] for c in info["candidates"])
    assert spearmanr(log_w, truth).statistic >= 0.9
    # the chosen candidate's scores are those of a fit on that layer alone
    alone, _ = classifier_log_ratio(pool, target, np.random.default_rng(3), C=info["C"])
    np.testing.assert_allclose(log_w, alone)
    # a fixed layer (negative counts from the top) and C are taken as given
    fixed, info = classifier_log_ratio(
        stack(pool), stack(target), np.random.default_rng(3), layer=-1, C=0.5
    )
    assert info["layer"] == 2 and info["C"] == 0.5 and len(info["candidates"]) == 1
    assert abs(spearmanr(fixed, truth).statistic) < 0.2
    with pytest.raises(UserError, match="layer must be between -3 and 2, got 3"):
        classifier_log_ratio(stack(pool), stack(target), np.random.default_rng(3), layer=3)
    with pytest.raises(
        UserError, match=r"pool embeddings are \(3, 12\) \(layers, dims\), target \(1, 12\)"
    ):
        classifier_log_ratio(stack(pool), target, np.random.default_rng(3))


def test_too_small_target_sample():
    pool, target, _ = gaussian_samples(200, 19)
    with pytest.raises(UserError, match="target sample too small: 19 < 20"):
        classifier_log_ratio(pool, target, np.random.default_rng(0))
    # NaN rows do not count towards the 20.
    pool, target, _ = gaussian_samples(200, 25)
    target[:6, 0] = np.nan
    with pytest.raises(UserError, match="target sample too small: 19 < 20"):
        classifier_log_ratio(pool, target, np.random.default_rng(0))


def test_nan_rows_are_excluded_and_reported():
    pool, target, _ = gaussian_samples(1000, 200)
    pool[[3, 17], 2] = np.nan
    pool[40, 0] = np.inf
    target[5, 1] = np.nan
    log_w, info = classifier_log_ratio(pool, target, np.random.default_rng(0))
    assert np.array_equal(np.flatnonzero(np.isneginf(log_w)), [3, 17, 40])
    assert np.isfinite(np.delete(log_w, [3, 17, 40])).all()
    assert info["excluded_pool_rows"] == 3 and info["excluded_pool_indices"] == [3, 17, 40]
    assert info["excluded_target_rows"] == 1 and info["n_pool"] == 997
    pool[:] = np.nan
    with pytest.raises(UserError, match="all 1000 pool embedding rows"):
        classifier_log_ratio(pool, target, np.random.default_rng(0))


def test_perfect_separation_is_a_user_error():
    pool, target, _ = gaussian_samples(1000, 100, shift=np.full(DIMS, 5.0))
    with pytest.raises(UserError, match="almost perfectly \\(AUC 1.0000\\)"):
        classifier_log_ratio(pool, target, np.random.default_rng(0))


def test_classifier_rejects_mismatched_inputs():
    pool, target, _ = gaussian_samples(200, 40)
    with pytest.raises(UserError, match="dims"):
        classifier_log_ratio(pool, target[:, :5], np.random.default_rng(0))
    with pytest.raises(UserError, match="folds"):
        classifier_log_ratio(pool, target, np.random.default_rng(0), folds=1)
    with pytest.raises(UserError, match="pca_dim"):
        classifier_log_ratio(pool, target, np.random.default_rng(0), pca_dim=DIMS + 1)


def test_groups_log_ratio_is_exact_on_a_toy_table():
    pool = ["us", "us", "us", "gb", "gb", "car", "nyc", "nyc"]
    target = {"us": 1.0, "gb": 1.0, "car": 2.0}
    log_w, info = groups_log_ratio(pool, target)
    # p = (1/4, 1/4, 1/2), q = (3/8, 2/8, 1/8): w = (2/3, 1, 4); nyc is outside the target.
    expected = np.log([2 / 3] * 3 + [1.0] * 2 + [4.0]).tolist() + [-np.inf, -np.inf]
    assert np.allclose(log_w, expected)
    assert info["missing_groups"] == [] and info["zero_weight_rows"] == 2
    # Weighted by w, the pool reproduces p: sum over a group's rows of w / n = p(g).
    shares = {g: np.exp(log_w[np.array(pool) == g]).sum() / len(pool) for g in target}
    assert shares == pytest.approx({"us": 0.25, "gb": 0.25, "car": 0.5})


def test_groups_missing_from_the_pool_are_reported_and_renormalised():
    pool = [("us", 10), ("us", 10), ("gb", 0)]
    target = {("us", 10): 1.0, ("gb", 0): 1.0, ("car", 0): 2.0}
    log_w, info = groups_log_ratio(pool, target)
    assert info["missing_groups"] == ["car/0"] and info["missing_mass"] == pytest.approx(0.5)
    # Renormalised over the reachable groups: p = (1/2, 1/2), q = (2/3, 1/3).
    assert np.allclose(np.exp(log_w), [0.75, 0.75, 1.5])
    with pytest.raises(UserError, match="no target group"):
        groups_log_ratio(pool, {("car", 0): 1.0})
    with pytest.raises(UserError, match="non-negative"):
        groups_log_ratio(pool, {("us", 10): -1.0})


def test_balanced_target_gives_equal_group_mass():
    pool = ["a"] * 70 + ["b"] * 20 + ["c"] * 10
    target = balanced_target(pool)
    assert target == {"a": 1.0, "b": 1.0, "c": 1.0}
    log_w, _ = groups_log_ratio(pool, target)
    w = np.exp(log_w)
    masses = [w[np.array(pool) == g].sum() / w.sum() for g in "abc"]
    assert masses == pytest.approx([1 / 3] * 3)


def test_difficulty_tilt_and_nan_losses():
    loss = np.array([0.5, 2.0, np.nan, 1.0, np.inf])
    log_w, info = difficulty_log_ratio(loss, beta=0.5)
    assert np.allclose(log_w[[0, 1, 3]], [0.25, 1.0, 0.5])
    assert np.isneginf(log_w[[2, 4]]).all()
    assert info["nan_losses"] == 1 and info["nonfinite_losses"] == 2
    with pytest.raises(UserError, match="beta"):
        difficulty_log_ratio(loss, beta=np.nan)


def test_combine_sums_log_ratios():
    a, b = np.array([0.0, 1.0, -np.inf]), np.array([2.0, -1.0, 3.0])
    assert np.array_equal(combine(a, b), [2.0, 0.0, -np.inf])
    with pytest.raises(UserError, match="shapes"):
        combine(a, b[:2])
    with pytest.raises(UserError, match="NaN"):
        combine(a, np.array([np.nan, 0.0, 0.0]))
