"""The exact fixed-budget draw beside rejection passes, on what ``rsft score`` wrote.

For each seed, select runs twice into a temporary folder (select.sampler fixed_budget and
rejection, rsft and oracle only) and this prints, per sampler: the share of target-condition
rows in rsft's subset, the passes, the certain rows and their mass, and how far the design's
inclusion probabilities are from the exact ones (``design.inclusion_tv``).

    python scripts/compare_samplers.py RECIPE [--seeds 0 1 2] [--set k=v ...] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import select  # noqa: E402
from pipeline.config import load_recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    rows = []
    for seed in args.seeds:
        for sampler in ("fixed_budget", "rejection"):
            cfg = replace(recipe.select, sampler=sampler, selectors=("rsft", "oracle"))
            with tempfile.TemporaryDirectory() as tmp:
                select.run(replace(recipe, seed=seed, select=cfg), Path(tmp))
                diag = json.loads((Path(tmp) / "rsft" / "diagnostics.json").read_text())
            rows.append(
                {
                    "seed": seed,
                    "sampler": sampler,
                    "target_share": diag["target_group_share"],
                    "passes": diag["selection"]["passes"],
                    "certain": diag["selection"]["certain"],
                    "certain_mass": diag["selection"]["certain_mass"],
                    "inclusion_tv": diag["design"]["inclusion_tv"],
                    "auc": diag["estimators"]["classifier"]["auc"],
                }
            )
    print("seed sampler       target share passes certain certain mass inclusion TV")
    for r in rows:
        print(
            f"{r['seed']:>4} {r['sampler']:<13} {r['target_share']:>12.3f} {r['passes']:>6}"
            f" {r['certain']:>7} {r['certain_mass']:>12.3f} {r['inclusion_tv']:>12.3f}"
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
