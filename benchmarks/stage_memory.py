"""Peak resident memory of each stage on the demo recipe, each stage in a fresh process.

Every stage runs as ``python -m pipeline STAGE recipes/demo.yaml`` in its own process (imports
and model included), on a temporary data folder that links to the demo's data read-only, so
nothing under data/demo changes. Where the whole demo would take too long here, the stage runs
on a slice of it, and the table says which:

  prepare   every set of the demo recipe with each part's count scaled by --prepare-fraction
            (and the asterisk sets limited alike), from scratch: synthesis, noise, manifests
  score     the first --score-utterances of the demo's pool (one shard: the stage holds one
            shard at a time) and its target sample, the demo's score settings
  select    the whole demo: pool and target embeddings as the demo's score stage wrote them
  finetune  --finetune-steps steps of the demo's finetune settings on its rsft subset
  evaluate  the first --evaluate-utterances of each demo test set (evaluate.limit)

Peak RSS of the stage's process tree is read by the parent from wait4 (ru_maxrss: the largest
single process, workers included). The stage's own record (``pipeline.resources``, in its
done.json / summary.json / train_log.json / wer.json) is shown beside it. The
records that the demo's last full runs left in data/demo are shown where they exist.

    python benchmarks/stage_memory.py [--stages prepare score ...] [--json OUT]
    python benchmarks/stage_memory.py --quick
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness
import yaml
from harness import RECIPE, REPO, add_arguments, command_line, manifest_path, need, setup

STAGES = ("prepare", "score", "select", "finetune", "evaluate")


def scaled_recipe(path: Path, data_dir: Path, fraction: float) -> Path:
    """recipes/demo.yaml with every synthesised part's count (at least 1) and the asterisk
    sets' size scaled by ``fraction``, writing into ``data_dir``."""
    recipe = yaml.safe_load(RECIPE.read_text())
    recipe["data_dir"] = str(data_dir)
    # make demo's stages: its quick arms take no generated data (experiment.py leaves the
    # generators' sets out of make demo as well)
    select = recipe.get("select", {})
    only_generators = set(select.pop("pseudo_sets", [])) - {select.get("target", "target")}
    select.pop("augment_set", None)
    select.pop("pseudo_labels", None)
    recipe["prepare"]["sets"] = [
        s
        for s in recipe["prepare"]["sets"]
        if s["source"]["kind"] != "augment" and s["name"] not in only_generators
    ]
    for set_cfg in recipe["prepare"]["sets"]:
        source = set_cfg["source"]
        for part in source.get("parts", []):
            part["count"] = max(1, math.ceil(part["count"] * fraction))
        if source["kind"] == "asterisk":
            source["limit"] = max(1, math.ceil(280 * fraction))  # about 280 prompts per part
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def link(data_dir: Path, data_root: Path, *parts: str) -> Path:
    """``data_dir`` whose ``parts`` (stage folders) link to the demo's, read-only."""
    for part in parts:
        (data_dir / part).parent.mkdir(parents=True, exist_ok=True)
        (data_dir / part).symlink_to(need(data_root / part, part.split("/")[0]).resolve())
    return data_dir


def slice_manifests(data_dir: Path, data_root: Path, sizes: dict[str, int]) -> Path:
    """``data_dir`` holding the first rows of the demo's manifests (audio stays where it is)."""
    from pipeline import manifest

    for name, rows in sizes.items():
        frame = manifest.read(manifest_path(data_root, name)).head(rows)
        manifest.write(frame, data_dir / "prepare" / "manifests" / f"{name}.parquet")
    return data_dir


def run_stage(stage: str, recipe: Path, data_dir: Path, log: Path, *overrides: str) -> dict:
    """Run one stage in a fresh process; its wall time and the peak RSS wait4 reports."""
    command = [sys.executable, "-m", "pipeline", stage, str(recipe), "-q"]
    command += ["--set", f"data_dir={data_dir}"]
    for item in overrides:
        command += ["--set", item]
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        sys.exit(f"{stage} failed ({child.returncode}): " + " | ".join(tail))
    return {
        "wall_s": time.perf_counter() - start,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
        "command": " ".join(["python", *command[1:]]),
    }


def recorded(files: list[Path]) -> dict | None:
    """The largest peak a stage recorded in ``files`` (one per set it built), or None."""
    from pipeline.fsio import read_json

    peaks = [read_json(f) for f in files if f.is_file()]
    peaks = [p for p in peaks if isinstance(p, dict) and "peak_rss_mib" in p]
    if not peaks:
        return None
    return {
        "peak_rss_mib": max(p["peak_rss_mib"] for p in peaks),
        "children_peak_rss_mib": max(p.get("children_peak_rss_mib", 0.0) for p in peaks),
    }


