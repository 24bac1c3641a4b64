"""Stage 6, report: the comparison that shows whether the selection helped, as text and figures.

Reads only files earlier stages wrote under ``<data_dir>/`` and writes ``<data_dir>/report/``:
  report.md          tables and figures (``figures/*.png`` beside it)
  report.html        the same, self-contained: figures inlined as base64 PNG, no external links
  results.json       the comparison table (each system with the layout its target set was read
                     in), paired tests per seed and pooled over seeds (Holm-corrected per
                     table), the reference against random (``versus_random``), budget sweep
                     with its paired tests per budget, tables mixing layouts
                     (``layout_mismatch``), selection summary and every skipped input with its
                     reason
  figures/*.png

Evaluate runs (``evaluate/<run>/``) are named by one convention (``layout.parse_run_name``):
  pretrained                  the recipe's model, not fine-tuned
  <system>                    fine-tuned on the subset of selector <system> (rsft, random,
                              oracle, full, wer_filter, importance) at the recipe's budget
                              (select.budget) and seed (finetune.seed, else seed)
  <system>-s<seed>            the same at another seed
  <system>-k<budget>-s<seed>  a budget sweep point (``-k<budget>`` alone: the recipe's seed)
A fine-tuned run's training log is ``finetune/<run>/train_log.json``. Runs with other names,
sets and runs that are missing are skipped, with the reason logged and listed in the report.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.fsio import read_json, read_parquet, stable_seed, write_json
from pipeline.layout import WEIGHTS, RunName, parse_run_name
from pipeline.report import compare, doc, plots, stats

log = logging.getLogger(__name__)


class Skips:
    """Inputs left out, each with its reason: logged, and listed in the report."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def add(self, what: str, reason: str) -> None:
        log.warning("report: skipped %s: %s", what, reason)
        self.items.append({"what": what, "reason": reason})


def set_roles(recipe: Recipe, skips: Skips) -> dict[str, str]:
    """Role -> test set name, for the roles whose set the recipe prepares."""
    names = {s.name for s in recipe.prepare.sets}
    roles = {}
    for role in stats.ROLES:
        name = getattr(recipe.report, f"{role}_set")
        if name is None:
            continue
        if name in names:
            roles[role] = name
        else:
            skips.add(f"{role} set {name!r}", f"not a set of this recipe (report.{role}_set)")
    return roles


def load_runs(
    recipe: Recipe, roles: dict[str, str], skips: Skips, reading: str = ""
) -> list[stats.Run]:
    """Every evaluate run that follows the naming convention, with its test sets' errors.

    ``reading`` '@<layout>' takes the second reading's runs (``<run>@<layout>``) instead,
    named without it; runs of any other reading are left out."""
    folder = recipe.root / "evaluate"
    found = [p for p in folder.iterdir() if p.is_dir()] if folder.is_dir() else []
    if not found:
        raise UserError(f"no evaluate runs under {folder} (run: rsft evaluate first)")
    # the first reading's runs carry no '@'; the second's end with it
    found = [p for p in found if p.name.endswith(reading) and ("@" in p.name) == bool(reading)]
    seed = recipe.seed if recipe.finetune.seed is None else recipe.finetune.seed
    runs: dict[RunName, stats.Run] = {}
    other: list[str] = []  # runs of other experiments (dev arms, ...): one skip for them all
    # shortest name first: the bare name that the default pipeline writes wins a duplicate
    for path in sorted(found, key=lambda p: (len(p.name), p.name)):
        key = parse_run_name(path.name.removesuffix(reading), seed, recipe.select.budget)
        if key is None:
            other.append(path.name)
            continue
        if key in runs:
            skips.add(f"run {path.name}", f"same system, seed and budget as {runs[key].name}")
            continue
        run = stats.Run(path.name, key)
        for role, name in roles.items():
            table = path / name / "utterances.parquet"
            if not table.exists():
                skips.add(f"run {path.name}, set {name}", "not evaluated (no utterances.parquet)")
                continue
            frame = read_parquet(table)
            run.sets[role] = frame[[c for c in stats.COLUMNS if c in frame.columns]]
            run.layouts[role] = read_layout(path, name)
        runs[key] = run
    if other:
        skips.add(
            f"run {', '.join(other)}",
            "name is not `pretrained` or `<system>[-k<budget>][-s<seed>]`",
        )
    return sorted(runs.values(), key=lambda r: r.name)


