"""The numbers of the report: WER per test-set role over seeds, the bootstrap
clusters, and the layout each system was read in (paired tests: ``report.compare``).

Plain pandas and numpy over per-utterance error tables (``evaluate``'s ``utterances.parquet``);
nothing here reads files. WERs are fractions of reference words, as in ``wer.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline import metrics
from pipeline.layout import PRETRAINED, SELECTORS, RunName

BUDGETLESS = ("full",)  # trains on the whole pool: no point on the budget sweep
# test set roles, named in ReportConfig: real_target is real speech in the target condition
ROLES = ("target", "clean", "noisy", "real", "real_target")


@dataclass
class Run:
    """One evaluate run: its name, what it stands for, and its errors per test-set role."""

    name: str
    key: RunName
    sets: dict[str, pd.DataFrame] = field(default_factory=dict)  # role -> utterance errors
    layouts: dict[str, str | None] = field(default_factory=dict)  # role -> layout it was read in


COLUMNS = ["id", "errors", "ref_words", "speaker", "window", "accent", "noise", "snr_db"]


def snr_label(value) -> str:
    return "clean" if pd.isna(value) else f"{value:g}"


def snr_order(labels: list[str]) -> list[str]:
    """SNR labels from the highest down (0 dB, the hardest, last); 'clean' first."""
    return sorted(labels, key=lambda g: -np.inf if g == "clean" else -float(g))


def run_wers(run: Run) -> dict:
    """WER of one run per role and group, nested as results.json shows it (roles it has)."""
    sets, out = run.sets, {}
    if "target" in sets:
        out["target"] = metrics.wer(sets["target"])
    if "clean" in sets:
        clean = sets["clean"]
        out["clean"] = metrics.wer(clean)
        out["clean_by_accent"] = {
            str(a): metrics.wer(g) for a, g in clean.groupby("accent", dropna=False)
        }
    if "noisy" in sets:
        noisy = sets["noisy"][sets["noisy"]["snr_db"].notna()]
        out["noisy_by_snr"] = {snr_label(s): metrics.wer(g) for s, g in noisy.groupby("snr_db")}
        out["noisy_above_0db"] = metrics.wer(noisy[noisy["snr_db"] > 0])
        out["noisy_0db"] = metrics.wer(noisy[noisy["snr_db"] == 0])
    for role in ("real", "real_target"):
        if role in sets:
            out[role] = metrics.wer(sets[role])
    return out


def spread(values: list[float]) -> dict | None:
    """Mean, sample sd, min, max and count over seeds; None when no seed has a value."""
    kept = np.asarray([v for v in values if v is not None and not np.isnan(v)], float)
    if not len(kept):
        return None
    sd = float(kept.std(ddof=1)) if len(kept) > 1 else None
    return {
        "mean": float(kept.mean()),
        "sd": sd,
        "min": float(kept.min()),
        "max": float(kept.max()),
        "n": int(len(kept)),
    }


def aggregate(per_seed: list[dict]) -> dict:
    """``run_wers`` dicts of several seeds -> the same nesting with a ``spread`` per leaf."""
    keys = list(dict.fromkeys(k for d in per_seed for k in d))
    out = {}
    for key in keys:
        values = [d.get(key) for d in per_seed]
        if any(isinstance(v, dict) for v in values):
            out[key] = aggregate([v for v in values if isinstance(v, dict)])
        else:
            out[key] = spread([np.nan if v is None else v for v in values])
    return out


def clusters(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Bootstrap clusters of a per-utterance table and their unit (metrics.error_clusters)."""
    return metrics.error_clusters(frame)


def matched(tables: list[pd.DataFrame]) -> tuple[pd.DataFrame, np.ndarray]:
    """The utterances every table holds, matched by id: the first table's columns (its
    ``errors`` dropped), each table's ``window`` as ``window_<i>``, and the errors as a
    (tables, utterances) matrix."""
    merged = tables[0].drop(columns=["errors", "window"], errors="ignore")
    for i, table in enumerate(tables):
        kept = table[[c for c in ("id", "errors", "window") if c in table.columns]]
        merged = merged.merge(
            kept.rename(columns={"errors": f"e{i}", "window": f"window_{i}"}), on="id"
        )
    errors = merged[[f"e{i}" for i in range(len(tables))]].to_numpy(float).T
    return merged.drop(columns=[f"e{i}" for i in range(len(tables))]), errors


