"""Selectors over a scored pool and the diagnostics every selection writes: plain numpy.

The exact fixed-budget design (the default for rsft and oracle) is in
``fixed_budget``; ``rejection_sample`` is rejection sampling as the method describes
it, exact only within its first pass.

Weights arrive as log density ratios ``log_w`` aligned with the pool (``-inf`` is weight 0) and
are only ever exponentiated after subtracting their maximum, so any scale is safe. Selectors
return a frozen ``Selection``; nothing here reads files or models.

Policy for a budget larger than what a selector can give without replacement: no error. The
selector takes everything it can, sets ``exhausted`` and says so in ``notes``; an exhausted
pool is an ordinary outcome of rejection sampling, and a bigger budget is its extreme case.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from pipeline.errors import UserError

HIST_BINS = 20  # bins of the per-group log-w histogram


@dataclass(frozen=True, eq=False)
class Selection:
    """A subset of the pool and how it was drawn.

    ``indices`` are pool rows in ascending order; with-replacement selectors repeat rows.
    ``proposals`` counts the pool items looked at (rejection sampling) or draws made.
    The first-pass pair compares the expected number accepted among the items visited in the
    first pass (sum of w/M over them) with the number actually accepted there.
    """

    indices: np.ndarray
    method: str
    budget: int
    n_pool: int
    proposals: int
    passes: int = 1
    exhausted: bool = False  # the pool ran out before the budget was met
    replacement: bool = False
    log_cap: float | None = None  # log M of rejection sampling
    clipped_mass: float = 0.0  # sum(w - min(w, M)) / sum(w)
    first_pass_expected: float | None = None
    first_pass_accepted: int | None = None
    # fixed-budget design: rows with inclusion probability 1, and their share of sum w (the
    # target mass that cannot get its full share of the budget)
    certain: int = 0
    certain_mass: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(len(self.indices))

    @property
    def n_unique(self) -> int:
        return int(len(np.unique(self.indices)))

    @property
    def acceptance_rate(self) -> float:
        return self.size / self.proposals if self.proposals else 0.0

    def to_dict(self) -> dict:
        """Everything but the indices, with the derived counts, as JSON-serialisable values."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "indices"}
        out["notes"] = list(self.notes)
        unique = self.n_unique
        out.update(selected=self.size, unique=unique, duplicates=self.size - unique)
        out["acceptance_rate"] = self.acceptance_rate
        return out


def _check_log_w(log_w: np.ndarray) -> np.ndarray:
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.ndim != 1 or log_w.size == 0:
        raise UserError(f"log-ratios must be a non-empty 1-D array, got shape {log_w.shape}")
    if np.isnan(log_w).any() or np.isposinf(log_w).any():
        bad = int(np.isnan(log_w).sum() + np.isposinf(log_w).sum())
        raise UserError(f"log-ratios contain {bad} NaN or +inf values")
    if np.isneginf(log_w).all():
        raise UserError("all weights are zero: nothing in the pool can be selected")
    return log_w


def _check_budget(budget: int) -> int:
    if int(budget) != budget or budget < 1:
        raise UserError(f"budget must be a positive integer, got {budget}")
    return int(budget)


def _relative_weights(log_w: np.ndarray, cap_quantile: float | None) -> tuple[np.ndarray, float]:
    """w / M in [0, inf) and log M; M = max w, or the cap_quantile quantile of the positive w."""
    top = float(log_w.max())
    # The max is 1; a weight below about 1e-308 of the max underflows to 0 and counts as 0.
    w = np.exp(log_w - top)
    if cap_quantile is None:
        return w, top
    if not 0.0 < cap_quantile <= 1.0:
        raise UserError(f"cap_quantile must be in (0, 1], got {cap_quantile}")
    # Over positive weights only: zero-weight rows (groups outside the target) would drag the
    # quantile to zero and make every positive item certain to be accepted.
    cap = float(np.quantile(w[w > 0], cap_quantile))
    return w / cap, top + float(np.log(cap))


