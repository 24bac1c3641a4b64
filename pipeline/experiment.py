"""The comparison that shows what selection buys: every selector's subset fine-tuned with the
same settings at the same budget, over several seeds, plus a budget sweep; each model
evaluated on the test sets; then the report.

Runs are named by ``layout.run_name`` (``<selector>`` at the recipe's seed and budget,
``<selector>-s<seed>``, ``<selector>-k<budget>-s<seed>``), as the report parses them;
``layout.DataTree`` places their models, readings and the selections for other seeds and
budgets. Every step skips work whose
inputs are unchanged, so a second run (or a rerun after a kill) only does what is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from pipeline import evaluate, finetune, layout, report, resources, select
from pipeline.config import AugmentSource, ModelConfig, Recipe
from pipeline.fsio import read_json, write_json
from pipeline.select import generated
from pipeline.select.generated import GENERATED

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arm:
    system: str  # the selector whose subset trains
    seed: int
    budget: int

    def name(self, recipe: Recipe) -> str:
        return layout.run_name(
            self.system, self.seed, self.budget, recipe.seed, recipe.select.budget
        )

    def variant(self, recipe: Recipe) -> str | None:
        """The select/variants/ folder of this arm's draw; None for the recipe's own."""
        return layout.variant(self.seed, self.budget, recipe.seed, recipe.select.budget)

    def subset(self, recipe: Recipe) -> str:
        """The subset's name under select/: the main selection, or a variant's."""
        return layout.subset_name(
            self.system, self.seed, self.budget, recipe.seed, recipe.select.budget
        )


def plan(recipe: Recipe, quick: bool) -> list[Arm]:
    """The arms to train: systems x seeds at the recipe's budget, then the sweep."""
    cfg = recipe.experiment
    systems = cfg.quick_systems if quick else cfg.systems
    # an arm that adds generated data needs its generators set up
    systems = [s for s in systems if s not in GENERATED or generated.runnable(s, recipe.select)]
    seeds = cfg.quick_seeds if quick else cfg.seeds
    arms = [Arm(s, seed, recipe.select.budget) for seed in seeds for s in systems]
    if not quick:
        arms += [
            Arm(s, seed, k)
            for k in cfg.sweep_budgets
            if k != recipe.select.budget
            for seed in seeds
            for s in cfg.sweep_systems
        ]
    return arms


def without_unused_generators(recipe: Recipe, arms: list[Arm]) -> Recipe:
    """The recipe without the generators that no arm takes from (make demo's quick arms, or
    systems chosen without generated arms): their sets are not prepared, their pseudo-labels
    not decoded, and select draws no generated subset."""
    used = {name for arm in arms for name in GENERATED.get(arm.system, {})}
    sets = recipe.prepare.sets
    if "augment" not in used:
        sets = tuple(s for s in sets if not isinstance(s.source, AugmentSource))
    if "pseudo" not in used:  # sets that only the pseudo-labeller reads
        only = set(recipe.select.pseudo_sets) - {recipe.select.target}
        sets = tuple(s for s in sets if s.name not in only)
    return replace(
        recipe,
        prepare=replace(recipe.prepare, sets=sets),
        select=replace(
            recipe.select,
            augment_set=recipe.select.augment_set if "augment" in used else None,
            pseudo_labels=recipe.select.pseudo_labels and "pseudo" in used,
        ),
    )


def seeded(recipe: Recipe, seed: int, budget: int) -> Recipe:
    """The recipe with this seed (selection and training order) and budget."""
    return replace(
        recipe,
        seed=seed,
        select=replace(recipe.select, budget=budget),
        finetune=replace(recipe.finetune, seed=seed),
    )


def run_all(recipe: Recipe, quick: bool = False) -> dict:
    """Every stage in order (prepare, score, select, then the experiment), each skipping
    what is done; prints and writes (``report/timings.json``) the time each one took."""
    from pipeline import prepare, score

    # generators that no arm takes from (make demo's quick arms, or an experiment.systems
    # without generated arms) are neither prepared nor decoded
    recipe = without_unused_generators(recipe, plan(recipe, quick))
    timings: dict[str, float] = {}
    for stage, step in (("prepare", prepare.run), ("score", score.run), ("select", select.run)):
        started = time.perf_counter()
        step(recipe)
        timings[stage] = time.perf_counter() - started
    return run(recipe, quick, timings)


def _selected_for(recipe: Recipe) -> bool:
    """Whether select/summary.json is a draw of every selector this recipe runs, at its
    budget: make demo's quick select leaves the generated arms out, and a later experiment
    that trains them must select again (select redraws the rest identically, by seed)."""
    path = recipe.tree.select / "summary.json"
    if not path.exists():
        return False
    summary = read_json(path)
    drawn = {row["selector"] for row in summary.get("selectors", [])}
    wanted = set(select.active_selectors(recipe.select))
    return summary.get("budget") == recipe.select.budget and wanted <= drawn