def records(root: Path, stage: str) -> list[Path]:
    """Where ``stage`` writes its peak RSS under a data folder."""
    return {
        "prepare": sorted((root / "prepare" / "manifests").glob("*.done.json")),
        "score": sorted((root / "score").glob("*/done.json")),
        "select": [root / "select" / "summary.json"],
        "finetune": [root / "finetune" / run / "train_log.json" for run in ("rsft", "random")],
        "evaluate": sorted((root / "evaluate").glob("*/*/wer.json")),
    }[stage]


def measure(stage: str, args: argparse.Namespace, work: Path) -> dict:
    """Set up the stage's input under ``work``, run it, and describe what it ran on."""
    from pipeline import manifest
    from pipeline.fsio import read_json

    data_dir, recipe, overrides = work / f"{stage}-data", RECIPE, []
    root = args.data_root
    if stage == "prepare":
        recipe = scaled_recipe(work / "prepare.yaml", data_dir, args.prepare_fraction)
        input_ = f"every demo set, counts x {args.prepare_fraction:g}"
    elif stage == "score":
        pool = len(manifest.read(manifest_path(root, "pool")))
        n = min(args.score_utterances, pool)
        slice_manifests(data_dir, root, {"pool": n, "target": min(100, n)})
        input_ = f"pool {n} of {pool}, target {min(100, n)}"
    elif stage == "select":
        link(data_dir, root, "prepare", "score")
        input_ = "the whole demo"
    elif stage == "finetune":
        link(data_dir, root, "prepare", "select")
        overrides = [f"finetune.steps={args.finetune_steps}"]
        input_ = f"{args.finetune_steps} step(s), the demo's batches"
    else:
        link(data_dir, root, "prepare")
        overrides = [f"evaluate.limit={args.evaluate_utterances}"]
        input_ = f"{args.evaluate_utterances} per test set"
    if stage != "prepare":  # make demo's stages: no generated data (see scaled_recipe)
        overrides += ["select.augment_set=null", "select.pseudo_labels=false"]
    if args.threads and stage in ("score", "finetune", "evaluate"):
        overrides.append(f"model.threads={args.threads}")
    row = run_stage(stage, recipe, data_dir, work / f"{stage}.log", *overrides)
    if stage == "prepare":
        summary = read_json(need(data_dir / "prepare" / "summary.json", "prepare"))
        input_ += f" ({summary['utterances']} utterances)"
    row["input"] = input_
    row["recorded"] = recorded(records(data_dir, stage))
    row["recorded_full_demo"] = recorded(records(root, stage))
    return row


# what each stage reads from the demo (prepare reads nothing: it synthesises its own)
INPUTS = {
    "score": ["prepare/manifests/pool.parquet", "prepare/manifests/target.parquet"],
    "select": ["prepare/manifests", "score/pool/done.json", "score/target/done.json"],
    "finetune": ["prepare/manifests", "select/rsft/subset.parquet"],
    "evaluate": ["prepare/manifests"],
}


def run(args: argparse.Namespace) -> dict:
    for stage in args.stages:  # before anything runs
        for path in INPUTS.get(stage, []):
            need(args.data_root / path, path.split("/")[0])
    stages = {}
    with tempfile.TemporaryDirectory(prefix="rsft-memory-") as tmp:
        for stage in args.stages:
            stages[stage] = measure(stage, args, Path(tmp))
            print(f"{stage}: {stages[stage]['peak_rss_mib']:.0f} MiB", flush=True)
    return {"settings": {"command": command_line()}, "stages": stages}


def print_table(figures: dict) -> None:
    print(
        f"\n{'stage':>9} {'peak RSS MiB':>12} {'stage record':>12} {'workers':>7} "
        f"{'full demo':>9} {'wall s':>7}  input"
    )
    for stage, row in figures["stages"].items():
        own, full = row["recorded"] or {}, row["recorded_full_demo"] or {}
        workers = own.get("children_peak_rss_mib")
        print(
            f"{stage:>9} {row['peak_rss_mib']:12.0f} {own.get('peak_rss_mib', math.nan):12.0f} "
            f"{workers if workers else math.nan:7.0f} {full.get('peak_rss_mib', math.nan):9.0f} "
            f"{row['wall_s']:7.1f}  {row['input']}"
        )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--prepare-fraction", type=float, default=0.03, help="of each count")
    parser.add_argument("--score-utterances", type=int, default=512, help="pool rows scored")
    parser.add_argument("--finetune-steps", type=int, default=2, help="optimizer steps")
    parser.add_argument("--evaluate-utterances", type=int, default=16, help="per test set")
    add_arguments(parser, "prepare 0.2%%, score 4, finetune 1 step, evaluate 2 per set")
    quick = {"prepare_fraction": 0.002, "score_utterances": 4, "finetune_steps": 1}
    return setup(parser.parse_args(argv), quick | {"evaluate_utterances": 2})


def main(argv=None) -> None:
    harness.main(parse_args, run, print_table, argv)


if __name__ == "__main__":
    main()