def read_layout(run: Path, name: str) -> str | None:
    """The layout a run read set ``name`` in, as its wer.json records it, with the engine
    when it is not torch (None without one: a reading killed before it finished)."""
    path = run / name / "wer.json"
    if not path.exists():
        return None
    record = read_json(path)
    layout, engine = record.get("layout"), record.get("engine", "torch")
    # another engine reads the same layout differently: tables flag the mix like layouts
    return f"{layout} ({engine})" if layout and engine != "torch" else layout


def load_selection(folder: Path, skips: Skips) -> dict | None:
    """select/summary.json (with each selector's ESS), its diagnostics, and the rsft log-ratios
    of the whole pool and of the selected rows (``weights.parquet``, ``rsft/subset.parquet``)."""
    if not (folder / "summary.json").exists():
        skips.add("selection", f"no {folder / 'summary.json'} (run: rsft select)")
        return None
    summary = read_json(folder / "summary.json")
    diagnostics = {}
    for row in summary["selectors"]:
        path = folder / row["selector"] / "diagnostics.json"
        if "skipped" not in row and path.exists():
            diagnostics[row["selector"]] = read_json(path)
            row["ess"] = diagnostics[row["selector"]].get("ess")
        elif "skipped" not in row:
            skips.add(f"selection {row['method']}", f"no {path}")
    selected = None
    ratio_path, subset_path = folder / WEIGHTS, folder / "rsft" / "subset.parquet"
    if "rsft" in diagnostics and ratio_path.exists() and subset_path.exists():
        ratios = read_parquet(ratio_path)
        chosen = read_parquet(subset_path, columns=["id"])["id"]
        selected = ratios["log_w"][ratios["id"].isin(chosen)].to_numpy()
    elif "rsft" in diagnostics:
        skips.add("log-ratios of the rsft subset", f"no {ratio_path} or {subset_path}")
    summary = {"budget": summary["budget"], "selectors": summary["selectors"]}
    return {"summary": summary, "diagnostics": diagnostics, "selected_log_w": selected}


def load_train_logs(root: Path, runs: list[stats.Run], skips: Skips) -> dict[str, dict]:
    logs = {}
    for run in runs:
        if run.key.system == stats.PRETRAINED or run.key.sweep:
            continue
        path = root / "finetune" / run.name / "train_log.json"
        if path.exists():
            logs[run.name] = read_json(path)
        else:
            skips.add(f"training curve of {run.name}", f"no `{path}`")
    return logs


def selection_blocks(found: dict) -> list:
    blocks = [doc.Heading("Selection"), doc.selection(found["summary"])]
    blocks.append(
        doc.Para(
            "acceptance: selected / proposals; ESS: effective sample size of the pool weights; "
            "TV: total variation between the subset's and the target sample's group shares; "
            "target-group share: share of the subset in groups the target sample holds."
        )
    )
    clf = found["diagnostics"].get("rsft", {}).get("estimators", {}).get("classifier")
    if clf and "layer" in clf:
        blocks.append(
            doc.Para(
                f"rsft's classifier read encoder layer {clf['layer']} of {clf['layers']} at C "
                f"{clf['C']:g}, the lowest cross-fitted log loss ({clf['log_loss']:.4f}) of "
                f"{len(clf['candidates'])} candidates; AUC {clf['auc']:.3f}."
            )
        )
    diagnostics = {m: d for m, d in found["diagnostics"].items() if m != "full"}
    if diagnostics:
        png = plots.selection_shares(diagnostics)
        blocks.append(doc.Figure("selection_shares", png, "Group shares: pool, target, subsets"))
    if table := doc.generated(found["diagnostics"]):
        blocks += [doc.Heading("Generated data"), table]
        text = (
            "Candidates made from pool speech in the target audio's own noise (augment) are "
            "accepted by one pass of rejection on their ratio to the target; pseudo-labelled "
            "target audio by one pass on the labels' reliability. Label WER reads the "
            "transcripts the method never sees."
        )
        blocks.append(doc.Para(text))
        curves = [
            made["references"]["curve"]
            for diag in found["diagnostics"].values()
            for name, made in (diag.get("generated") or {}).items()
            if name == "pseudo" and made.get("references")
        ]
        if curves:
            png = plots.pseudo_label_curve(curves[0])
            caption = "Pseudo-labels: how many a reliability threshold keeps, and their WER"
            blocks.append(doc.Figure("pseudo_labels", png, caption))
    rsft = found["diagnostics"].get("rsft")
    if rsft is not None:
        hist = rsft["log_w_histogram"]
        target = set(rsft["groups"].get("target", {}))
        counts = {g: np.asarray(c, float) for g, c in hist["counts"].items()}
        series = [
            ("pool, target groups", sum((c for g, c in counts.items() if g in target), 0.0)),
            ("pool, other groups", sum((c for g, c in counts.items() if g not in target), 0.0)),
        ]
        edges = np.asarray(hist["edges"])
        if found["selected_log_w"] is not None:
            series.append(("rsft selected", np.histogram(found["selected_log_w"], edges)[0]))
        series = [(label, np.broadcast_to(c, len(edges) - 1)) for label, c in series]
        png = plots.log_ratio_histogram(edges, series)
        blocks.append(doc.Figure("log_ratio", png, "rsft log-ratio histogram (symlog counts)"))
    return blocks


