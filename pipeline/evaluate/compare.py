"""Two evaluated runs side by side (``rsft compare``): paired bootstrap of their WER (and
token NLL) per set, and the utterances whose errors changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.errors import UserError
from pipeline.fsio import read_parquet, write_json


def compare(run_a: Path, run_b: Path, seed: int = 0, n_boot: int = 1000) -> pd.DataFrame:
    """Paired bootstrap of WER(B) - WER(A) on every set both runs scored."""
    if n_boot < 1:
        raise UserError(f"bootstrap resamples: must be at least 1, got {n_boot}")
    sets = sorted(
        p.parent.name
        for p in run_a.glob("*/utterances.parquet")
        if (run_b / p.parent.name / "utterances.parquet").exists()
    )
    if not sets:
        raise UserError(f"no test set was scored by both {run_a} and {run_b}")
    rng = np.random.default_rng(seed)
    rows = []
    for name in sets:
        paths = (run_a / name / "utterances.parquet", run_b / name / "utterances.parquet")
        n, wer_a, wer_b, test = _paired_rates(*paths, "errors", "ref_words", rng, n_boot)
        rows.append({"set": name, "utterances": n, "wer_a": wer_a, "wer_b": wer_b, **test})
    table = pd.DataFrame(rows)
    nll = _compare_nll(run_a, run_b, rng, n_boot)
    write_json(
        run_b / f"compare-{run_a.name}.json",
        {"a": str(run_a), "b": str(run_b), "sets": rows, "token_nll": nll},
    )
    shown = table.copy()
    for col in ("wer_a", "wer_b"):
        shown[col] = shown[col].map(lambda v: f"{100 * v:.1f}")
    for col in ("delta", "low", "high"):
        shown[col] = shown[col].map(lambda v: f"{100 * v:+.1f}")
    shown["p_value"] = shown["p_value"].map(lambda v: f"{v:.3f}")
    print(f"WER (%): A = {run_a}, B = {run_b}; delta = B - A with 95% interval")
    print(shown.to_string(index=False))
    if nll:
        print("NLL per reference token (nats, evaluate.token_nll); delta = B - A, relative to A")
        for r in nll:
            print(
                f"  {r['set']}: {r['nll_a']:.4f} -> {r['nll_b']:.4f}, {r['delta']:+.4f} "
                f"[{r['low']:+.4f}, {r['high']:+.4f}] ({100 * r['relative']:+.1f}%), "
                f"p {r['p_value']:.3f}, {r['utterances']} utterances"
            )
    return table


def _compare_nll(run_a: Path, run_b: Path, rng, n_boot: int) -> list[dict]:
    """Paired bootstrap of the NLL per token on the sets both runs scored by teacher forcing."""
    rows = []
    for path in sorted(run_a.glob("*/token_nll.parquet")):
        other = run_b / path.parent.name / "token_nll.parquet"
        if not other.exists():
            continue
        n, nll_a, nll_b, test = _paired_rates(path, other, "nll", "tokens", rng, n_boot)
        rows.append(
            {"set": path.parent.name, "utterances": n, "nll_a": nll_a, "nll_b": nll_b}
            | {"relative": (nll_b - nll_a) / nll_a, **test}
        )
    return rows


def _paired_rates(path_a: Path, path_b: Path, count: str, total: str, rng, n_boot: int):
    """(utterances, rate A, rate B, paired bootstrap of B - A) for a per-utterance ``count``
    over ``total`` (errors over reference words, NLL over tokens), on the ids both hold."""
    a = read_parquet(path_a)
    a = a[[c for c in ("id", count, total, "speaker") if c in a.columns]]
    b = read_parquet(path_b, columns=["id", count])
    both = a.merge(b, on="id", suffixes=("_a", "_b"))
    if both.empty:
        raise UserError(
            f"{path_a} and {path_b}: no utterance id in common (runs of different test sets?)"
        )
    x_a, x_b, n = (both[c].to_numpy() for c in (f"{count}_a", f"{count}_b", total))
    clusters, _ = metrics.error_clusters(both)  # resample speakers, as the report does
    test = metrics.paired_bootstrap(x_a, x_b, n, rng, n_boot, clusters=clusters)
    return len(both), x_a.sum() / n.sum(), x_b.sum() / n.sum(), test


def changes(run_a: Path, run_b: Path, name: str, top: int = 20) -> pd.DataFrame:
    """The utterances of set ``name`` whose error count differs between two runs, most
    changed first (B worse before B better): where a model gained or lost, word by word."""
    columns = ["id", "errors", "ref_words", "reference_norm", "hypothesis_norm"]
    paths = [run / name / "utterances.parquet" for run in (run_a, run_b)]
    for path in paths:
        if not path.exists():
            raise UserError(f"set {name!r}: no {path} (evaluate the set with both runs first)")
    a, b = (read_parquet(path, columns=columns) for path in paths)
    both = a.merge(b.drop(columns=["ref_words", "reference_norm"]), on="id", suffixes=("_a", "_b"))
    both["delta"] = both["errors_b"] - both["errors_a"]
    changed = both[both["delta"] != 0].sort_values(["delta", "id"], ascending=[False, True])
    print(
        f"{name}: {len(both)} utterances, {int(both['ref_words'].sum())} words; errors "
        f"{int(both['errors_a'].sum())} (A) -> {int(both['errors_b'].sum())} (B); "
        f"{int((both['delta'] > 0).sum())} worse in B, {int((both['delta'] < 0).sum())} better"
    )
    shown = pd.concat([changed.head(top), changed[changed["delta"] < 0].tail(top)])
    for row in shown.drop_duplicates("id").itertuples():
        print(f"{row.delta:+d} {row.id}\n   ref {row.reference_norm}")
        print(f"   A   {row.hypothesis_norm_a}\n   B   {row.hypothesis_norm_b}")
    return changed.reset_index(drop=True)
