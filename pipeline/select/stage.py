"""Stage 3, select: density ratios, an exact fixed-budget draw, baselines at the same budget.

Output, under ``<data_dir>/select/``:
  <selector>/subset.parquet    the selected pool rows (manifest columns, plus ``count`` for
                             selectors that draw with replacement)
  <selector>/diagnostics.json  acceptance, expected vs actual, ESS, clipped mass, group shares
                             of pool / target / selected with total variation, log-w histograms
  <selector>/shares.png, <selector>/log_ratio.png
  weights.parquet            every pool row's id, log_w (the rsft estimator's log-ratio), weight
                             (w normalised to mean 1) and inclusion (the exact fixed-budget
                             design's probability at select.budget): selection weights for other
                             toolkits (docs/weights.md)
  summary.json, summary.txt  one row per selector (and the run's peak RSS)

The target sample's metadata (accent, noise, SNR) is used only by the ``oracle`` baseline and
by the diagnostics; ``rsft`` sees the target sample's audio embeddings alone.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import layout, manifest, resources
from pipeline.config import Recipe, SelectConfig
from pipeline.errors import UserError
from pipeline.fsio import atomic_path, read_parquet, stable_seed, write_json, write_text
from pipeline.generate import pseudo
from pipeline.select import fixed_budget, generated, plots, ratios, sampling
from pipeline.select.generated import GENERATED

log = logging.getLogger(__name__)


def group_keys(frame: pd.DataFrame, columns: tuple[str, ...]) -> list[tuple]:
    """Metadata groups; clean audio's missing SNR is its own value."""
    parts = [
        frame[c].map(lambda v: "clean" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else v))
        for c in columns
    ]
    return list(zip(*parts, strict=True)) if parts else [()] * len(frame)


def load_scored(recipe: Recipe, name: str) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """A set's manifest, embeddings and scores, checked to be row-aligned, in id order: the
    manifest's row order (how the set was generated) must not change a selection."""
    path = recipe.tree.manifest(name)
    out = recipe.tree.score(name)
    if not (out / layout.STAMP).exists():
        raise UserError(f"set {name!r}: not scored yet (run: rsft score first)")
    frame = manifest.read(path)
    emb = np.load(out / "embeddings.npy").astype(np.float32)
    scores = read_parquet(out / "scores.parquet")
    if scores["id"].tolist() != frame["id"].tolist():
        raise UserError(f"set {name!r}: scores do not match the manifest (rerun: rsft score)")
    order = np.argsort(frame["id"].to_numpy(dtype=str), kind="stable")
    frame = frame.iloc[order].reset_index(drop=True)
    return frame, emb[order], scores.iloc[order].reset_index(drop=True)


def estimate_log_ratio(cfg: SelectConfig, pool_emb, target_emb, pool_groups, loss, rng):
    """The rsft log-ratio: the configured estimators summed; returns (log_w, info per estimator)."""
    parts, info = [], {}
    for name in cfg.estimators:
        if name == "classifier":
            log_w, info[name] = ratios.classifier_log_ratio(
                pool_emb,
                target_emb,
                rng,
                folds=cfg.folds,
                C=cfg.C,
                pca_dim=cfg.pca_dim,
                layer=cfg.layer,
            )
            log.info(
                "select: classifier reads layer %d of %d at C %g (cross-fitted log loss %.4f, "
                "AUC %.3f)",
                info[name]["layer"],
                info[name]["layers"],
                info[name]["C"],
                info[name]["log_loss"],
                info[name]["auc"],
            )
        elif name == "groups":
            target = cfg.group_weights or ratios.balanced_target(pool_groups)
            target = {
                tuple(k.split("|")) if isinstance(k, str) else k: v for k, v in target.items()
            }
            log_w, info[name] = ratios.groups_log_ratio(pool_groups, target)
        else:
            log_w, info[name] = ratios.difficulty_log_ratio(loss, cfg.beta)
        parts.append(log_w)
    return ratios.combine(*parts), info


def active_selectors(cfg: SelectConfig) -> list[str]:
    """select.selectors without those that add generated data from a generator the recipe
    does not set up (the default lists every selector)."""
    return [s for s in cfg.selectors if s not in GENERATED or generated.runnable(s, cfg)]


