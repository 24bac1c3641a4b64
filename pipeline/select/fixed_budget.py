"""An exact fixed-budget draw from the ratio-weighted pool: plain numpy.

Rejection sampling (``sampling.rejection_sample``) is exact in one pass, but one pass accepts
about sum(w) / M items, usually far below the budget K. Passing again over the items left gives
item x an inclusion probability of about 1 - (1 - w/M)^T after T passes: concave in w, so the
subset drifts toward low-weight items. For a fixed K the exact design is a draw of K items
without replacement whose inclusion probabilities are

    pi(x) = min(1, c * w(x)),   c chosen so that sum_x pi(x) = K.

``systematic_sample`` draws such a sample by randomised systematic sampling (Goodman and Kish
1950; Hartley and Rao 1962): the items are put in a uniformly random order, laid end to end as
intervals of length pi on [0, K), and the K points u, u + 1, ..., u + K - 1 (u ~ U(0, 1)) pick
the intervals they fall in. Every interval is at most 1 long and the points are 1 apart, so
an interval holds at most one point, and it holds one with probability exactly its length:
item x is selected with probability pi(x), exactly K items are selected, none twice. (The
random order is what makes pairs of items not adjacent in a fixed order selectable together;
only the first-order probabilities pi are claimed and tested here.)

Items with pi = 1 are certain: the design cannot give them their full share w(x) / sum w of
the budget, and ``certain_mass`` says how much of the target's mass they hold.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import UserError
from pipeline.select.sampling import Selection, _check_budget, _check_log_w

CERTAIN = 1.0 - 1e-12  # pi at or above this is 1: float error must not leave it uncertain


def inclusion_probabilities(w: np.ndarray, budget: int) -> tuple[np.ndarray, int]:
    """pi = min(1, c * w) with sum(pi) = min(budget, number of w > 0); and how many pi are 1.

    With m certain items (the m largest w), c = (K - m) / (sum of the other w) must leave the
    largest uncertain item at c * w <= 1; the smallest such m is the solution (pi is then
    continuous and non-decreasing in w). When no more than K items have w > 0, each of them
    is certain.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 1 or (w < 0).any() or not np.isfinite(w).all():
        raise UserError("inclusion probabilities need finite, non-negative weights")
    positive = int(np.count_nonzero(w > 0))
    if positive == 0:
        raise UserError("all weights are zero: nothing in the pool can be selected")
    if budget >= positive:
        return (w > 0).astype(np.float64), positive
    desc = np.sort(w)[::-1]
    tail = np.cumsum(desc[::-1])[::-1]  # tail[m] = sum of desc[m:]
    m = np.arange(budget)
    # (K - m) * w_(m) <= sum_{j >= m} w_(j): the m-th largest is not certain at that c
    fits = (budget - m) * desc[:budget] <= tail[:budget] * (1.0 + 1e-12)
    certain = int(np.argmax(fits))  # fits[K - 1] always holds, since w_(K-1) <= its tail
    c = (budget - certain) / tail[certain]
    # the m items left out of c fail the test above, which makes c * w > 1 for each of them
    pi = np.minimum(1.0, c * w)
    return pi, int(np.count_nonzero(pi >= CERTAIN))


def systematic_sample(pi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rows drawn with inclusion probability exactly ``pi`` (each in [0, 1]), round(sum pi)
    of them, none twice: randomised systematic sampling (see the module docstring).

    Certain rows (pi >= CERTAIN) are taken as they are; the others are laid out in a random
    order and hit by unit-spaced points. Returns the rows in ascending order.
    """
    pi = np.asarray(pi, dtype=np.float64)
    if (pi < 0).any() or (pi > 1 + 1e-9).any():
        raise UserError("inclusion probabilities must lie in [0, 1]")
    certain = np.flatnonzero(pi >= CERTAIN)
    rest = np.flatnonzero((pi > 0) & (pi < CERTAIN))
    draws = int(round(float(pi[rest].sum())))
    if draws == 0:
        return np.sort(certain).astype(np.int64)
    order = rest[rng.permutation(rest.size)]
    edges = np.cumsum(pi[order])
    edges *= draws / edges[-1]  # the float sum is draws up to rounding: make it exact
    points = rng.random() + np.arange(draws)
    hits = np.minimum(np.searchsorted(edges, points, side="left"), order.size - 1)
    return np.sort(np.concatenate([certain, order[hits]])).astype(np.int64)


def rejection_inclusion(accept_p: np.ndarray, passes: int) -> np.ndarray:
    """Approximate inclusion probability of each item after ``passes`` full rejection passes
    without replacement: 1 - (1 - w/M)^T (the last pass stops early, so this is an upper
    bound on the draw's own). Compared with ``inclusion_probabilities`` it shows the drift."""
    accept_p = np.clip(np.asarray(accept_p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):  # accept_p = 1: log1p(-1) = -inf, inclusion 1
        return -np.expm1(passes * np.log1p(-accept_p))


def fixed_budget_sample(log_w: np.ndarray, budget: int, rng: np.random.Generator) -> Selection:
    """``budget`` pool rows without replacement, row x with probability exactly
    min(1, c * w(x)) (sum = budget): one pass, no cap, nothing clipped.

    A pool with fewer rows of w > 0 than the budget gives all of them (``exhausted``).
    """
    log_w = _check_log_w(log_w)
    budget = _check_budget(budget)
    w = np.exp(log_w - log_w.max())
    pi, certain = inclusion_probabilities(w, budget)
    chosen = systematic_sample(pi, rng)
    notes = []
    exhausted = chosen.size < budget
    if exhausted:
        notes.append(f"only {chosen.size} rows have w > 0: all taken, below the budget {budget}")
    certain_rows = pi >= CERTAIN
    return Selection(
        indices=chosen,
        method="fixed_budget",
        budget=budget,
        n_pool=log_w.size,
        proposals=log_w.size,
        exhausted=exhausted,
        first_pass_expected=float(pi.sum()),
        first_pass_accepted=int(chosen.size),
        certain=certain,
        certain_mass=float(w[certain_rows].sum() / w.sum()),
        notes=tuple(notes),
    )