def _acceptance_pass(accept_p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Geometric(accept_p) pass numbers, by inversion of one uniform per item.

    Floats, so that a tiny w/M (an astronomical pass number) and w = 0 (never: +inf) need no
    integer special cases.
    """
    u = 1.0 - rng.random(accept_p.size)  # in (0, 1], so log(u) is finite
    with np.errstate(divide="ignore", invalid="ignore"):
        passes = np.maximum(1.0, np.ceil(np.log(u) / np.log1p(-accept_p)))
    passes[accept_p == 1.0] = 1.0
    passes[accept_p == 0.0] = np.inf
    return passes


def rejection_sample(
    log_w: np.ndarray, budget: int, rng: np.random.Generator, cap_quantile: float | None = None
) -> Selection:
    """Accept pool item x with probability min(1, w(x)/M), in passes without replacement.

    Each pass visits the not-yet-accepted items in a fresh random order and accepts one when
    u < w/M (u ~ U(0,1)); sampling stops as soon as ``budget`` items are accepted, or when no
    item with w > 0 is left (``exhausted``). With M = max w the items accepted in the first
    pass are an exact draw from p restricted to the pool's support; items accepted in later
    passes are not: after T passes an item's inclusion probability is about
    1 - (1 - w/M)^T, concave in w, so the subset drifts toward low-weight items
    (``fixed_budget.fixed_budget_sample`` is the exact fixed-size design). ``cap_quantile``
    sets M to that quantile of the positive weights, clips w at M and reports the clipped mass.

    All passes are simulated at once, which is the same random process: an item's outcomes in
    successive passes are independent Bernoulli(w/M) draws, so the pass in which it is accepted
    is Geometric(w/M), and within a pass the visiting order is an independent uniform
    permutation. Sorting by (pass, random key) and taking the first ``budget`` items is what the
    pass-by-pass loop returns; this form costs O(n) however many passes a small w/M needs.
    """
    log_w = _check_log_w(log_w)
    budget = _check_budget(budget)
    n = log_w.size
    accept_p, log_cap = _relative_weights(log_w, cap_quantile)
    # sum(w - min(w, M)) / sum(w) is scale-free, so it can be computed on w/M.
    clipped_mass = float(np.maximum(accept_p - 1.0, 0.0).sum() / accept_p.sum())
    accept_p = np.minimum(accept_p, 1.0)

    first_pass = _acceptance_pass(accept_p, rng)
    order_key = rng.random(n)  # position within a pass: a uniform random order

    n_positive = int(np.count_nonzero(accept_p > 0))
    notes = []
    if budget > n:
        notes.append(f"budget {budget} exceeds the pool size {n}; selecting until exhausted")
    if n_positive <= budget:
        chosen = np.flatnonzero(accept_p > 0)
        last_pass = float(first_pass[chosen].max())
        # The last pass visits every item still in the pool before exhaustion is declared.
        proposals = float(np.minimum(first_pass, last_pass).sum())
        visited_first = np.ones(n, dtype=bool)
    else:
        last_pass = float(np.partition(first_pass, budget - 1)[budget - 1])
        earlier = first_pass < last_pass
        needed = budget - int(np.count_nonzero(earlier))
        in_last = first_pass == last_pass
        cutoff = np.partition(order_key[in_last], needed - 1)[needed - 1]
        chosen = np.flatnonzero(earlier | (in_last & (order_key <= cutoff)))
        # Passes before the last visit each remaining item; the last stops at the cutoff.
        visited_last = (first_pass >= last_pass) & (order_key <= cutoff)
        proposals = float(np.minimum(first_pass, last_pass - 1.0).sum() + visited_last.sum())
        visited_first = visited_last if last_pass == 1.0 else np.ones(n, dtype=bool)
    exhausted = len(chosen) < budget
    if exhausted:
        notes.append(f"pool exhausted: {len(chosen)} of {budget} accepted")
    return Selection(
        indices=chosen.astype(np.int64),
        method="rejection",
        budget=budget,
        n_pool=n,
        proposals=int(proposals),
        passes=int(last_pass),
        exhausted=exhausted,
        log_cap=log_cap,
        clipped_mass=clipped_mass,
        first_pass_expected=float(accept_p[visited_first].sum()),
        first_pass_accepted=int(np.count_nonzero(first_pass[chosen] == 1.0)),
        notes=tuple(notes),
    )


def one_pass_rejection(
    log_w: np.ndarray, rng: np.random.Generator, cap_quantile: float | None = None
) -> Selection:
    """Visit every item once and accept it when u < w/M (u ~ U(0,1)): with M = max w, what is
    accepted is an exact draw from the target restricted to the proposals' support, of random
    size (expected sum min(1, w/M)). For generated candidates, which come without a budget.
    ``cap_quantile`` sets M to that quantile of the positive weights, clips w at M and reports
    the clipped mass, as ``rejection_sample`` does."""
    log_w = _check_log_w(log_w)
    accept_p, log_cap = _relative_weights(log_w, cap_quantile)
    clipped_mass = float(np.maximum(accept_p - 1.0, 0.0).sum() / accept_p.sum())
    accept_p = np.minimum(accept_p, 1.0)
    chosen = np.flatnonzero(rng.random(log_w.size) < accept_p)
    return Selection(
        indices=chosen.astype(np.int64),
        method="rejection_one_pass",
        budget=log_w.size,
        n_pool=log_w.size,
        proposals=log_w.size,
        log_cap=log_cap,
        clipped_mass=clipped_mass,
        first_pass_expected=float(accept_p.sum()),
        first_pass_accepted=int(chosen.size),
    )


def importance_sample(log_w: np.ndarray, budget: int, rng: np.random.Generator) -> Selection:
    """Draw ``budget`` pool items with replacement, with probability proportional to w (DSIR).

    Duplicates are kept (``indices`` repeats rows); ``Selection.n_unique`` counts distinct ones.
    """
    log_w = _check_log_w(log_w)
    budget = _check_budget(budget)
    w = np.exp(log_w - log_w.max())
    picks = rng.choice(log_w.size, size=budget, replace=True, p=w / w.sum())
    return Selection(
        indices=np.sort(picks).astype(np.int64),
        method="importance",
        budget=budget,
        n_pool=log_w.size,
        proposals=budget,
        replacement=True,
    )


def uniform_sample(
    n: int, budget: int, rng: np.random.Generator, method: str = "random"
) -> Selection:
    """The ``random`` baseline: ``budget`` of ``n`` pool rows uniformly, without replacement."""
    budget = _check_budget(budget)
    if n < 1:
        raise UserError("the pool is empty")
    take = min(budget, n)
    notes = () if take == budget else (f"budget {budget} exceeds the pool size {n}; took all",)
    return Selection(
        indices=np.sort(rng.choice(n, size=take, replace=False)).astype(np.int64),
        method=method,
        budget=budget,
        n_pool=n,
        proposals=take,
        exhausted=take < budget,
        notes=notes,
    )


def wer_filter_sample(
    wer: np.ndarray, threshold: float, budget: int, rng: np.random.Generator
) -> Selection:
    """The ``wer_filter`` baseline: keep rows with WER <= threshold, then uniform to the budget.

    Rows whose WER is NaN (no reference words) never pass the filter.
    """
    wer = np.asarray(wer, dtype=np.float64)
    kept = np.flatnonzero(wer <= threshold)  # NaN compares False
    if kept.size == 0:
        raise UserError(f"no utterance has WER <= {threshold}")
    inner = uniform_sample(kept.size, budget, rng, method="wer_filter")
    note = f"{kept.size} of {wer.size} utterances have WER <= {threshold}"
    return replace(inner, indices=kept[inner.indices], n_pool=wer.size, notes=(note, *inner.notes))


def effective_sample_size(w: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of weights w >= 0 (0.0 if all zero)."""
    w = np.asarray(w, dtype=np.float64)
    square_sum = float(np.square(w).sum())
    return float(w.sum()) ** 2 / square_sum if square_sum > 0 else 0.0


def total_variation(p: Mapping[Hashable, float], q: Mapping[Hashable, float]) -> float:
    """Total variation distance between two discrete distributions, each normalised first."""
    p_sum, q_sum = float(sum(p.values())), float(sum(q.values()))
    if p_sum <= 0 or q_sum <= 0:
        raise UserError("total variation needs two distributions with positive mass")
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) / p_sum - q.get(k, 0.0) / q_sum) for k in keys)


