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

BOOT_CHUNK_ELEMENTS = 4_000_000  # resampled indices held at once (32 MB of int64)


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


def _resampled_sums(rng: np.random.Generator, n_boot: int, *columns: np.ndarray):
    """Sums of each column over ``n_boot`` resamples of rows with replacement, same rows for all.

    Vectorised over resamples, in chunks so that memory stays near BOOT_CHUNK_ELEMENTS indices.
    """
    n = len(columns[0])
    sums = [np.empty(n_boot) for _ in columns]
    step = max(1, BOOT_CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_boot, step):
        stop = min(start + step, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        for total, column in zip(sums, columns, strict=True):
            total[start:stop] = column[idx].sum(axis=1)
    return sums


def bootstrap_ci(
    errors: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus error rate, resampling utterances.

    Resamples that happen to hold no reference words are left out. Returns (NaN, NaN) when there
    is nothing to resample or no reference words at all.
    """
    errors, ref_words = np.asarray(errors, float), np.asarray(ref_words, float)
    if len(errors) == 0 or ref_words.sum() == 0:
        return float("nan"), float("nan")
    err_sum, ref_sum = _resampled_sums(rng, n_boot, errors, ref_words)
    valid = ref_sum > 0
    if not valid.any():
        return float("nan"), float("nan")
    rates = err_sum[valid] / ref_sum[valid]
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(rates, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap(
    errors_a: np.ndarray,
    errors_b: np.ndarray,
    ref_words: np.ndarray,
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> dict:
    """Paired bootstrap of the WER difference between systems A and B on the same utterances.

    Each resample draws one set of utterances and scores both systems on it (Bisani & Ney, 2004),
    so that the shared difficulty of an utterance cancels. Returns ``delta`` = WER_b - WER_a,
    the percentile interval ``low``..``high`` at ``level``, and a two-sided ``p_value``:
    twice the smaller share of resamples with delta <= 0 or with delta >= 0, each share counted
    as (k + 1) / (n_boot + 1) so that a finite bootstrap never claims p = 0, capped at 1.
    Identical systems give delta 0 and p 1.
    """
    errors_a, errors_b = np.asarray(errors_a, float), np.asarray(errors_b, float)
    ref_words = np.asarray(ref_words, float)
    if not len(errors_a) == len(errors_b) == len(ref_words):
        raise ValueError("errors_a, errors_b and ref_words must have one entry per utterance")
    nan = float("nan")
    undefined = {"delta": nan, "low": nan, "high": nan, "p_value": 1.0}
    total = ref_words.sum()
    if total == 0:
        return undefined
    diff_sum, ref_sum = _resampled_sums(rng, n_boot, errors_b - errors_a, ref_words)
    deltas = diff_sum[ref_sum > 0] / ref_sum[ref_sum > 0]
    if len(deltas) == 0:
        return undefined
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    n_valid = len(deltas)
    share_le = (np.count_nonzero(deltas <= 0) + 1) / (n_valid + 1)
    share_ge = (np.count_nonzero(deltas >= 0) + 1) / (n_valid + 1)
    return {
        "delta": float((errors_b - errors_a).sum() / total),
        "low": float(low),
        "high": float(high),
        "p_value": float(min(1.0, 2.0 * min(share_le, share_ge))),
    }


def group_table(
    frame: pd.DataFrame,
    by: list[str],
    rng: np.random.Generator,
    n_boot: int = 1000,
    level: float = 0.95,
) -> pd.DataFrame:
    """WER (with a bootstrap interval) and CER per group of ``by`` metadata columns.

    ``frame`` holds ``utterance_errors`` columns plus the metadata. Groups with missing keys
    (``snr_db`` NaN for clean audio) are kept. One row per group, sorted by the keys, with
    ``utterances``, ``ref_words``, ``errors``, ``wer``, ``wer_low``, ``wer_high``, ``cer``.
    """
    rows = []
    for key, group in frame.groupby(by, dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        low, high = bootstrap_ci(
            group["errors"].to_numpy(), group["ref_words"].to_numpy(), rng, n_boot, level
        )
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
