"""The comparison end to end on a tiny model: select per seed, fine-tune, evaluate, report."""

import importlib
import itertools
import json
import os
from dataclasses import replace

import numpy as np
import pytest

from pipeline import experiment, finetune, manifest, resources
from pipeline.config import load_recipe
from pipeline.errors import RecipeError
from pipeline.prepare import stage as prepare
from tests.factories import ACCENTS, NOISES, TEXTS, fake_scored_set, write_subset


def test_plan_names_runs_as_the_report_reads_them(write_recipe):
    recipe = load_recipe(
        write_recipe(
            {
                "seed": 0,
                "select": {"budget": 300},
                "experiment": {
                    "systems": ["rsft", "random"],
                    "seeds": [0, 1],
                    "sweep_budgets": [100, 300],
                    "sweep_systems": ["rsft"],
                },
            }
        )
    )
    names = [a.name(recipe) for a in experiment.plan(recipe, quick=False)]
    assert names == ["rsft", "random", "rsft-s1", "random-s1", "rsft-k100-s0", "rsft-k100-s1"]
    quick = [a.name(recipe) for a in experiment.plan(recipe, quick=True)]
    assert quick == ["rsft", "random"]
    arm = experiment.Arm("rsft", 1, 100)
    assert arm.subset(recipe) == "variants/k100-s1/rsft"


def test_a_select_without_the_arms_selectors_is_run_again(write_recipe):
    """make demo's quick select draws no generated arm: a later experiment selects again."""
    recipe = load_recipe(
        write_recipe({"select": {"budget": 50, "selectors": ["rsft", "random", "oracle"]}})
    )
    path = recipe.tree.select / "summary.json"
    assert not experiment._selected_for(recipe)
    path.parent.mkdir(parents=True)
    rows = [{"selector": "rsft"}, {"selector": "random"}]
    path.write_text(json.dumps({"budget": 50, "selectors": rows}))
    assert not experiment._selected_for(recipe)  # oracle missing
    rows.append({"selector": "oracle", "skipped": "no target sample"})
    path.write_text(json.dumps({"budget": 50, "selectors": rows}))
    assert experiment._selected_for(recipe)  # a logged skip is a draw that was tried
    path.write_text(json.dumps({"budget": 60, "selectors": rows}))
    assert not experiment._selected_for(recipe)


def test_systems_read_packed_get_the_gaps_they_were_trained_with(write_recipe):
    def model(settings):
        packed = {"experiment": {"eval_layout": "packed"} | settings.pop("experiment", {})}
        recipe = load_recipe(write_recipe({"model": {"pack_gap_s": 0.8}} | settings | packed))
        return experiment.eval_model(recipe)

    assert model({}).layout == "packed" and model({}).pack_gap_s == 0.8  # the model's gap
    assert model({"finetune": {"pack_gap_s": 0.3}}).pack_gap_s == 0.3  # the training gap
    chosen = {"finetune": {"pack_gap_s": 0.3}, "experiment": {"eval_pack_gap_s": 0.5}}
    assert model(chosen).pack_gap_s == 0.5
    default = experiment.eval_model(load_recipe(write_recipe({})))
    assert default.layout == "standard"  # one request per window, as an assistant hears it