def group_label(group: Hashable) -> str:
    """A JSON key for a group: tuples such as (accent, snr) join with '/'."""
    if isinstance(group, tuple):
        return "/".join(str(part) for part in group)
    return str(group)


def encode_groups(groups: Sequence[Hashable]) -> tuple[np.ndarray, list]:
    """Integer codes per row and the distinct groups in order of first appearance."""
    index: dict = {}
    codes = np.fromiter(
        (index.setdefault(g, len(index)) for g in groups), dtype=np.int64, count=len(groups)
    )
    return codes, list(index)


def group_shares(groups: Sequence[Hashable], indices: np.ndarray | None = None) -> dict:
    """Share of each group among ``groups[indices]`` (all rows if None; repeats count)."""
    return _shares(*encode_groups(groups), indices)


def _shares(codes: np.ndarray, uniques: list, indices: np.ndarray | None = None) -> dict:
    picked = codes if indices is None else codes[np.asarray(indices, dtype=np.int64)]
    counts = np.bincount(picked, minlength=len(uniques))
    total = max(int(counts.sum()), 1)
    return {g: int(c) / total for g, c in zip(uniques, counts, strict=True) if c > 0}


def _log_w_histograms(log_w: np.ndarray, codes: np.ndarray, uniques: list) -> dict:
    """Per-group counts of log w over shared bin edges, plus each group's zero-weight count."""
    finite = np.isfinite(log_w)  # never empty: the caller checked that some w > 0
    edges = np.histogram_bin_edges(log_w[finite], bins=HIST_BINS)
    bins = np.clip(np.searchsorted(edges, log_w[finite], side="right") - 1, 0, HIST_BINS - 1)
    flat = np.bincount(codes[finite] * HIST_BINS + bins, minlength=len(uniques) * HIST_BINS)
    zeros = np.bincount(codes[~finite], minlength=len(uniques))
    return {
        "edges": [float(e) for e in edges],
        "counts": {
            group_label(g): [int(c) for c in flat[i * HIST_BINS : (i + 1) * HIST_BINS]]
            for i, g in enumerate(uniques)
        },
        "zero_weight": {group_label(g): int(zeros[i]) for i, g in enumerate(uniques)},
    }