def run(recipe: Recipe, out: Path | None = None) -> pd.DataFrame:
    """Select every selector's subset into ``out`` (default: <data_dir>/select)."""
    cfg = recipe.select
    out = out or recipe.tree.select
    log.info(
        "Stage 3: select %d of %s for %s -> %s", cfg.budget, cfg.pool, ", ".join(cfg.selectors), out
    )
    pool, pool_emb, scores = load_scored(recipe, cfg.pool)
    pool_groups = group_keys(pool, cfg.group_columns)
    target_shares = None
    target_emb = None
    oracle = None  # the oracle's groups of the pool and the target's shares of them
    if cfg.target:
        target, target_emb, _ = load_scored(recipe, cfg.target)
        target_shares = sampling.group_shares(group_keys(target, cfg.group_columns))
        columns = cfg.oracle_columns or cfg.group_columns
        oracle = (
            group_keys(pool, columns),
            sampling.group_shares(group_keys(target, columns)),
        )
    needs_ratio = {"rsft", "importance", "rsft_labelled", *GENERATED} & set(cfg.selectors)
    if needs_ratio and "classifier" in cfg.estimators and target_emb is None:
        raise UserError("select.estimators: 'classifier' needs a target sample (select.target)")
    if needs_ratio and "difficulty" in cfg.estimators and not np.isfinite(scores["loss"]).any():
        raise UserError(
            f"select.estimators: 'difficulty' needs the losses of {cfg.pool!r}, which were not "
            "scored (set score.losses: true, or leave it unset, and rerun rsft score)"
        )
    rng = np.random.default_rng(stable_seed(recipe.seed, "select", "ratio"))
    generating = bool(set(GENERATED) & set(active_selectors(cfg)))
    off_support = None  # why the pool has no ratio to the target, when generation goes on
    try:
        log_w, info = (
            estimate_log_ratio(
                cfg, pool_emb, target_emb, pool_groups, scores["loss"].to_numpy(), rng
            )
            if needs_ratio
            else (np.zeros(len(pool)), {})
        )
    except UserError as err:
        if not generating or "separates target from pool" not in str(err):
            raise
        # a target condition the pool never heard: generated candidates supply it
        off_support = str(err)
        log.warning("select: %s; the generated data go on", err)
        log_w, info = np.zeros(len(pool)), {"classifier": {"error": off_support}}
    _write_frame(out / layout.WEIGHTS, weights_frame(pool["id"], log_w, cfg.budget))
    labelled = _with_labelled(recipe, pool, pool_groups)
    made = _generated(recipe, pool, pool_groups, target_emb) if generating else None
    rows = []
    for selector in active_selectors(cfg):
        rng = np.random.default_rng(stable_seed(recipe.seed, "select", selector))
        if off_support and selector in ("rsft", "importance", "rsft_labelled"):
            log.warning("select: %s skipped: %s", selector, off_support)
            rows.append({"selector": selector, "skipped": off_support})
            continue
        try:
            if selector in GENERATED:
                selection, selector_log_w = made.select(
                    selector,
                    cfg,
                    _pool_draw(cfg, log_w, recipe.seed, off_support),
                    log_w,
                    recipe.seed,
                )
            elif selector in LABELLED:
                selection, selector_log_w = _select_labelled(selector, cfg, log_w, labelled, rng)
            else:
                selection, selector_log_w = _select(selector, cfg, log_w, oracle, scores, rng)
        except UserError as err:
            if selector in ("rsft", "random"):
                raise
            log.warning("select: %s skipped: %s", selector, err)  # a baseline missing its inputs
            rows.append({"selector": selector, "skipped": str(err)})
            continue
        rows_from, groups_of = pool, pool_groups
        if selector in LABELLED:  # rows past the pool's are the labelled set's
            rows_from, groups_of = labelled
        if selector in GENERATED:  # rows past the pool's are the generated ones
            rows_from, groups_of = made.rows, made.groups
        diag = sampling.diagnostics(selector_log_w, selection, groups_of, target_shares)
        diag["selection"] = selection.to_dict()
        diag["target_group_share"] = _target_group_share(groups_of, selection, target_shares)
        diag["estimators"] = info if selector in ("rsft", "importance") else {}
        if selector in GENERATED:
            diag["generated"] = made.diagnostics(selector, selection)
        if selector in ("rsft", "oracle"):
            diag["design"] = _design_check(selector_log_w, selection, pool_groups, cfg.budget)
        if selection.passes > 1 and selector == "rsft":
            diag.setdefault("warnings", []).append(
                f"{selection.passes} passes: later passes are not exact draws from the target"
            )
        _write_selection(
            out / selector, recipe.root, rows_from, selection, diag, selector_log_w, groups_of
        )
        rows.append(_summary_row(selector, selection, diag))
    table = pd.DataFrame(rows)
    for column in ("selected", "unique", "passes"):
        table[column] = table[column].astype("Int64")
    summary = {"budget": cfg.budget, "selectors": rows, "estimators": info}
    write_json(out / "summary.json", summary | resources.peak_rss())
    text = table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")
    write_text(out / "summary.txt", text + "\n")
    print(text)
    return table