def test_blocks(results: dict) -> list:
    """The paired tests of the reference: pooled over seeds, then per seed, each table with how
    it was computed."""
    ref, boot, blocks = results["reference"], results["bootstrap"], []
    method = (
        f"{boot['resamples']} resamples; p two-sided, (1 + k) / (1 + resamples), so no p falls "
        f"below {doc.pval(boot['p_floor'])}"
    )
    if table := doc.pooled(results):
        n = compare.family_size(results["pooled"])
        blocks += [doc.Heading(f"{ref} against each system, pooled over seeds"), table]
        text = (
            f"Seed-mean WER on the target test set, utterances matched by id: a paired "
            "hierarchical bootstrap that resamples seed pairs and speakers, the same speakers "
            f"for both systems ({method}). Relative: {ref} / other - 1. p (Holm): "
            f"Holm-corrected over {n} comparisons."
        )
        blocks.append(doc.Para(text))
    if table := doc.paired(results):
        n = compare.family_size(results["paired"])
        blocks += [doc.Heading(f"Paired bootstrap per seed: {ref} against each system"), table]
        text = (
            f"On the target test set, utterances matched by id, per seed, speakers resampled "
            f"({method}); negative differences favour {ref}. p (Holm): Holm-corrected over "
            f"{n} comparisons."
        )
        blocks.append(doc.Para(text))
    return blocks


def build(recipe: Recipe, results: dict, runs: list, found: dict | None, logs: dict) -> list:
    """The report's blocks, in reading order."""
    ref, roles = results["reference"], results["sets"]
    blocks = [
        doc.Para(
            f"{recipe.description or recipe.name}. Budget {results['budget']} utterances per "
            f"subset; test sets: {', '.join(f'{r} = `{s}`' for r, s in roles.items())}. WER in "
            "%, mean over seeds with the range (min-max) in brackets; the target interval is a "
            "95% bootstrap of the seed mean that resamples seeds and speakers."
        ),
        *doc.layout_warnings(results),
        doc.Heading("Comparison"),
    ]
    if results["systems"]:
        blocks.append(doc.comparison(results))
        panels = [
            (k, t) for k, t in _BAR_PANELS if any(s["wer"].get(k) for s in results["systems"])
        ]
        if panels:
            png = plots.system_bars(results["systems"], panels)
            blocks.append(doc.Figure("systems", png, "WER per system (bars: seed mean)"))
    if results.get("second_reading", {}).get("systems"):
        second = results["second_reading"]
        blocks.append(doc.Heading(f"Second reading: every system in the {second['layout']} layout"))
        blocks.append(doc.comparison({**results, **second}))
    blocks += test_blocks(results)
    for key, label, title, order in (
        ("clean_by_accent", "", "Clean speech per accent (WER %)", None),
        ("noisy_by_snr", "dB", "Noisy speech per SNR (WER %)", stats.snr_order),
    ):
        if table := doc.by_group(results, key, label, order):
            blocks += [doc.Heading(title), table]
    before = [r for r in runs if r.key.system == stats.PRETRAINED]
    after = [r for r in runs if r.key.system == ref and not r.key.sweep]
    panels = [
        (f"{title} ({len(group)} run{'s' * (len(group) > 1)})", table)
        for title, group in (("pretrained", before), (f"{ref} fine-tuned", after))
        if (table := stats.accent_snr_table(group)) is not None
    ]
    if panels:
        blocks += [doc.Heading("Before and after fine-tuning")]
        png = plots.wer_heatmaps(panels)
        blocks.append(
            doc.Figure(
                "heatmap", png, "WER % per accent x SNR; target, clean and noisy test sets pooled"
            )
        )
    if table := doc.sweep(results):
        png = plots.budget_sweep(results["sweep"])
        blocks += [
            doc.Heading("Budget sweep"),
            table,
            doc.Figure("sweep", png, "Target WER by budget"),
        ]
        if tests := doc.paired(results, "sweep_tests"):
            n = compare.family_size(results["sweep_tests"])
            note = f"{ref} against each system of the same budget and seed, paired as above; "
            blocks += [tests, doc.Para(note + f"p (Holm): Holm-corrected over {n} comparisons.")]
    if found is not None:
        blocks += selection_blocks(found)
    if logs:
        png = plots.training_curves(logs)
        blocks += [doc.Heading("Training"), doc.Figure("training", png, "Loss and dev WER per run")]
    return blocks