def test_quick_experiment_trains_evaluates_and_reports(
    write_recipe, tmp_path, tiny_whisper_dir, monkeypatch
):
    root = tmp_path / "data"
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(30)]
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", [("caribbean", NOISES[2])] * 30, np.random.default_rng(1))
    write_subset(root, "unused")  # three real espeak-ng commands: every pool row speaks one
    frame = manifest.read(root / "prepare" / "manifests" / "pool.parquet")
    spoken = itertools.islice(itertools.cycle(range(3)), len(frame))
    picks = list(spoken)
    frame["audio_path"] = [str(root / "audio" / f"u{i}.flac") for i in picks]
    frame["text"] = [TEXTS[i] for i in picks]
    manifest.write(frame, root / "prepare" / "manifests" / "pool.parquet", root=root)
    recipe = load_recipe(
        write_recipe(
            {
                "model": {"name": str(tiny_whisper_dir)},
                "prepare": {
                    "workers": 1,
                    "sets": [
                        {
                            "name": "test_target",
                            "split": "test",
                            "source": {"kind": "synth", "parts": [{"count": 3, "voices": ["us"]}]},
                        },
                        {
                            "name": "test_clean",
                            "split": "test",
                            "source": {"kind": "synth", "parts": [{"count": 2, "voices": ["gb"]}]},
                        },
                        {
                            "name": "test_extra",
                            "split": "test",
                            "source": {"kind": "synth", "parts": [{"count": 1, "voices": ["us"]}]},
                        },
                    ],
                },
                "select": {"budget": 8, "folds": 2, "selectors": ["rsft", "random"]},
                "finetune": {
                    "steps": 2,
                    "batch_size": 4,
                    "lr": 1e-3,
                    "warmup_steps": 1,
                    "pack_gap_s": 0.4,
                },
                "evaluate": {"bootstrap": 20},
                "report": {"bootstrap": 20, "clean_set": None, "noisy_set": None, "real_set": None},
                "experiment": {
                    "quick_systems": ["rsft", "random"],
                    "quick_seeds": [0, 1],
                    "quick_baseline_sets": ["test_target"],
                    "quick_sets": ["test_target", "test_clean"],
                },
            }
        )
    )
    prepare.run(recipe)
    results = experiment.run(recipe, quick=True)
    runs = {p.name for p in (root / "evaluate").iterdir()}
    assert {"pretrained", "rsft", "random", "rsft-s1", "random-s1"} <= runs
    assert (root / "select" / "variants" / "k8-s1" / "rsft" / "subset.parquet").exists()
    # quick: rsft (and the pretrained model) read every test set, the baselines the target's
    for run in ("pretrained", "rsft", "rsft-s1"):
        assert (root / "evaluate" / run / "test_clean" / "wer.json").exists(), run
        assert not (root / "evaluate" / run / "test_extra").exists(), run  # quick_sets
    for run in ("random", "random-s1"):
        assert (root / "evaluate" / run / "test_target" / "wer.json").exists(), run
        assert not (root / "evaluate" / run / "test_clean").exists(), run
    first = json.loads((root / "finetune" / "rsft" / "train_log.json").read_text())
    other = json.loads((root / "finetune" / "rsft-s1" / "train_log.json").read_text())
    assert first["subset_sha256"] != other["subset_sha256"]  # another seed, another draw
    wer = json.loads((root / "evaluate" / "rsft" / "test_target" / "wer.json").read_text())
    assert wer["layout"] == "standard"  # experiment.eval_layout, for every system
    for run in ("pretrained", "random"):
        read_as = json.loads((root / "evaluate" / run / "test_target" / "wer.json").read_text())
        assert read_as["layout"] == "standard", run
    systems = {row["system"]: row for row in results["systems"]}
    assert systems["rsft"]["seeds"] == [0, 1] and systems["random"]["seeds"] == [0, 1]
    assert (root / "report" / "results.json").exists()
    timed = json.loads((root / "report" / "timings.json").read_text())  # experiment alone too
    stages = [s["stage"] for s in timed["stages"]]
    assert stages[0] == "evaluate pretrained" and stages[-1] == "report"
    assert "finetune rsft-s1" in stages and "evaluate random" in stages
    stamp = (root / "finetune" / "rsft" / "model" / "model.safetensors").stat().st_mtime_ns
    experiment.run(recipe, quick=True)  # a second run reuses what is done
    assert (root / "finetune" / "rsft" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (root / "evaluate" / "random" / "test_clean").exists()
    # the full comparison reads the baselines' other sets, training nothing again
    full = replace(recipe, experiment=replace(recipe.experiment, systems=("rsft", "random")))
    full = replace(full, experiment=replace(full.experiment, seeds=(0,), sweep_budgets=()))
    experiment.run(full)
    assert (root / "evaluate" / "random" / "test_clean" / "wer.json").exists()
    for run in ("pretrained", "rsft", "random"):
        assert (root / "evaluate" / run / "test_extra" / "wer.json").exists(), run
    assert (root / "finetune" / "rsft" / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    # a data folder moves as a whole: a variant's subset still finds its audio, and trains
    moved = tmp_path / "moved"
    root.rename(moved)
    subset = manifest.read(moved / "select" / "variants" / "k8-s1" / "rsft" / "subset.parquet")
    assert all(p.startswith(str(moved)) and os.path.isfile(p) for p in subset["audio_path"])
    there = replace(recipe, data_dir=str(moved), finetune=replace(recipe.finetune, steps=1))
    record = finetune.run(there, "variants/k8-s1/rsft", name="after-move")
    assert record["steps"] == 1 and (moved / "finetune" / "after-move" / "model").is_dir()
    with pytest.raises(RecipeError, match="quick_baseline_sets: 'nope'"):
        load_recipe(write_recipe({"experiment": {"quick_baseline_sets": ["nope"]}}))


def test_run_all_runs_the_stages_in_order_and_times_them(write_recipe, monkeypatch, capsys):
    recipe = load_recipe(write_recipe({}))
    calls = []
    # the experiment calls each stage through its package
    for stage in ("prepare", "score", "select"):
        module = importlib.import_module(f"pipeline.{stage}")
        monkeypatch.setattr(module, "run", lambda r, stage=stage: calls.append(stage))

    def fake_experiment(r, quick, timings):
        calls.append(f"experiment quick={quick}")
        timings["finetune rsft"] = 60.0
        experiment.record_timings(r, quick, timings)  # as the real one does at its end
        return {"ok": True}

    monkeypatch.setattr(experiment, "run", fake_experiment)
    assert experiment.run_all(recipe, quick=True) == {"ok": True}
    assert calls == ["prepare", "score", "select", "experiment quick=True"]
    saved = json.loads((recipe.root / "report" / "timings.json").read_text())
    assert saved["quick"] is True
    assert [s["stage"] for s in saved["stages"]] == ["prepare", "score", "select", "finetune rsft"]
    host = saved["machine"]  # what the times depend on
    assert host["cores"] == len(os.sched_getaffinity(0)) and host["cpu"]
    assert host["native_bf16"] == resources.native_bf16("cpu")
    printed = capsys.readouterr().out
    assert "finetune rsft" in printed and "1.0 min" in printed and "total" in printed
    assert f"on {host['cores']} cores, {host['cpu']}" in printed


def test_a_second_reading_reads_every_system_again_under_its_own_name(write_recipe, monkeypatch):
    import pipeline.evaluate

    calls = []
    monkeypatch.setattr(
        pipeline.evaluate,
        "run",
        lambda r, model=None, name=None: calls.append((r.model.layout, name)),
    )
    recipe = load_recipe(write_recipe({"experiment": {"second_layout": "packed"}}))
    reader = replace(recipe, model=experiment.eval_model(recipe))
    experiment.read_all(reader, None, "pretrained")
    experiment.read_all(reader, "data/x/finetune/rsft/model", "rsft")
    assert calls == [
        ("standard", None),
        ("packed", "pretrained@packed"),
        ("standard", "rsft"),
        ("packed", "rsft@packed"),
    ]
    with pytest.raises(RecipeError, match="second_layout"):
        load_recipe(write_recipe({"experiment": {"second_layout": "standard"}}))