def _select(selector, cfg, log_w, oracle, scores, rng):
    n = len(log_w)
    if selector == "rsft":
        return _sample(cfg, log_w, rng), log_w
    if selector == "importance":
        return sampling.importance_sample(log_w, cfg.budget, rng), log_w
    if selector == "random":
        return sampling.uniform_sample(n, cfg.budget, rng), np.zeros(n)
    if selector == "full":
        everything = sampling.uniform_sample(n, n, rng, method="full")
        return everything, np.zeros(n)
    if selector == "oracle":
        if oracle is None:
            raise UserError("select.selectors: 'oracle' needs a target sample with metadata")
        oracle_w, _ = ratios.groups_log_ratio(*oracle)
        return _sample(cfg, oracle_w, rng), oracle_w
    if selector == "wer_filter":
        if scores["wer"].isna().all():
            raise UserError(
                "select.selectors: 'wer_filter' needs hypotheses (score.hypotheses: true)"
            )
        chosen = sampling.wer_filter_sample(
            scores["wer"].to_numpy(), cfg.wer_threshold, cfg.budget, rng
        )
        return chosen, np.zeros(n)
    raise UserError(f"select.selectors: unknown selector {selector!r}")


LABELLED = ("labelled_target", "rsft_labelled")  # selectors that train on select.labelled_set


def _with_labelled(recipe: Recipe, pool: pd.DataFrame, pool_groups: list):
    """The pool with the labelled target-condition set's rows after it, and their groups;
    None when the recipe names no select.labelled_set."""
    name = recipe.select.labelled_set
    if name is None:
        return None
    path = recipe.tree.manifest(name)
    if not path.exists():
        raise UserError(f"select.labelled_set: no manifest {path} (run: rsft prepare first)")
    extra = manifest.read(path).sort_values("id", kind="stable").reset_index(drop=True)
    both = pd.concat([pool, extra], ignore_index=True)
    return both, pool_groups + group_keys(extra, recipe.select.group_columns)


def _select_labelled(selector, cfg: SelectConfig, log_w, labelled, rng):
    """``labelled_target``: the labelled set as it is (a user's transcribed target
    requests); ``rsft_labelled``: that set plus rsft's fixed-budget draw of the rest of the
    budget from the pool. Indices count the pool's rows first."""
    if labelled is None:
        raise UserError(f"select.selectors: {selector!r} needs select.labelled_set")
    n_pool = log_w.size
    n_extra = len(labelled[0]) - n_pool
    extra = n_pool + np.arange(n_extra, dtype=np.int64)
    picked, notes = extra, [f"{n_extra} labelled target-condition rows"]
    if selector == "rsft_labelled" and cfg.budget > n_extra:
        drawn = _sample(replace(cfg, budget=cfg.budget - n_extra), log_w, rng)
        picked = np.concatenate([drawn.indices, extra])
        notes.append(f"{drawn.size} rows of the pool drawn as rsft draws them")
    both_log_w = np.concatenate([log_w, np.full(n_extra, log_w.max())])
    selection = sampling.Selection(
        indices=np.sort(picked),
        method=selector,
        budget=cfg.budget,
        n_pool=len(labelled[0]),
        proposals=int(picked.size),
        notes=tuple(notes),
    )
    return selection, both_log_w


def _generated(recipe: Recipe, pool, pool_groups, target_emb) -> generated.Generated:
    """The pool's rows and each generator's that the recipe sets up."""
    cfg, blocks = recipe.select, {}
    if cfg.augment_set is not None:
        frame, emb, _ = load_scored(recipe, cfg.augment_set)
        blocks["augment"] = generated.augment_block(frame, emb, target_emb, cfg, recipe.seed)
    if cfg.pseudo_labels:
        names = list(cfg.pseudo_sets) or ([cfg.target] if cfg.target else [])
        if not names:
            raise UserError("select.pseudo_labels: needs a target sample (select.target)")
        frames, tables = [], []
        for name in names:
            labels = recipe.tree.score(name) / pseudo.TABLE
            if not labels.exists():
                raise UserError(
                    f"select.pseudo_labels: no pseudo-labels of {name!r} at {labels} (run: "
                    "rsft score)"
                )
            frames.append(manifest.read(recipe.tree.manifest(name)))
            tables.append(read_parquet(labels))
        target = pd.concat(frames, ignore_index=True)
        target = target.sort_values("id", kind="stable").reset_index(drop=True)
        blocks["pseudo"] = generated.pseudo_block(
            target,
            pd.concat(tables),
            cfg,
            recipe.model.language,
            recipe.evaluate.strip_diacritics,
        )
    generated.check_ids(pool, blocks)
    groups = pool_groups + [
        g for b in blocks.values() for g in group_keys(b.frame, cfg.group_columns)
    ]
    return generated.Generated(pool, groups, blocks)


