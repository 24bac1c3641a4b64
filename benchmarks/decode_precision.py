"""Inference precision: the same model decoding the same dev sets in fp32 and in bf16 autocast.

What ``model.bf16`` ('auto': bf16 where the CPU or GPU computes it natively) is chosen by. Each
arm decodes every utterance of each dev set (default: dev_target and the real asterisk_guard
prompts) with ``pipeline.evaluate.evaluate_set`` and recipes/demo.yaml's model settings, in one
process, one arm after the other, set by set:

  fp32   ``model.bf16: false``
  bf16   ``model.bf16: true`` (torch.autocast; features and the log-mel stay fp32)
  int8   (with --int8) fp32 weights of every Linear quantised to int8 at load
         (``torch.ao.quantization.quantize_dynamic``, deprecated in torch but still shipped)

Per set: WER, the paired bootstrap of each arm against fp32 (same utterances), and the speed
ratio (fp32 decoding seconds over the arm's). Real speech is read in the standard 30 s layout
as the evaluate stage reads it; synthetic sets in --layout (default: the standard layout, the
pretrained model's).

    python benchmarks/decode_precision.py [--sets dev_target,asterisk_guard] [--json OUT]
    python benchmarks/decode_precision.py --model data/demo/finetune/rsft/model --layout packed
    python benchmarks/decode_precision.py --quick
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from dataclasses import replace
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from harness import add_arguments, command_line, demo_recipe, gap_text, manifest_path, setup


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="dev_target,asterisk_guard", help="comma-separated")
    parser.add_argument("--layout", default="standard", choices=("standard", "short", "packed"))
    parser.add_argument("--model", help="default: the recipe's model (bundled:whisper-tiny.en)")
    parser.add_argument("--limit", type=int, help="first N utterances by id of each set")
    parser.add_argument("--int8", action="store_true", help="also int8 dynamic quantisation")
    add_arguments(parser, "8 utterances of dev_target")
    return setup(parser.parse_args(argv), {"sets": "dev_target", "limit": 8})


def arms(args, recipe) -> dict:
    """Arm name -> the loaded model (fp32 weights; bf16 as autocast)."""
    import torch

    from pipeline.models import loader

    fp32 = loader.load(replace(recipe.model, bf16=False), recipe.tree.models)
    out = {"fp32": fp32, "bf16": loader.load(replace(recipe.model, bf16=True), recipe.tree.models)}
    if args.int8:
        int8 = copy.copy(fp32)
        int8.model = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(fp32.model), {torch.nn.Linear}, dtype=torch.qint8
        )
        out["int8"] = int8
    return out


def run(args) -> dict:
    from pipeline import manifest, metrics, resources
    from pipeline.evaluate import stage as evaluate
    from pipeline.models import loader

    overrides = [f"model.layout={args.layout}"] + ([f"model.name={args.model}"] * bool(args.model))
    recipe = demo_recipe(args.data_root, *overrides)
    recipe = replace(recipe, evaluate=replace(recipe.evaluate, limit=None))
    models = arms(args, recipe)
    sets = {}
    with tempfile.TemporaryDirectory(prefix="rsft-precision-") as tmp:
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            frame = manifest.read(manifest_path(args.data_root, name))
            frame = frame.sort_values("id", kind="stable").head(args.limit).reset_index(drop=True)
            layout = recipe.evaluate.set_layouts.get(name, args.layout)
            rows, per = {}, {}
            for arm, model in models.items():
                out = Path(tmp) / arm / name
                reader = loader.with_layout(model, layout)
                result = evaluate.evaluate_set(reader, recipe.model.batch_size, frame, recipe, out)
                table = pd.read_parquet(out / "utterances.parquet").set_index("id")
                per[arm] = table.loc[frame["id"]]
                rows[arm] = {"wer": result["wer"], "decode_s": result["decode_s"]}
            for arm in rows:
                if arm == "fp32":
                    continue
                gap = metrics.paired_bootstrap(
                    per["fp32"]["errors"].to_numpy(),
                    per[arm]["errors"].to_numpy(),
                    per["fp32"]["ref_words"].to_numpy(),
                    np.random.default_rng(0),
                )
                rows[arm] |= {
                    "delta": gap["delta"],
                    "delta_95ci": [gap["low"], gap["high"]],
                    "p": gap["p_value"],
                    "speed_vs_fp32": rows["fp32"]["decode_s"] / rows[arm]["decode_s"],
                }
            sets[name] = {"layout": layout, "utterances": len(frame), "arms": rows}
    return {
        "command": command_line(),
        "model": recipe.model.name,
        "sets": sets,
        "cpu_has_bf16": resources.cpu_has_bf16(),
    }


def print_table(figures: dict) -> None:
    print(f"{figures['model']}; CPU computes bf16 natively: {figures['cpu_has_bf16']}")
    print(f"{'set':>16} {'layout':>9} {'arm':>5} {'WER %':>7} {'decode s':>9} {'vs fp32':>24}")
    for name, s in figures["sets"].items():
        for arm, r in s["arms"].items():
            gap = ""
            if "delta" in r:
                gap = f"{gap_text(r)}, {r['speed_vs_fp32']:.2f}x"
            print(
                f"{name:>16} {s['layout']:>9} {arm:>5} {100 * r['wer']:7.2f} "
                f"{r['decode_s']:9.1f}  {gap}"
            )


if __name__ == "__main__":
    harness.main(parse_args, run, print_table)