def seed_mean_interval(runs: list[Run], role: str, rng, n_boot: int) -> tuple[float, float]:
    """95% interval of the seed-mean WER: a hierarchical bootstrap over the runs' seeds and
    the test set's speakers (``clusters``), on the utterances every run scored."""
    have = [r for r in runs if role in r.sets]
    if not have:
        return (float("nan"), float("nan"))
    merged, errors = matched([r.sets[role] for r in have])
    codes, _ = clusters(merged)
    return metrics.seed_bootstrap_ci(
        errors, merged["ref_words"].to_numpy(), rng, n_boot, clusters=codes
    )


def layout(runs: list[Run], role: str = "target") -> str | None:
    """The layout ``runs`` read the role's set in ("a, b" when they differ; None unknown)."""
    found = sorted({r.layouts.get(role) or "unknown" for r in runs if role in r.sets})
    return None if found in ([], ["unknown"]) else ", ".join(found)


def systems_table(runs: list[Run], rng, n_boot: int) -> list[dict]:
    """One row per system at the recipe budget, seeds aggregated; pretrained first."""
    rows = []
    for system in (PRETRAINED, *SELECTORS):
        members = [r for r in runs if r.key.system == system and not r.key.sweep]
        if not members:
            continue
        wers = aggregate([run_wers(r) for r in members])
        if wers.get("target") is not None:
            low, high = seed_mean_interval(members, "target", rng, n_boot)
            wers["target"].update(low=low, high=high)
        rows.append(
            {
                "system": system,
                "runs": [r.name for r in members],
                "seeds": [r.key.seed for r in members if r.key.seed is not None],
                # full trains on the whole pool, whatever select.budget says
                "budget": None if system in BUDGETLESS else members[0].key.budget,
                "layout": layout(members),
                "wer": wers,
            }
        )
    return rows


def sweep_table(runs: list[Run]) -> list[dict]:
    """Target WER per system and budget over seeds, when any run is a sweep point (-k)."""
    if not any(r.key.sweep for r in runs):
        return []
    tuned = [
        r for r in runs if r.key.system not in (PRETRAINED, *BUDGETLESS) and "target" in r.sets
    ]
    keys = sorted({(SELECTORS.index(r.key.system), r.key.budget) for r in tuned})
    rows = []
    for index, budget in keys:
        members = [r for r in tuned if r.key.system == SELECTORS[index] and r.key.budget == budget]
        rows.append(
            {
                "system": SELECTORS[index],
                "budget": budget,
                "runs": [r.name for r in members],
                "layout": layout(members),
                "target": spread([metrics.wer(r.sets["target"]) for r in members]),
            }
        )
    return rows


def accent_snr_table(runs: list[Run], roles: tuple[str, ...] = ("target", "clean", "noisy")):
    """WER per accent (rows) x SNR (columns: clean, then falling SNR) over the given roles'
    utterances of every run in ``runs`` pooled (errors summed); None without utterances."""
    frames = [r.sets[role] for r in runs for role in roles if role in r.sets]
    if not frames:
        return None
    pooled = pd.concat(frames, ignore_index=True)
    pooled["snr"] = pooled["snr_db"].map(snr_label)
    pooled["accent"] = pooled["accent"].astype(object).fillna("unknown")
    sums = pooled.groupby(["accent", "snr"])[["errors", "ref_words"]].sum()
    table = (sums["errors"] / sums["ref_words"].where(sums["ref_words"] > 0)).unstack("snr")
    snrs = sorted((c for c in table.columns if c != "clean"), key=lambda c: -float(c))
    return table[[c for c in ["clean", *snrs] if c in table.columns]]
