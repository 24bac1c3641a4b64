"""Word and character error rates with bootstrap confidence intervals: plain numpy and jiwer.

Inputs are already normalised text (``pipeline.text.normalize``). Scores are corpus-level, as
NIST sclite computes them: the sum of errors over the sum of reference words, not a mean of
per-utterance rates. An utterance whose normalised reference is empty counts 0 reference words
and 0 reference characters, while every hypothesis word on it counts as an insertion.
Characters include the spaces between words, as jiwer's ``cer`` counts them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import jiwer
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

BOOT_CHUNK_ELEMENTS = 4_000_000  # clusters drawn at once (32 MB of int64)


def _edit_counts(output: jiwer.WordOutput | jiwer.CharacterOutput) -> np.ndarray:
    """Per-utterance (substitutions, deletions, insertions, reference length) from alignments."""
    counts = np.zeros((len(output.references), 4), dtype=np.int64)
    column = {"substitute": 0, "delete": 1}
    for row, (ref, chunks) in enumerate(zip(output.references, output.alignments, strict=True)):
        counts[row, 3] = len(ref)
        for chunk in chunks:
            if chunk.type in column:
                counts[row, column[chunk.type]] += chunk.ref_end_idx - chunk.ref_start_idx
            elif chunk.type == "insert":
                counts[row, 2] += chunk.hyp_end_idx - chunk.hyp_start_idx
    return counts


def utterance_errors(
    refs: Sequence[str], hyps: Sequence[str], ids: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per-utterance error counts of normalised hypotheses against normalised references.

    Columns: ``substitutions``, ``deletions``, ``insertions``, ``errors`` (their sum),
    ``ref_words``, ``char_errors``, ``ref_chars``; plus ``id`` first when ``ids`` is given.
    Rows are in input order, so metadata columns can be attached by position.
    """
    if len(refs) != len(hyps) or (ids is not None and len(ids) != len(refs)):
        counts = f"{len(refs)} references, {len(hyps)} hypotheses"
        if ids is not None:
            counts += f", {len(ids)} ids"
        raise ValueError(f"{counts}: lengths differ")
    # Lists, because jiwer reads a lone string as one utterance and rejects tuples and arrays.
    refs, hyps = list(refs), list(hyps)
    words = _edit_counts(jiwer.process_words(refs, hyps)) if refs else np.zeros((0, 4), int)
    chars = _edit_counts(jiwer.process_characters(refs, hyps)) if refs else np.zeros((0, 4), int)
    frame = pd.DataFrame(
        {
            "substitutions": words[:, 0],
            "deletions": words[:, 1],
            "insertions": words[:, 2],
            "errors": words[:, :3].sum(axis=1),
            "ref_words": words[:, 3],
            "char_errors": chars[:, :3].sum(axis=1),
            "ref_chars": chars[:, 3],
        }
    )
    if ids is not None:
        frame.insert(0, "id", list(ids))
    return frame


def _rate(errors: float, ref_count: float) -> float:
    # No reference words: the rate is undefined, not zero (insertions may still be present).
    return float(errors) / float(ref_count) if ref_count > 0 else float("nan")


def wer(frame: pd.DataFrame) -> float:
    """Corpus word error rate: total word errors / total reference words (NaN if none)."""
    return _rate(frame["errors"].sum(), frame["ref_words"].sum())


def cer(frame: pd.DataFrame) -> float:
    """Corpus character error rate: total char errors / total reference chars (NaN if none)."""
    return _rate(frame["char_errors"].sum(), frame["ref_chars"].sum())


def cluster_codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """Bootstrap cluster of each row, as codes 0..n_clusters-1.

    Rows that share a value in any of ``columns`` (a speaker, a packed window) are one
    cluster, joined transitively; a row with no value in any of them (missing or empty) is a
    cluster of its own, as an utterance without a speaker must be. Absent columns are ignored.
    """
    codes = np.arange(len(frame))
    keys = []
    for column in (c for c in columns if c in frame.columns):
        values = frame[column].astype(object)
        present = (values.notna() & (values.astype(str).str.strip() != "")).to_numpy()
        keys.append((present, values.to_numpy()[present]))
    # Label propagation: each row takes the smallest code of the rows it shares a value with,
    # until nothing changes (a few rounds: as many as the longest chain of shared values).
    while keys:
        joined = codes.copy()
        for present, values in keys:
            grouped = pd.Series(joined[present]).groupby(values, sort=False)
            joined[present] = grouped.transform("min").to_numpy()
        if np.array_equal(joined, codes):
            break
        codes = joined
    return pd.factorize(codes)[0]