def record_timings(recipe: Recipe, quick: bool, timings: dict[str, float]) -> None:
    """Print the time of each step and write it to ``report/timings.json``."""
    total = sum(timings.values())
    host = resources.machine()
    print(f"time per stage ({recipe.name}{', quick' * quick}):")
    for step, seconds in timings.items():
        print(f"  {step:<32} {seconds / 60:6.1f} min")
    print(f"  {'total':<32} {total / 60:6.1f} min")
    bf16 = "native bf16" if host["native_bf16"] else "no native bf16: fp32 inference and training"
    isa = f" ({host['vector_isa']})" if host["vector_isa"] else ""
    print(f"  on {host['cores']} cores, {host['cpu']}{isa}, {bf16}")
    stages = [{"stage": k, "seconds": round(v, 1)} for k, v in timings.items()]
    write_json(
        recipe.tree.report / "timings.json",
        {"quick": quick, "stages": stages, "machine": host},
    )


def eval_model(recipe: Recipe) -> ModelConfig:
    """How every system is read: experiment.eval_layout, and in packed windows the silence
    between commands that the models were trained with (or experiment.eval_pack_gap_s)."""
    gap = recipe.experiment.eval_pack_gap_s
    if gap is None:
        gap = recipe.finetune.pack_gap_s
    if gap is None:
        gap = recipe.model.pack_gap_s
    return replace(recipe.model, layout=recipe.experiment.eval_layout, pack_gap_s=gap)


def read_all(recipe: Recipe, model_dir: str | None, name: str) -> None:
    """Read one system as every system is read (``recipe`` already carries the eval layout),
    and again in experiment.second_layout as ``<name>@<layout>`` when one is set."""
    evaluate.run(recipe, model_dir, name if model_dir else None)
    second = recipe.experiment.second_layout
    if second is not None:
        other = replace(recipe, model=replace(recipe.model, layout=second))
        evaluate.run(other, model_dir, f"{name}@{second}")


def run(recipe: Recipe, quick: bool = False, timings: dict[str, float] | None = None) -> dict:
    """Train and evaluate every arm (skipping what is done), then write the report; print
    and write (``report/timings.json``) the time each step took.

    ``timings`` (stage -> seconds, from the stages before) is filled in as the steps finish."""
    arms = plan(recipe, quick)
    recipe = without_unused_generators(recipe, arms)
    tree = recipe.tree
    log.info("Experiment %s: %d arm(s)%s", recipe.name, len(arms), " (quick: make demo's)" * quick)
    timings = {} if timings is None else timings
    started = time.perf_counter()
    eval_recipe = replace(recipe, model=eval_model(recipe))
    if quick and recipe.experiment.quick_sets:
        sets = recipe.experiment.quick_sets
        eval_recipe = replace(eval_recipe, evaluate=replace(recipe.evaluate, sets=sets))
        log.info("quick: every system reads %s only", ", ".join(sets))
    read_all(eval_recipe, None, "pretrained")  # read as every fine-tuned model is
    timings["evaluate pretrained"] = time.perf_counter() - started
    selected: set[tuple[int, int]] = set()
    if _selected_for(recipe):  # make select ran already, for these selectors
        selected.add((recipe.seed, recipe.select.budget))
    baseline_sets = recipe.experiment.quick_baseline_sets if quick else ()
    if baseline_sets:
        log.info("quick: systems other than rsft read %s only", ", ".join(baseline_sets))
    for arm in arms:
        variant = seeded(recipe, arm.seed, arm.budget)
        name, subset = arm.name(recipe), arm.subset(recipe)
        if (arm.seed, arm.budget) not in selected:
            select.run(variant, tree.selection(arm.variant(recipe)))
            selected.add((arm.seed, arm.budget))
        if not tree.subset(subset).exists():
            log.warning("experiment: %s skipped: select wrote no %s subset", name, arm.system)
            continue
        started = time.perf_counter()
        finetune.run(variant, subset, name=name)
        timings[f"finetune {name}"] = time.perf_counter() - started
        started = time.perf_counter()
        model_dir = tree.model(name)
        reader = eval_recipe
        if baseline_sets and arm.system != "rsft":
            reader = replace(
                eval_recipe, evaluate=replace(eval_recipe.evaluate, sets=baseline_sets)
            )
        read_all(reader, str(model_dir), name)
        timings[f"evaluate {name}"] = time.perf_counter() - started
    started = time.perf_counter()
    results = report.run(recipe)
    timings["report"] = time.perf_counter() - started
    record_timings(recipe, quick, timings)
    return results
