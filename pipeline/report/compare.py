"""The report's paired tests: the reference system against each other one on the target test
set, per seed and pooled over seeds, Holm-corrected per table, with the layouts compared.

Plain pandas and numpy over ``report.stats.Run``s; nothing here reads files. Every test pairs
utterances by id and resamples clusters (speakers; see ``report.stats.clusters``), so that a
test's interval and p-value hold the test speakers' variance; pooled tests resample seeds too.
``delta`` = WER(reference) - WER(other): negative where the reference is better; ``relative``
= WER(reference) / WER(other) - 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from pipeline import metrics
from pipeline.layout import PRETRAINED, SELECTORS
from pipeline.report.stats import BUDGETLESS, Run, clusters, layout, matched

Pair = tuple[Run, Run]  # (a reference run, the other system's run it is compared with)


def paired_tests(
    runs: list[Run], reference: str, rng, n_boot: int, skip: Callable[[str, str], None]
) -> list[dict]:
    """``reference`` against each other system at the recipe budget, per seed (the pretrained
    run pairs with every seed of ``reference``). Runs without a seed mate are reported through
    ``skip(what, reason)``. The rows are one family for Holm's correction (``p_holm``)."""
    main = [r for r in runs if not r.key.sweep and "target" in r.sets]
    ours = [r for r in main if r.key.system == reference]
    if not ours:
        skip("paired tests", f"no {reference} run was evaluated on the target set")
        return []
    rows = []
    for other in main:
        if other.key.system == reference:
            continue
        mates = _mates(ours, other)
        if not mates:
            skip(f"paired test against {other.name}", f"no {reference} run with its seed")
        rows += [_per_seed(mine, other, rng, n_boot) for mine in mates]
    return with_holm(rows)


def pooled_tests(runs: list[Run], reference: str, rng, n_boot: int) -> list[dict]:
    """``reference`` against each other system at the recipe budget, seed means compared over
    the seed pairs of ``paired_tests``: a hierarchical paired bootstrap that resamples seed
    pairs and speakers (the same speakers for both systems). One row per other system, one
    family for Holm's correction."""
    main = [r for r in runs if not r.key.sweep and "target" in r.sets]
    ours = [r for r in main if r.key.system == reference]
    rows = []
    for system in (s for s in (PRETRAINED, *SELECTORS) if s != reference):
        pairs = [(m, o) for o in main if o.key.system == system for m in _mates(ours, o)]
        if pairs:
            named = {"system": system, "seeds": [m.key.seed for m, _ in pairs]}
            named |= {"runs": [m.name for m, _ in pairs], "other_runs": [o.name for _, o in pairs]}
            rows.append(named | _compare(pairs, rng, n_boot))
    return with_holm(rows)


def sweep_tests(runs: list[Run], reference: str, rng, n_boot: int) -> list[dict]:
    """When any run is a sweep point: ``reference`` against each other system at each budget,
    per seed (runs of the same budget and seed pair up; the recipe's budget included). Rows
    as ``paired_tests``' plus ``budget``; one family for Holm's correction."""
    tuned = [
        r for r in runs if r.key.system not in (PRETRAINED, *BUDGETLESS) and "target" in r.sets
    ]
    if not any(r.key.sweep for r in tuned):
        return []
    rows = []
    for budget in sorted({r.key.budget for r in tuned}):
        at = [r for r in tuned if r.key.budget == budget]
        for mine in (r for r in at if r.key.system == reference):
            for other in at:
                if other.key.system != reference and other.key.seed == mine.key.seed:
                    rows.append({"budget": budget, **_per_seed(mine, other, rng, n_boot)})
    rows.sort(key=lambda r: (SELECTORS.index(r["system"]), r["budget"], r["seed"]))
    return with_holm(rows)


def _mates(ours: list[Run], other: Run) -> list[Run]:
    """The reference runs that pair with ``other``: its seed's, or all for the pretrained."""
    return [r for r in ours if other.key.seed is None or r.key.seed == other.key.seed]


def _per_seed(mine: Run, other: Run, rng, n_boot: int) -> dict:
    names = {"system": other.key.system, "seed": mine.key.seed}
    names |= {"run": mine.name, "other_run": other.name}
    return names | _compare([(mine, other)], rng, n_boot)


def _compare(pairs: list[Pair], rng, n_boot: int) -> dict:
    """Paired (hierarchical when several pairs) bootstrap over the utterances all runs hold."""
    merged, errors = matched([t for pair in pairs for t in (r.sets["target"] for r in pair)])
    codes, unit = clusters(merged)
    ref_words = merged["ref_words"].to_numpy(float)
    mine, other = errors[0::2], errors[1::2]
    test = metrics.seed_paired_bootstrap(other, mine, ref_words, rng, n_boot, clusters=codes)
    words = len(pairs) * ref_words.sum()
    ours, theirs = layout([m for m, _ in pairs]), layout([o for _, o in pairs])
    return {
        "utterances": len(merged),
        "wer": float(mine.sum() / words) if words else float("nan"),
        "other_wer": float(other.sum() / words) if words else float("nan"),
        **test,
        "cluster_unit": unit,
        "layout": ours,
        "other_layout": theirs,
        # runs read in different layouts differ in more than their training: not a fair test
        "comparable": ours is not None and ours == theirs and ", " not in ours,
    }


def with_holm(rows: list[dict]) -> list[dict]:
    """The rows of one table with ``p_holm`` after ``p_value``: Holm's correction over them."""
    adjusted = metrics.holm([r["p_value"] for r in rows])
    return [_insert(r, "p_value", "p_holm", float(p)) for r, p in zip(rows, adjusted, strict=True)]


def _insert(row: dict, after: str, key: str, value) -> dict:
    items = list(row.items())
    at = list(row).index(after) + 1
    return dict([*items[:at], (key, value), *items[at:]])


def family_size(rows: list[dict]) -> int:
    """How many tests of a table Holm's correction counted: those with a p-value."""
    return sum(not math.isnan(r["p_value"]) for r in rows)


def versus(pooled: list[dict], system: str = "random") -> dict | None:
    """The headline of results.json: the reference against ``system`` pooled over seeds,
    its relative WER difference with the interval, and the p-values; None without it."""
    row = next((r for r in pooled if r["system"] == system), None)
    keys = ("system", "seeds", "wer", "other_wer", "delta", "relative", "relative_low")
    keys += ("relative_high", "p_value", "p_holm", "comparable", "layout", "other_layout")
    return None if row is None else {k: row[k] for k in keys}


def layout_mismatch(results: dict) -> list[dict]:
    """The tables of ``results`` whose systems were read in different layouts, each as
    ``{"table", "layouts": {system: layout}}`` (in sweep tables: ``<system>-k<budget>``)."""
    ref, out = results["reference"], []
    for table in ("systems", "paired", "pooled", "sweep", "sweep_tests"):
        seen = {}
        for row in results.get(table) or []:
            tag = f"-k{row['budget']}" if table.startswith("sweep") else ""
            if "other_layout" in row:  # a test: the reference's runs against another system's
                seen[ref + tag] = row["layout"]
                seen[row["system"] + tag] = row["other_layout"]
            else:
                seen[row["system"] + tag] = row["layout"]
        if len(set(seen.values())) > 1:
            out.append({"table": table, "layouts": seen})
    return out