def diagnostics(
    log_w: np.ndarray,
    selection: Selection,
    pool_groups: Sequence[Hashable],
    target_shares: Mapping[Hashable, float] | None = None,
) -> dict:
    """The JSON-serialisable diagnostics of one selection.

    Acceptance rate, expected vs actual accepted in the first pass, effective sample size of
    the pool weights, clipped mass, group shares of pool / accepted (/ target, normalised) with
    the total variation of accepted (and of the pool) to the target, and a log-w histogram per
    group on shared bin edges.
    """
    log_w = _check_log_w(log_w)
    if len(pool_groups) != log_w.size:
        raise UserError(f"{len(pool_groups)} group labels for {log_w.size} log-ratios")
    codes, uniques = encode_groups(pool_groups)
    ess = effective_sample_size(np.exp(log_w - log_w.max()))
    pool = _shares(codes, uniques)
    accepted = _shares(codes, uniques, selection.indices)
    shares = {"pool": pool, "accepted": accepted}
    out = {**selection.to_dict(), "ess": ess, "ess_fraction": ess / log_w.size}
    if target_shares is not None:
        target_sum = float(sum(target_shares.values()))
        shares["target"] = {g: float(v) / target_sum for g, v in target_shares.items()}
        out["tv_accepted_target"] = total_variation(accepted, target_shares) if accepted else 1.0
        out["tv_pool_target"] = total_variation(pool, target_shares)
    out["groups"] = {
        name: {group_label(g): float(v) for g, v in table.items()} for name, table in shares.items()
    }
    out["log_w_histogram"] = _log_w_histograms(log_w, codes, uniques)
    return out