def weights_frame(ids: pd.Series, log_w: np.ndarray, budget: int) -> pd.DataFrame:
    """One row per pool utterance: ``log_w``; ``weight`` = w / mean(w), the sampling weight
    other toolkits take (with replacement, proportional to w: ``importance``); ``inclusion``
    = min(1, c * w) with sum K, the probability that the exact fixed-budget draw of K rows
    without replacement holds the row (rsft's design). A flat log_w (no ratio) gives weight 1
    and inclusion K / N."""
    log_w = np.asarray(log_w, dtype=np.float64)
    w = np.exp(log_w - log_w.max())
    pi, _ = fixed_budget.inclusion_probabilities(w, min(budget, len(w)))
    return pd.DataFrame(
        {"id": ids.to_numpy(), "log_w": log_w, "weight": w / w.mean(), "inclusion": pi}
    )


def _pool_draw(cfg: SelectConfig, log_w, seed: int, off_support: str | None):
    """The pool's part of a selector with generated data: rsft's very draw (its seed), or a
    uniform one when the pool has no ratio to the target."""
    rng = np.random.default_rng(stable_seed(seed, "select", "rsft"))
    if off_support:
        drawn = sampling.uniform_sample(len(log_w), cfg.budget, rng)
        note = "the pool has no ratio to the target: its part is a uniform draw"
        return replace(drawn, notes=(*drawn.notes, note))
    return _sample(cfg, log_w, rng)


def _sample(cfg: SelectConfig, log_w: np.ndarray, rng) -> sampling.Selection:
    """rsft's and oracle's draw: the exact fixed-budget design, or rejection passes."""
    if cfg.sampler == "rejection":
        return sampling.rejection_sample(log_w, cfg.budget, rng, cfg.cap_quantile)
    return fixed_budget.fixed_budget_sample(log_w, cfg.budget, rng)


def _design_check(log_w, selection, pool_groups, budget: int) -> dict:
    """How the draw's design compares with the exact fixed-budget one, pi = min(1, c w).

    ``inclusion_tv``: total variation between the design's inclusion probabilities
    (normalised) and the exact ones: 0 for the fixed-budget sampler; for rejection sampling,
    the drift of 1 - (1 - w/M)^T toward low-weight rows after T passes. Group shares:
    expected under the exact design (sum of pi per group / K) against the draw's.
    """
    w = np.exp(log_w - log_w.max())
    exact, certain = fixed_budget.inclusion_probabilities(w, budget)
    if selection.method == "rejection":
        cap = np.exp(log_w.max() - selection.log_cap) if selection.log_cap is not None else 1.0
        achieved = fixed_budget.rejection_inclusion(w * cap, selection.passes)
    else:
        achieved = exact
    codes, uniques = sampling.encode_groups(pool_groups)
    per_group = np.bincount(codes, weights=exact, minlength=len(uniques)) / exact.sum()
    expected = {g: float(v) for g, v in zip(uniques, per_group, strict=True) if v > 0}
    drawn = sampling.group_shares(pool_groups, selection.indices)
    return {
        "sampler": selection.method,
        "certain": certain,
        "inclusion_tv": 0.5 * float(np.abs(achieved / achieved.sum() - exact / exact.sum()).sum()),
        "tv_drawn_expected": sampling.total_variation(drawn, expected) if drawn else 1.0,
    }


def _target_group_share(pool_groups, selection, target_shares) -> float | None:
    """Share of the selected rows whose metadata group occurs in the target sample."""
    if not target_shares:
        return None
    wanted = set(target_shares)
    picked = [pool_groups[i] for i in selection.indices]
    return sum(g in wanted for g in picked) / max(1, len(picked))


def _summary_row(selector: str, selection, diag: dict) -> dict:
    return {
        "selector": selector,
        "selected": selection.size,
        "unique": selection.n_unique,
        "sampler": selection.method,
        "passes": selection.passes,
        "certain": selection.certain,
        "acceptance": selection.acceptance_rate,
        "exhausted": selection.exhausted,
        "clipped_mass": selection.clipped_mass,
        "tv_to_target": diag.get("tv_accepted_target"),
        "target_group_share": diag["target_group_share"],
    }


def _write_selection(out: Path, root: Path, pool, selection, diag, log_w, pool_groups) -> None:
    """The subset (audio paths relative to it, wherever ``out`` lies under the data root
    ``root``), its diagnostics and plots."""
    counts = np.bincount(selection.indices, minlength=len(pool))
    picked = np.flatnonzero(counts)
    subset = pool.iloc[picked].assign(count=counts[picked]).reset_index(drop=True)
    manifest.write(subset, out / "subset.parquet", root=root)
    write_json(out / "diagnostics.json", diag)
    plots.selection_plots(out, diag, log_w, pool_groups)


def _write_frame(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
