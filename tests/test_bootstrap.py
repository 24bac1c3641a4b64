"""The report's statistics: cluster and hierarchical bootstraps against known variances, the
p-value floor, and Holm's correction against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline import metrics

WORDS = 8  # reference words of every synthetic utterance


def _speakers(rng, n_speakers: int, utterances: int, a: float, b: float):
    """Errors, reference words and speaker of each utterance: each speaker has an error rate
    drawn from Beta(a, b), and each of its utterances Binomial(WORDS, rate) errors."""
    speaker = np.repeat(np.arange(n_speakers), utterances)
    rates = rng.beta(a, b, n_speakers)[speaker]
    return rng.binomial(WORDS, rates), np.full(len(speaker), WORDS), speaker


def test_cluster_bootstrap_matches_the_analytic_error_of_the_ratio():
    n_speakers, utterances, a, b = 300, 10, 0.5, 2.0
    # Var(WER) = n_speakers * Var(errors of one speaker) / words^2, where a speaker's m words
    # have Var = m E[p(1-p)] + m^2 Var(p) over p ~ Beta(a, b): rates vary strongly by speaker.
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    m = utterances * WORDS
    speaker_var = m * (mean - var - mean**2) + m**2 * var
    analytic = math.sqrt(n_speakers * speaker_var) / (n_speakers * m)
    cluster, utterance = [], []
    for k in range(4):
        errors, ref_words, speaker = _speakers(np.random.default_rng(k), n_speakers, 10, a, b)
        rng = np.random.default_rng(10 + k)
        cluster.append(metrics.bootstrap_rates(errors, ref_words, rng, 2000, speaker).std())
        utterance.append(metrics.bootstrap_rates(errors, ref_words, rng, 2000).std())
    assert np.mean(cluster) == pytest.approx(analytic, rel=0.15)
    # Utterances resampled as if independent: far too narrow when speakers differ this much.
    assert np.mean(utterance) < 0.5 * analytic
    low, high = metrics.bootstrap_ci(
        errors, ref_words, np.random.default_rng(0), 2000, 0.95, speaker
    )
    assert high - low == pytest.approx(2 * 1.96 * analytic, rel=0.2)


def test_hierarchical_bootstrap_counts_the_seed_to_seed_variance():
    n_speakers, utterances = 200, 10
    rng = np.random.default_rng(0)
    speaker = np.repeat(np.arange(n_speakers), utterances)
    rates = rng.beta(2, 8, n_speakers)[speaker]
    offsets = np.array([-0.06, -0.02, 0.02, 0.06])  # four seeds of one system, same speakers
    errors = rng.binomial(WORDS, np.clip(rates + offsets[:, None], 0, 1))
    ref_words = np.full(len(speaker), WORDS)
    seed_wers = errors.sum(axis=1) / ref_words.sum()
    both = metrics.bootstrap_rates(errors, ref_words, np.random.default_rng(1), 4000, speaker)
    mean_errors = errors.mean(axis=0)
    speakers_only = metrics.bootstrap_rates(
        mean_errors, ref_words, np.random.default_rng(1), 4000, speaker
    )
    assert both.mean() == pytest.approx(seed_wers.mean(), abs=0.002)
    # Resampling 4 seeds adds the (population) variance of their WERs over 4.
    expected = math.sqrt(speakers_only.var() + seed_wers.var() / len(offsets))
    assert both.std() == pytest.approx(expected, rel=0.1)
    low, high = metrics.seed_bootstrap_ci(errors, ref_words, np.random.default_rng(2), 4000)
    flat_low, flat_high = metrics.bootstrap_ci(mean_errors, ref_words, np.random.default_rng(2))
    assert low < seed_wers.mean() < high and high - low > 2 * (flat_high - flat_low)


def test_pooled_paired_bootstrap_averages_seed_pairs():
    rng = np.random.default_rng(3)
    n_speakers, utterances = 100, 6
    speaker = np.repeat(np.arange(n_speakers), utterances)
    rates = rng.beta(2, 8, n_speakers)[speaker]
    other = rng.binomial(WORDS, np.tile(rates, (3, 1)))
    mine = rng.binomial(WORDS, np.clip(0.7 * rates + [[-0.02], [0.0], [0.02]], 0, 1))
    ref_words = np.full(len(speaker), WORDS)
    test = metrics.seed_paired_bootstrap(other, mine, ref_words, rng, 2000, clusters=speaker)
    deltas = (mine - other).sum(axis=1) / ref_words.sum()
    assert test["delta"] == pytest.approx(deltas.mean())
    assert test["relative"] == pytest.approx(mine.sum() / other.sum() - 1)
    assert test["low"] < test["delta"] < test["high"] < 0
    assert test["relative_low"] < test["relative"] < test["relative_high"] < 0
    assert test["clusters"] == n_speakers and test["resamples"] == 2000
    assert test["p_value"] < 0.01


def test_p_value_floor_is_one_over_resamples_plus_one():
    errors_a, ref_words, speaker = _speakers(np.random.default_rng(4), 50, 4, 1, 20)
    errors_b = np.minimum(ref_words, errors_a + 5)  # far worse on every utterance
    test = metrics.paired_bootstrap(
        errors_a, errors_b, ref_words, np.random.default_rng(0), 10_000, clusters=speaker
    )
    assert test["delta"] > 0.4 and test["p_value"] == 1 / 10_001
    same = metrics.paired_bootstrap(errors_a, errors_a, ref_words, np.random.default_rng(0))
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}


def test_one_cluster_cannot_be_resampled():
    errors, ref_words = np.array([1, 0, 2]), np.array([4, 4, 4])
    one = ["s1"] * 3
    assert all(math.isnan(v) for v in metrics.bootstrap_ci(errors, ref_words, None, 10, 0.95, one))
    test = metrics.paired_bootstrap(errors, errors + 1, ref_words, None, 10, clusters=one)
    assert test["delta"] == pytest.approx(0.25) and math.isnan(test["p_value"])


def test_holm_against_hand_computed_values():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    adjusted = metrics.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert metrics.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    # a test that could not run is not part of the family
    with_nan = metrics.holm([0.02, float("nan"), 0.5])
    assert with_nan[0] == pytest.approx(0.04) and math.isnan(with_nan[1]) and with_nan[2] == 0.5
    assert len(metrics.holm([])) == 0


def test_cluster_codes_join_speakers_through_shared_windows():
    frame = pd.DataFrame(
        {
            "speaker": ["a", "a", "b", "c", None, "", "d"],
            "window": [0, 1, 1, 2, 3, 3, None],
        }
    )
    codes = metrics.cluster_codes(frame, ["speaker", "window"])
    # a and b share window 1; c is alone; the two rows without a speaker share window 3
    assert codes.tolist() == [0, 0, 0, 1, 2, 2, 3]
    alone = metrics.cluster_codes(frame, ["speaker", "no such column"])
    assert alone.tolist() == [0, 0, 1, 2, 3, 4, 5]  # no speaker: a cluster of its own
