"""Which encoder layer and regularisation the classifier should read: a check of the rule.

``select`` picks the layer and C with the lowest cross-fitted log loss of telling the target
sample from the pool, a measure that needs no metadata. This script sets that rule beside
what the metadata says: for each (layer, C) it reports the log loss, the AUC and the share of
the pool's ratio mass that falls in the target sample's own groups (accent, noise, SNR), i.e.
how much of what rsft draws is the target condition.

The same is done for conditions the recipe does not name: each is a noisy (accent, noise)
group of the pool; half of its rows (at most ``--target-rows``) play the target sample and
leave the pool, and the mass share is read on the rest of the group. A rule that only works
on the recipe's target would show here.

    python scripts/selector_layers.py RECIPE [--set k=v ...] [--conditions 3] [--out FILE]

Reads what ``rsft score`` wrote (every layer's embeddings); writes nothing but ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import load_recipe  # noqa: E402
from pipeline.fsio import stable_seed  # noqa: E402
from pipeline.select import ratios  # noqa: E402
from pipeline.select.stage import group_keys, load_scored  # noqa: E402

OLD_DEFAULT = {"layer": -1, "C": 1.0}  # what select read before the choice: the final layer


def mass_share(log_w: np.ndarray, inside: np.ndarray) -> float:
    """Share of the pool's ratio mass sum(w) on the rows ``inside`` the condition."""
    w = np.exp(log_w - np.max(log_w[np.isfinite(log_w)]))
    return float(w[inside].sum() / w.sum())


def sweep(pool_emb, target_emb, inside, seed: int, cfg) -> list[dict]:
    """Every (layer, C) candidate: cross-fitted log loss, AUC and the condition's mass share
    (each candidate on the same folds, drawn from ``seed``; folds and PCA as ``select``)."""
    rows = []
    for layer in range(pool_emb.shape[1] if pool_emb.ndim == 3 else 1):
        for C in ratios.C_GRID:
            log_w, info = ratios.classifier_log_ratio(
                pool_emb,
                target_emb,
                np.random.default_rng(seed),
                folds=cfg.folds,
                C=C,
                pca_dim=cfg.pca_dim,
                layer=layer,
            )
            rows.append(
                {
                    "layer": layer,
                    "C": C,
                    "log_loss": info["log_loss"],
                    "auc": info["auc"],
                    "mass_share": mass_share(log_w, inside),
                }
            )
    return rows


def verdict(name: str, rows: list[dict], pool_share: float) -> dict:
    """The rule's choice beside the old default and the best mass share any candidate had."""
    top = max(r["layer"] for r in rows)
    chosen = min(rows, key=lambda r: r["log_loss"])
    old = next(r for r in rows if r["layer"] == top and r["C"] == OLD_DEFAULT["C"])
    best = max(rows, key=lambda r: r["mass_share"])
    return {
        "condition": name,
        "pool_share": pool_share,
        "chosen": chosen,
        "old_default": old,
        "best_mass_share": best,
        "candidates": rows,
    }


def held_out_conditions(pool, columns, count: int, rng: np.random.Generator) -> list[tuple]:
    """Noisy (accent, noise) groups of the pool with rows enough for a target sample."""
    keys = group_keys(pool, columns[:2])
    noisy = pool[columns[1]].notna() & (pool[columns[1]].astype(str) != "clean")
    sizes: dict[tuple, int] = {}
    for key, is_noisy in zip(keys, noisy, strict=True):
        if is_noisy:
            sizes[key] = sizes.get(key, 0) + 1
    usable = sorted(k for k, n in sizes.items() if n >= 2 * ratios.MIN_TARGET_ROWS)
    picks = rng.choice(len(usable), size=min(count, len(usable)), replace=False)
    return [usable[i] for i in sorted(picks)]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--conditions", type=int, default=3, help="held-out pool conditions")
    parser.add_argument("--target-rows", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.select
    pool, pool_emb, _ = load_scored(recipe, cfg.pool)
    target, target_emb, _ = load_scored(recipe, cfg.target)
    columns = cfg.group_columns
    pool_groups = group_keys(pool, columns)
    target_groups = set(group_keys(target, columns))
    inside = np.array([g in target_groups for g in pool_groups])
    # the recipe's target on select's own folds, so that the choice is the one select made
    seed = stable_seed(recipe.seed, "select", "ratio")
    results = [
        verdict(
            "the recipe's target",
            sweep(pool_emb, target_emb, inside, seed, cfg),
            float(inside.mean()),
        )
    ]

    rng = np.random.default_rng(args.seed)
    keys = group_keys(pool, columns[:2])
    for condition in held_out_conditions(pool, columns, args.conditions, rng):
        members = np.flatnonzero([k == condition for k in keys])
        take = rng.choice(members, size=min(args.target_rows, len(members) // 2), replace=False)
        stay = np.ones(len(pool), dtype=bool)
        stay[take] = False
        inside = np.isin(np.arange(len(pool)), members)[stay]
        rows = sweep(pool_emb[stay], pool_emb[take], inside, args.seed, cfg)
        results.append(verdict(" / ".join(map(str, condition)), rows, float(inside.mean())))

    print(
        "| condition | pool share | rule's choice (layer, C) | its mass share | "
        "final layer, C 1 | best of all candidates |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for r in results:
        c, o, b = r["chosen"], r["old_default"], r["best_mass_share"]
        print(
            f"| {r['condition']} | {r['pool_share']:.3f} | {c['layer']}, {c['C']:g} "
            f"(log loss {c['log_loss']:.4f}) | {c['mass_share']:.3f} | {o['mass_share']:.3f} | "
            f"{b['mass_share']:.3f} ({b['layer']}, {b['C']:g}) |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return {"results": results}


if __name__ == "__main__":
    main()