def _codes(clusters: ArrayLike | None, n: int) -> np.ndarray:
    """Cluster codes 0..C-1 of ``n`` rows: each row its own cluster when ``clusters`` is None,
    and each row whose label is missing."""
    if clusters is None:
        return np.arange(n)
    codes = pd.factorize(np.asarray(clusters, dtype=object))[0]
    if len(codes) != n:
        raise ValueError(f"{len(codes)} cluster labels for {n} utterances")
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(missing.sum())
    return codes


def _draw_counts(rng: np.random.Generator, resamples: int, n: int) -> np.ndarray:
    """counts[b, i]: how often resample b drew item i, each drawing n of n with replacement."""
    # Offsetting each resample's draws by b * n lets one bincount count every resample.
    draws = rng.integers(0, n, size=(resamples, n)) + n * np.arange(resamples)[:, None]
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)


def _resampled_sums(
    rng: np.random.Generator, n_boot: int, ref: np.ndarray, errors: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Bootstrap sums over clusters and seeds: reference words (n_boot,) and, per matrix of
    ``errors`` (seeds x clusters), the seed-mean error sum (n_boot,).

    Each resample draws clusters with replacement, the same draw for every seed and every
    matrix (the seeds were read on the same test speakers, and paired systems must share it),
    and then seeds with replacement (rows of the matrices, the same rows for every matrix).
    Vectorised over resamples, in chunks of about BOOT_CHUNK_ELEMENTS drawn clusters.
    """
    n_clusters, n_seeds = len(ref), errors[0].shape[0]
    ref_sum, err_sums = np.empty(n_boot), [np.empty(n_boot) for _ in errors]
    step = max(1, BOOT_CHUNK_ELEMENTS // n_clusters)
    for start in range(0, n_boot, step):
        rows = slice(start, min(start + step, n_boot))
        counts = _draw_counts(rng, rows.stop - start, n_clusters)
        seeds = _draw_counts(rng, rows.stop - start, n_seeds) / n_seeds if n_seeds > 1 else 1.0
        ref_sum[rows] = counts @ ref
        for total, matrix in zip(err_sums, errors, strict=True):
            total[rows] = ((counts @ matrix.T) * seeds).sum(axis=1)
    return ref_sum, err_sums


def _per_cluster(codes: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sums of ``values`` (utterances, or seeds x utterances) per cluster."""
    n = codes.max() + 1
    if values.ndim == 1:
        return np.bincount(codes, weights=values, minlength=n)
    return np.stack([np.bincount(codes, weights=row, minlength=n) for row in values])


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


CLUSTER_COLUMNS = ("speaker", "window")  # what errors cluster by


def error_clusters(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Bootstrap clusters of a per-utterance table and their unit, for intervals and tests.

    Errors cluster by speaker, and in a packed reading by window (``window`` columns, one per
    run): utterances that share either are one cluster. A table without speakers, or with a
    single one (one voice cannot be resampled), falls back to utterances, and says so.
    """
    columns = [c for c in frame.columns if c.split("_")[0] in CLUSTER_COLUMNS]
    codes = cluster_codes(frame, columns)
    speakers = "speaker" in frame.columns and frame["speaker"].notna().any()
    if not speakers or codes.max(initial=-1) < 1:
        return np.arange(len(frame)), "utterance"
    return codes, "speaker-window group" if len(columns) > 1 else "speaker"


def bootstrap_ci(
    errors: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus error rate, resampling clusters.

    ``clusters`` labels each utterance (its speaker: errors cluster by speaker); None makes
    each utterance its own cluster. Each resample scores sum of errors / sum of reference
    words over the drawn clusters; resamples without reference words are left out. Returns
    (NaN, NaN) with fewer than two clusters or no reference words: nothing to resample.
    """
    errors = np.asarray(errors, float)
    return seed_bootstrap_ci(errors[None], ref_words, rng, n_boot, level, clusters)


def seed_bootstrap_ci(
    errors: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> tuple[float, float]:
    """Hierarchical bootstrap interval of the seed-mean error rate (``bootstrap_rates``).

    ``errors`` is (seeds, utterances): the runs of one system over seeds, on the same
    utterances. The interval holds seed-to-seed variance as well as the test speakers'.
    One seed: the cluster bootstrap of ``bootstrap_ci``.
    """
    rates = bootstrap_rates(errors, ref_words, rng, n_boot, clusters)
    return _interval(rates, level) if len(rates) else (float("nan"), float("nan"))


def bootstrap_rates(
    errors: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    clusters: ArrayLike | None = None,
) -> np.ndarray:
    """Resampled seed-mean error rates: each resample draws seeds (rows of ``errors``, which
    is (seeds, utterances) or one seed's (utterances,)) with replacement and clusters with
    replacement, one cluster draw shared by the seeds since they were read on the same test
    speakers. Resamples without reference words are left out; empty with fewer than two
    clusters or no reference words.
    """
    errors, ref_words = np.atleast_2d(np.asarray(errors, float)), np.asarray(ref_words, float)
    codes = _codes(clusters, len(ref_words))
    if codes.max(initial=-1) < 1 or ref_words.sum() == 0:
        return np.empty(0)
    ref = _per_cluster(codes, ref_words)
    ref_sum, (err_sum,) = _resampled_sums(rng, n_boot, ref, [_per_cluster(codes, errors)])
    valid = ref_sum > 0
    return err_sum[valid] / ref_sum[valid]


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> dict:
    """Paired bootstrap of the WER difference between systems A and B on the same utterances.

    Each resample draws one set of clusters (``clusters`` labels each utterance, e.g. by
    speaker; None: utterances) and scores both systems on it (Bisani & Ney, 2004), so that
    the shared difficulty of an utterance cancels. Returns ``delta`` = WER_b - WER_a, the
    percentile interval ``low``..``high`` at ``level`` and the two-sided ``p_value`` of
    ``seed_paired_bootstrap``. Identical systems give delta 0 and p 1.
    """
    a, b = np.asarray(errors_a, float), np.asarray(errors_b, float)
    test = seed_paired_bootstrap(a[None], b[None], ref_words, rng, n_boot, level, clusters)
    return {k: test[k] for k in ("delta", "low", "high", "p_value")}


def seed_paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> dict:
    """Paired hierarchical bootstrap of seed-mean WER_b - WER_a.

    ``errors_a`` and ``errors_b`` are (seeds, utterances); row s of A pairs with row s of B.
    Each resample draws clusters (one draw for both systems and every seed) and seed pairs
    with replacement. Returns ``delta`` with its percentile interval ``low``..``high``,
    ``relative`` = WER_b / WER_a - 1 with ``relative_low``..``relative_high`` (NaN where WER_a
    can be 0), ``p_value``, ``resamples`` (those with reference words) and ``clusters``.
    The p-value tests equal WERs, two-sided: (1 + k) / (1 + resamples), k the resamples whose
    delta lies as far from the estimate as the estimate lies from 0. Its floor is
    1 / (1 + resamples): a finite bootstrap never claims p = 0.
    """
    a, b = np.atleast_2d(np.asarray(errors_a, float)), np.atleast_2d(np.asarray(errors_b, float))
    ref_words = np.asarray(ref_words, float)
    if not a.shape == b.shape or a.shape[1] != len(ref_words):
        raise ValueError("errors_a and errors_b must be (seeds, utterances) over ref_words")
    codes, total = _codes(clusters, len(ref_words)), ref_words.sum()
    wer_a, wer_b = _rate(a.mean(axis=0).sum(), total), _rate(b.mean(axis=0).sum(), total)
    nan = float("nan")
    result = {"delta": wer_b - wer_a, "low": nan, "high": nan}
    result |= {"relative": _rate(wer_b, wer_a) - 1, "relative_low": nan, "relative_high": nan}
    result |= {"p_value": nan, "resamples": 0, "clusters": int(codes.max(initial=-1) + 1)}
    if result["clusters"] < 2 or total == 0:
        return result
    ref = _per_cluster(codes, ref_words)
    matrices = [_per_cluster(codes, a), _per_cluster(codes, b)]
    ref_sum, (sum_a, sum_b) = _resampled_sums(rng, n_boot, ref, matrices)
    valid = ref_sum > 0
    if not valid.any():
        return result
    sum_a, sum_b, ref_sum = sum_a[valid], sum_b[valid], ref_sum[valid]
    deltas = (sum_b - sum_a) / ref_sum
    result["low"], result["high"] = _interval(deltas, level)
    if (sum_a > 0).all():
        result["relative_low"], result["relative_high"] = _interval(sum_b / sum_a - 1, level)
    # Shifted to the null (Efron & Tibshirani, ch. 16): how often the bootstrap strays as far.
    # The tolerance counts ties (a resample at exactly twice the estimate) despite rounding.
    far = np.count_nonzero(np.abs(deltas - result["delta"]) >= abs(result["delta"]) - 1e-12)
    result["p_value"] = float((1 + far) / (1 + len(deltas)))
    result["resamples"] = len(deltas)
    return result


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down correction of one family of p-values, in input order.

    The k-th smallest of m p-values is multiplied by (m - k + 1), made non-decreasing along
    the sorted order and capped at 1. NaN entries (tests that could not run) are not part of
    the family and stay NaN.
    """
    p = np.asarray(p_values, float)
    adjusted = np.full(p.shape, np.nan)
    order = np.flatnonzero(~np.isnan(p))
    order = order[np.argsort(p[order], kind="stable")]
    scaled = (len(order) - np.arange(len(order))) * p[order]
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled)) if len(order) else scaled
    return adjusted


def group_table(
    frame: pd.DataFrame,
    by: list[str],
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
    clusters: ArrayLike | None = None,
) -> pd.DataFrame:
    """WER (with a bootstrap interval) and CER per group of ``by`` metadata columns.

    ``frame`` holds ``utterance_errors`` columns plus the metadata. Groups with missing keys
    (``snr_db`` NaN for clean audio) are kept. One row per group, sorted by the keys, with
    ``utterances``, ``ref_words``, ``errors``, ``wer``, ``wer_low``, ``wer_high``, ``cer``.
    ``clusters`` labels the rows for the bootstrap (as ``bootstrap_ci``'s; None: utterances).
    """
    rows = []
    labels = np.arange(len(frame)) if clusters is None else _codes(clusters, len(frame))
    for key, group in frame.assign(_cluster=labels).groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        errors, ref_words = group["errors"].to_numpy(), group["ref_words"].to_numpy()
        low, high = bootstrap_ci(errors, ref_words, rng, n_boot, level, group["_cluster"])
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "utterances": len(group),
                "ref_words": int(group["ref_words"].sum()),
                "errors": int(group["errors"].sum()),
                "wer": wer(group),
                "wer_low": low,
                "wer_high": high,
                "cer": cer(group),
            }
        )
    return pd.DataFrame(rows)


_SENTENCE_HEADER = re.compile(r"^=== SENTENCE (\d+) ===$", flags=re.MULTILINE)


def alignment_text(
    ids: Sequence[str], refs: Sequence[str], hyps: Sequence[str], skip_correct: bool = True
) -> str:
    """Aligned reference and hypothesis of each utterance with errors, headed by its id.

    jiwer's layout: REF and HYP lines with ``*`` for missing words and S/D/I markers below.
    """
    ids = list(ids)
    if not ids:
        return ""
    text = jiwer.visualize_alignment(
        jiwer.process_words(list(refs), list(hyps)),
        show_measures=False,
        skip_correct=skip_correct,
    )
    # jiwer numbers utterances from 1 in input order; name them by id instead.
    return _SENTENCE_HEADER.sub(lambda m: f"=== {ids[int(m.group(1)) - 1]} ===", text)


def split_by_alignment(refs: Sequence[str], hypothesis: str) -> list[str]:
    """Cut one hypothesis of several utterances spoken in a row into one piece per utterance.

    The hypothesis is aligned to the references joined (minimum edit distance, jiwer); each
    hypothesis word goes to the utterance of the reference word it is aligned to, and an
    inserted word to the utterance of the reference word before it (the first utterance's at
    the start). The pieces' errors then add up to those of the joined alignment, as in
    long-form evaluation. Inputs are normalised text; an empty reference gets words only
    through insertions.
    """
    owner = [k for k, ref in enumerate(refs) for _ in ref.split()]
    words = hypothesis.split()
    pieces: list[list[str]] = [[] for _ in refs]
    if not owner or not words:
        if words and pieces:
            pieces[0] = words
        return [" ".join(p) for p in pieces]
    for chunk in jiwer.process_words(" ".join(refs), hypothesis).alignments[0]:
        for offset, h in enumerate(range(chunk.hyp_start_idx, chunk.hyp_end_idx)):
            if chunk.type == "insert":
                at = owner[chunk.ref_start_idx - 1] if chunk.ref_start_idx > 0 else 0
            else:
                at = owner[chunk.ref_start_idx + offset]
            pieces[at].append(words[h])
    return [" ".join(p) for p in pieces]
