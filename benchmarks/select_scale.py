"""Time and memory of the select core on synthetic pools of 10^4, 10^5 and 10^6 utterances.

Each pool is a table of groups (8 accents x 4 SNR buckets, skewed shares) and a continuous
log-ratio standing in for the classifier's (Gaussian, sd 1), combined with the groups ratio
of a balanced target. The classifier itself is timed only with ``--classifier`` (16-dim
Gaussian embeddings, a target sample of 1% of the pool). Budget: 10% of the pool.

The sampler is also set beside the pass-by-pass loop the design describes (numpy within each
pass), on that pool and on a heavy-tailed one (log w ~ N(0, 2^2)) that needs hundreds of
passes at M = max w. Each size runs in its own subprocess so that its peak resident memory
(ru_maxrss, imports included) is its own; tracemalloc measures each step's allocations alone.

    python benchmarks/select_scale.py [--sizes 10000 100000 1000000] [--classifier]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.select import ratios, sampling  # noqa: E402

ACCENTS = ["us", "gb", "scotland", "rp", "lancaster", "midlands", "caribbean", "nyc"]
SNR_DB = [0, 5, 10, 20]
BUDGET_FRACTION = 0.1


def synthetic_pool(n: int, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """(accent, snr_db) per row with Zipf-like shares, and a stand-in classifier log-ratio."""
    n_groups = len(ACCENTS) * len(SNR_DB)
    shares = 1.0 / np.arange(1, n_groups + 1)
    codes = rng.choice(n_groups, size=n, p=shares / shares.sum())
    table = [(a, s) for a in ACCENTS for s in SNR_DB]
    return [table[c] for c in codes], rng.normal(size=n)


def per_pass_loop(log_w: np.ndarray, budget: int, rng: np.random.Generator) -> int:
    """The pass-by-pass loop, vectorised within each pass: the standard way, for comparison."""
    accept_p = np.exp(log_w - log_w.max())
    remaining, accepted = np.arange(len(log_w)), 0
    while accepted < budget and (accept_p[remaining] > 0).any():
        order = rng.permutation(remaining)
        hit = rng.random(len(order)) < accept_p[order]
        accepted += min(int(hit.sum()), budget - accepted)
        remaining = order[~hit]
    return accepted


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def timed(fn, *args, **kwargs):
    """(result, seconds, peak traced MiB): timed once untraced, then traced for memory."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fn(*args, **kwargs)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return result, seconds, peak


def child(n: int, with_classifier: bool) -> dict:
    """One pool size: build, score by groups, sample, diagnose; report times and memory."""
    rss_imports_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    groups, log_w_model = synthetic_pool(n, rng)
    budget = int(BUDGET_FRACTION * n)
    out = {"n": n, "budget": budget, "rss_imports_mib": rss_imports_mib}

    target = ratios.balanced_target(groups)
    (log_w_groups, _), out["groups_s"], out["groups_mib"] = timed(
        ratios.groups_log_ratio, groups, target
    )
    log_w = ratios.combine(log_w_groups, log_w_model)
    seed = np.random.SeedSequence(1)
    sel, out["rejection_s"], out["rejection_mib"] = timed(
        lambda: sampling.rejection_sample(log_w, budget, np.random.default_rng(seed))
    )
    out["passes"], out["proposals"] = sel.passes, sel.proposals
    capped, out["rejection_cap95_s"], _ = timed(
        lambda: sampling.rejection_sample(log_w, budget, np.random.default_rng(seed), 0.95)
    )
    out["passes_cap95"] = capped.passes
    report, out["diagnostics_s"], out["diagnostics_mib"] = timed(
        sampling.diagnostics, log_w, sel, groups, target
    )
    out["tv_accepted_target"] = report["tv_accepted_target"]
    out["per_pass_s"] = seconds(per_pass_loop, log_w, budget, np.random.default_rng(seed))

    heavy = rng.normal(scale=2.0, size=n)
    heavy_sel, out["heavy_s"], _ = timed(
        lambda: sampling.rejection_sample(heavy, budget, np.random.default_rng(seed))
    )
    out["heavy_passes"] = heavy_sel.passes
    out["heavy_per_pass_s"] = seconds(per_pass_loop, heavy, budget, np.random.default_rng(seed))

    if with_classifier:
        n_target = max(200, n // 100)
        pool_x = rng.normal(size=(n, 16)).astype(np.float32)
        target_x = (rng.normal(size=(n_target, 16)) + 0.3).astype(np.float32)
        start = time.perf_counter()
        _, info = ratios.classifier_log_ratio(pool_x, target_x, np.random.default_rng(2))
        out["classifier_s"], out["classifier_auc"] = time.perf_counter() - start, info["auc"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def print_tables(rows: list[dict], with_classifier: bool) -> None:
    """The select core per size with its growth, then the sampler beside the per-pass loop."""
    print(
        f"{'pool':>9} {'groups s':>9} {'reject s':>9} {'cap95 s':>8} {'diag s':>7} "
        f"{'total s':>8} {'x time':>7} {'traced MiB':>10} {'peak RSS MiB':>12} {'TV':>6}"
        + (f" {'classifier s':>12}" if with_classifier else "")
    )
    previous = None
    for row in rows:
        total = row["groups_s"] + row["rejection_s"] + row["diagnostics_s"]
        growth = f"{total / previous:7.1f}" if previous else f"{'':>7}"
        traced = max(row["groups_mib"], row["rejection_mib"], row["diagnostics_mib"])
        print(
            f"{row['n']:>9} {row['groups_s']:9.3f} {row['rejection_s']:9.3f} "
            f"{row['rejection_cap95_s']:8.3f} {row['diagnostics_s']:7.3f} {total:8.3f} "
            f"{growth} {traced:10.1f} {row['peak_rss_mib']:12.0f} "
            f"{row['tv_accepted_target']:6.3f}"
            + (f" {row['classifier_s']:12.2f}" if with_classifier else "")
        )
        previous = total
    print(f"\n{'pool':>9} {'case':>7} {'passes':>7} {'sampler s':>10} {'per-pass loop s':>16}")
    for row in rows:
        for case, key in (("groups", ""), ("heavy", "heavy_")):
            print(
                f"{row['n']:>9} {case:>7} {row[key + 'passes']:>7} "
                f"{row[key + 's' if key else 'rejection_s']:10.3f} "
                f"{row[key + 'per_pass_s']:16.3f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--classifier", action="store_true", help="also time the classifier")
    parser.add_argument("--json", action="store_true", help="print the raw rows as JSON too")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.classifier)))
        return
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n)]
        command += ["--classifier"] if args.classifier else []
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout))
    print_tables(rows, args.classifier)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