def bootstrap_settings(n_boot: int) -> dict:
    """How results.json's intervals and tests were computed, for its readers."""
    return {
        "resamples": n_boot,
        "p_floor": 1 / (n_boot + 1),  # the smallest p a bootstrap of n_boot resamples can give
        "level": 0.95,
        "clusters": "speaker (utterances that share a packed window join), else utterance",
        "seeds": "resampled: hierarchical over seeds and speakers for seed means",
        "correction": "Holm, over the tests of one table",
    }


def _strict_json(value):
    """NaN (an undefined WER or interval) as null, so that any JSON reader accepts the file."""
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict_json(v) for v in value]
    if isinstance(value, float) and np.isnan(value):
        return None
    return value


_BAR_PANELS = [
    ("target", "target test (95% CI)"),
    ("clean", "clean speech"),
    ("noisy_0db", "noisy, 0 dB"),
    ("real", "real speech"),
    ("real_target", "real speech, target condition"),
]


def run(recipe: Recipe) -> dict:
    """Build the report of a recipe's runs; print the comparison; return results.json's content."""
    cfg, out = recipe.report, recipe.root / "report"
    log.info("Stage 6: report on %s -> %s", recipe.root, out)
    skips = Skips()
    roles = set_roles(recipe, skips)
    runs = load_runs(recipe, roles, skips)
    rng = np.random.default_rng(stable_seed(recipe.seed, "report"))
    results = {
        "recipe": recipe.name,
        "budget": recipe.select.budget,
        "sets": roles,
        "reference": cfg.reference,
        "bootstrap": bootstrap_settings(cfg.bootstrap),
        "systems": stats.systems_table(runs, rng, cfg.bootstrap),
        "paired": compare.paired_tests(runs, cfg.reference, rng, cfg.bootstrap, skips.add),
        "pooled": compare.pooled_tests(runs, cfg.reference, rng, cfg.bootstrap),
        "sweep": stats.sweep_table(runs),
        "sweep_tests": compare.sweep_tests(runs, cfg.reference, rng, cfg.bootstrap),
    }
    results["versus_random"] = compare.versus(results["pooled"], "random")
    results["layout_mismatch"] = compare.layout_mismatch(results)
    second = recipe.experiment.second_layout
    if second is not None:
        results["second_reading"] = second_reading(recipe, roles, second, rng, skips)
    found = load_selection(recipe.root / "select", skips)
    results["selection"] = found["summary"] if found else None
    blocks = build(recipe, results, runs, found, load_train_logs(recipe.root, runs, skips))
    blocks.append(doc.Heading("Skipped inputs"))
    if skips.items:
        blocks.append(
            doc.Table(["input", "reason"], [[s["what"], s["reason"]] for s in skips.items])
        )
    else:
        blocks.append(doc.Para("None: every configured set, run and log was found."))
    results = _strict_json({**results, "skipped": skips.items})
    doc.write(out, f"RSFT report: {recipe.name}", blocks)
    write_json(out / "results.json", results)
    print(doc.comparison_text(results))
    if results.get("second_reading"):
        print(doc.comparison_text({**results, **results["second_reading"]}))
    print(f"report: {out / 'report.md'} (and report.html, results.json)")
    return results


def second_reading(recipe: Recipe, roles: dict, layout: str, rng, skips: Skips) -> dict:
    """Every system read again in experiment.second_layout (runs ``<run>@<layout>``): its
    own table and per-seed tests, never mixed with the first reading's."""
    runs = load_runs(recipe, roles, skips, f"@{layout}")
    cfg = recipe.report
    return {
        "layout": layout,
        "systems": stats.systems_table(runs, rng, cfg.bootstrap),
        "paired": compare.paired_tests(runs, cfg.reference, rng, cfg.bootstrap, skips.add),
    }
