"""The exact fixed-budget sampler at the demo's regime: N about 8,000, K = 300, weights as
skewed as the demo's classifier ratio (a few hundred target-like rows far above the rest)."""

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.select.fixed_budget import (
    fixed_budget_sample,
    inclusion_probabilities,
    rejection_inclusion,
    systematic_sample,
)
from pipeline.select.sampling import rejection_sample

N, K, DRAWS = 8000, 300, 4000


def demo_like_pool(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Group codes (0: 250 target-condition rows, 1: 400 near it, 2: the rest) and log w:
    the target rows hold most of the ratio's mass, as the demo's classifier gives them."""
    rng = np.random.default_rng(seed)
    groups = np.repeat([0, 1, 2], [250, 400, N - 650])
    log_w = np.concatenate(
        [rng.normal(2.0, 1.5, 250), rng.normal(-1.0, 1.5, 400), rng.normal(-5.0, 2.0, N - 650)]
    )
    return groups, log_w


def test_inclusion_probabilities_sum_to_the_budget_and_are_min_one_cw():
    _, log_w = demo_like_pool()
    w = np.exp(log_w - log_w.max())
    pi, certain = inclusion_probabilities(w, K)
    assert pi.sum() == pytest.approx(K, abs=1e-9)
    assert ((pi >= 0) & (pi <= 1)).all()
    assert certain == int((pi == 1.0).sum()) and 0 < certain < K
    uncertain = pi < 1.0
    c = pi[uncertain] / w[uncertain]
    assert np.allclose(c, c[0], rtol=1e-12)  # one c for every uncertain row
    assert (c[0] * w[~uncertain] >= 1.0).all()  # the certain ones are those with c w >= 1
    # no weight is certain when c * max(w) <= 1
    flat = np.full(N, 1.0)
    assert inclusion_probabilities(flat, K)[1] == 0
    assert np.allclose(inclusion_probabilities(flat, K)[0], K / N)


def test_fewer_positive_rows_than_the_budget_are_all_certain():
    w = np.zeros(100)
    w[:7] = [5, 1, 0.1, 1e-9, 3, 2, 1]
    pi, certain = inclusion_probabilities(w, 10)
    assert certain == 7 and pi[:7].tolist() == [1.0] * 7 and pi[7:].sum() == 0
    with pytest.raises(UserError, match="zero"):
        inclusion_probabilities(np.zeros(5), 3)


def test_empirical_inclusion_matches_min_one_cw_over_many_draws():
    """Over 4,000 draws each row's selection frequency is within Monte Carlo error of pi,
    and the subset's group shares match the ratio-weighted pool's (here no group is capped
    by certainty, so sum of pi per group / K is w's share)."""
    groups, log_w = demo_like_pool()
    w = np.exp(log_w - log_w.max())
    pi, _ = inclusion_probabilities(w, K)
    rng = np.random.default_rng(1)
    counts = np.zeros(N)
    group_counts = np.zeros(3)
    for _ in range(DRAWS):
        picked = systematic_sample(pi, rng)
        assert picked.size == K and np.unique(picked).size == K
        counts[picked] += 1
        group_counts += np.bincount(groups[picked], minlength=3)
    freq = counts / DRAWS
    se = np.sqrt(pi * (1 - pi) / DRAWS)
    tested = (pi > 0.01) & (pi < 1.0)
    z = (freq - pi)[tested] / se[tested]
    assert np.abs(z).max() < 5.0  # about 1,000 rows tested: |z| > 5 has odds ~1e-3 overall
    assert abs(np.mean(z**2) - 1.0) < 0.15  # the spread is binomial, not just the mean
    assert (counts[pi == 1.0] == DRAWS).all() and (counts[pi == 0] == 0).all()
    expected = np.bincount(groups, weights=pi, minlength=3) / K
    assert np.allclose(group_counts / (DRAWS * K), expected, atol=0.003)


def test_group_shares_match_the_ratio_weighted_pool_when_nothing_is_certain():
    groups = np.repeat([0, 1, 2], [250, 400, N - 650])
    rng = np.random.default_rng(5)
    log_w = np.repeat([1.0, 0.0, -1.0], [250, 400, N - 650]) + rng.normal(0, 0.5, N)
    w = np.exp(log_w - log_w.max())
    assert inclusion_probabilities(w, K)[1] == 0
    shares = np.zeros(3)
    for _ in range(1000):
        picked = fixed_budget_sample(log_w, K, rng).indices
        shares += np.bincount(groups[picked], minlength=3)
    weighted = np.bincount(groups, weights=w, minlength=3) / w.sum()
    assert np.allclose(shares / shares.sum(), weighted, atol=0.005)


def test_rejection_passes_drift_toward_low_weights_and_the_fixed_budget_does_not():
    """The regime of the issue: many passes at a low acceptance. The passes' subset holds a
    smaller target share than the exact design, as 1 - (1 - w/M)^T predicts."""
    groups, log_w = demo_like_pool()
    rng = np.random.default_rng(3)
    exact, passes, rejected = [], [], []
    for _ in range(200):
        exact.append(np.mean(groups[fixed_budget_sample(log_w, K, rng).indices] == 0))
        sel = rejection_sample(log_w, K, rng)
        passes.append(sel.passes)
        rejected.append(np.mean(groups[sel.indices] == 0))
    w = np.exp(log_w - log_w.max())
    pi, _ = inclusion_probabilities(w, K)
    assert np.mean(exact) == pytest.approx(pi[groups == 0].sum() / K, abs=0.01)
    assert np.median(passes) > 5
    assert np.mean(rejected) < np.mean(exact) - 0.02  # each mean's error is about 0.002
    approx = rejection_inclusion(w, int(np.median(passes)))
    predicted = approx[groups == 0].sum() / approx.sum()
    assert predicted < pi[groups == 0].sum() / K


def test_fixed_budget_selection_record():
    groups, log_w = demo_like_pool()
    sel = fixed_budget_sample(log_w, K, np.random.default_rng(4))
    assert sel.method == "fixed_budget" and sel.passes == 1 and not sel.exhausted
    assert sel.size == sel.n_unique == K and sel.certain > 0
    w = np.exp(log_w - log_w.max())
    top = np.argsort(-w)[: sel.certain]
    assert set(top) <= set(sel.indices.tolist())  # the certain rows are always in
    assert sel.certain_mass == pytest.approx(w[top].sum() / w.sum())
    with np.errstate(divide="ignore"):
        two = np.log(np.array([1.0, 2.0, 0.0, 0.0]))
    small = fixed_budget_sample(two, 3, np.random.default_rng(0))
    assert small.exhausted and small.indices.tolist() == [0, 1] and small.certain == 2
