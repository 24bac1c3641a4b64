"""Samplers and diagnostics on synthetic pools with a known discrete target."""

import json

import numpy as np
import pytest
from scipy.stats import chisquare

from pipeline.errors import UserError
from pipeline.select.sampling import (
    diagnostics,
    effective_sample_size,
    group_shares,
    importance_sample,
    rejection_sample,
    total_variation,
    uniform_sample,
    wer_filter_sample,
)

POOL_SHARES = np.array([0.40, 0.25, 0.15, 0.10, 0.07, 0.03])  # q: most data in easy groups
TARGET_SHARES = np.array([0.10, 0.10, 0.20, 0.20, 0.20, 0.20])  # p: the rare groups matter


def discrete_pool(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Groups drawn from q, and log w = log p(g) - log q_hat(g) with q_hat the pool's shares."""
    groups = np.random.default_rng(seed).choice(len(POOL_SHARES), size=n, p=POOL_SHARES)
    q_hat = np.bincount(groups, minlength=len(POOL_SHARES)) / n
    return groups, np.log(TARGET_SHARES[groups]) - np.log(q_hat[groups])


def log_or_zero(w: np.ndarray) -> np.ndarray:
    """log w with -inf for w = 0, without a warning."""
    with np.errstate(divide="ignore"):
        return np.log(w)


def literal_rejection(log_w: np.ndarray, budget: int, rng: np.random.Generator):
    """The pass-by-pass loop the design describes, as a reference for the vectorised sampler."""
    accept_p = np.exp(log_w - log_w.max())
    remaining, accepted, proposals, passes = np.arange(len(log_w)), [], 0, 0
    while len(accepted) < budget and (accept_p[remaining] > 0).any():
        passes += 1
        order = rng.permutation(remaining)
        hit = rng.random(len(order)) < accept_p[order]
        need = budget - len(accepted)
        if hit.sum() >= need:
            stop = np.flatnonzero(hit)[need - 1]
            accepted.extend(order[: stop + 1][hit[: stop + 1]])
            proposals += stop + 1
            break
        accepted.extend(order[hit])
        proposals += len(order)
        remaining = order[~hit]
    return np.sort(accepted), proposals, passes


def test_rejection_sample_is_exact_when_one_pass_meets_the_budget():
    groups, log_w = discrete_pool(1_000_000)
    selection = rejection_sample(log_w, 100_000, np.random.default_rng(1))
    assert selection.size == selection.n_unique == 100_000
    counts = np.bincount(groups[selection.indices], minlength=len(TARGET_SHARES))
    accepted = dict(enumerate(counts / counts.sum()))
    assert total_variation(accepted, dict(enumerate(TARGET_SHARES))) <= 0.02
    assert chisquare(counts, TARGET_SHARES * counts.sum()).pvalue > 0.01
    # With M = max w, a full first pass accepts n * (1/n) sum w / M = n / M in expectation.
    assert selection.passes == 1 and not selection.exhausted
    assert selection.first_pass_accepted == 100_000
    assert abs(selection.first_pass_expected - 100_000) < 5 * np.sqrt(100_000)
    assert selection.clipped_mass == 0.0


def test_vectorised_passes_match_the_literal_loop():
    w = np.array([1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.3, 0.7, 0.0, 0.15, 0.4])
    log_w = log_or_zero(w)
    reps, budget = 3000, 6
    fast, slow = np.zeros(12), np.zeros(12)
    fast_stats, slow_stats = [], []
    rng_fast, rng_slow = np.random.default_rng(2), np.random.default_rng(3)
    for _ in range(reps):
        sel = rejection_sample(log_w, budget, rng_fast)
        fast[sel.indices] += 1
        fast_stats.append((sel.proposals, sel.passes))
        indices, proposals, passes = literal_rejection(log_w, budget, rng_slow)
        slow[indices] += 1
        slow_stats.append((proposals, passes))
    # Inclusion probabilities agree within 4 standard errors of a difference of two means.
    assert np.all(np.abs(fast - slow) / reps < 4 * np.sqrt(2 * 0.25 / reps))
    assert fast[9] == slow[9] == 0  # weight zero: never accepted
    mean_fast, mean_slow = np.mean(fast_stats, axis=0), np.mean(slow_stats, axis=0)
    assert np.allclose(mean_fast, mean_slow, rtol=0.05)


def test_quantile_cap_reports_clipped_mass():
    w = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 0.0])
    selection = rejection_sample(log_or_zero(w), 5, np.random.default_rng(0), cap_quantile=0.5)
    # By hand: the median of the positive weights {1, 2, 3, 4, 10} is M = 3; clipped mass
    # is ((4 - 3) + (10 - 3)) / 20 = 0.4. The budget takes every positive item, so the first
    # pass is complete and expects (1 + 2 + 3 + 3 + 3) / 3 acceptances.
    assert selection.log_cap == pytest.approx(np.log(3.0))
    assert selection.clipped_mass == pytest.approx(0.4)
    assert selection.first_pass_expected == pytest.approx(12 / 3)
    assert np.array_equal(selection.indices, np.arange(5))


def test_cap_raises_acceptance_on_heavy_tails():
    log_w = np.random.default_rng(0).normal(scale=2.0, size=100_000)
    exact = rejection_sample(log_w, 1_000, np.random.default_rng(1))
    capped = rejection_sample(log_w, 1_000, np.random.default_rng(1), cap_quantile=0.95)
    assert capped.acceptance_rate > 10 * exact.acceptance_rate
    assert exact.passes > capped.passes == 1
    assert 0 < capped.clipped_mass < 1


def test_same_seed_same_subset():
    _, log_w = discrete_pool(50_000)
    first = rejection_sample(log_w, 5_000, np.random.default_rng(7))
    again = rejection_sample(log_w, 5_000, np.random.default_rng(7))
    other = rejection_sample(log_w, 5_000, np.random.default_rng(8))
    assert np.array_equal(first.indices, again.indices)
    assert first.to_dict() == again.to_dict()
    assert not np.array_equal(first.indices, other.indices)


def test_exhausted_pool_is_reported():
    log_w = log_or_zero(np.r_[np.linspace(0.01, 1.0, 70), np.zeros(30)])
    selection = rejection_sample(log_w, 80, np.random.default_rng(0))
    assert selection.exhausted and selection.size == 70
    assert np.array_equal(selection.indices, np.arange(70))
    assert selection.passes > 1 and "exhausted" in selection.notes[-1]


def test_budget_above_pool_size_is_clipped_with_a_note():
    selection = rejection_sample(np.zeros(10), 25, np.random.default_rng(0))
    assert selection.size == 10 and selection.exhausted and selection.passes == 1
    assert any("exceeds the pool size" in note for note in selection.notes)


@pytest.mark.parametrize(
    "log_w, message",
    [
        (np.full(5, -np.inf), "all weights are zero"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([0.0, np.inf]), "NaN or \\+inf"),
    ],
)
def test_rejection_sample_rejects_bad_weights(log_w, message):
    with pytest.raises(UserError, match=message):
        rejection_sample(log_w, 1, np.random.default_rng(0))


def test_rejection_sample_rejects_bad_budget_and_cap():
    with pytest.raises(UserError, match="budget"):
        rejection_sample(np.zeros(5), 0, np.random.default_rng(0))
    with pytest.raises(UserError, match="cap_quantile"):
        rejection_sample(np.zeros(5), 1, np.random.default_rng(0), cap_quantile=1.5)


def test_importance_sample_matches_target_in_expectation():
    groups, log_w = discrete_pool(20_000)
    selection = importance_sample(log_w, 200_000, np.random.default_rng(4))
    assert selection.replacement and selection.size == 200_000
    assert selection.n_unique < 20_000  # more draws than rows: duplicates kept and counted
    assert selection.to_dict()["duplicates"] == 200_000 - selection.n_unique
    counts = np.bincount(groups[selection.indices], minlength=len(TARGET_SHARES))
    assert chisquare(counts, TARGET_SHARES * counts.sum()).pvalue > 0.01


def test_effective_sample_size():
    assert effective_sample_size(np.ones(4)) == pytest.approx(4.0)
    assert effective_sample_size(np.array([1.0, 0, 0, 0])) == pytest.approx(1.0)
    w = np.random.default_rng(0).exponential(size=1000)
    assert effective_sample_size(w) == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert effective_sample_size(7.0 * w) == pytest.approx(effective_sample_size(w))
    assert effective_sample_size(np.zeros(3)) == 0.0


def test_total_variation_and_group_shares():
    assert total_variation({"a": 1, "b": 1}, {"a": 3, "b": 1}) == pytest.approx(0.25)
    assert total_variation({"a": 1}, {"b": 2}) == pytest.approx(1.0)
    groups = [("us", 0), ("us", 0), ("gb", 10), ("gb", 10)]
    assert group_shares(groups, np.array([0, 1, 1, 2])) == {("us", 0): 0.75, ("gb", 10): 0.25}


def test_uniform_and_wer_filter_baselines():
    rng = np.random.default_rng(0)
    selection = uniform_sample(100, 30, rng)
    assert selection.size == selection.n_unique == 30 and selection.method == "random"
    wer = np.array([0.0, 0.5, 0.1, np.nan, 0.2, 1.0])
    kept = wer_filter_sample(wer, 0.2, 10, rng)
    assert set(kept.indices) == {0, 2, 4} and kept.exhausted
    assert kept.notes[0] == "3 of 6 utterances have WER <= 0.2"
    with pytest.raises(UserError, match="no utterance"):
        wer_filter_sample(wer, -1.0, 2, rng)


def test_diagnostics_are_json_and_consistent():
    groups, log_w = discrete_pool(10_000)
    labels = [("acc", int(g)) for g in groups]
    log_w[groups == 0] = -np.inf  # a group outside the target
    target = {("acc", g): TARGET_SHARES[g] for g in range(1, 6)}
    # A seed other than the pool's: the same stream would tie each u to the row's group.
    selection = rejection_sample(log_w, 1_000, np.random.default_rng(5))
    report = diagnostics(log_w, selection, labels, target)
    json.dumps(report, allow_nan=False)
    assert report["acceptance_rate"] == pytest.approx(1_000 / report["proposals"])
    assert "acc/0" not in report["groups"]["accepted"]
    assert report["tv_accepted_target"] < 0.05 < report["tv_pool_target"]
    hist = report["log_w_histogram"]
    assert len(hist["edges"]) == 21
    assert hist["zero_weight"]["acc/0"] == int((groups == 0).sum())
    for g in range(1, 6):
        assert sum(hist["counts"][f"acc/{g}"]) == int((groups == g).sum())
    finite = np.exp(log_w[np.isfinite(log_w)] - log_w.max())
    assert report["ess"] == pytest.approx(finite.sum() ** 2 / (finite**2).sum())
