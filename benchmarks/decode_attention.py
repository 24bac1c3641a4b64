"""Greedy decoding's step: the product's Whisper generate against transformers' as it is.

What ``model.decode_attention`` is chosen by. The same weights decode the same dev sets with
``pipeline.evaluate.evaluate_set`` in one process, the arms taking turns chunk by chunk (the
order rotating) so that a busy spell on the machine falls on all of them alike:

  stock      transformers' generate under bf16 autocast, attention by SDPA: the standard way
  weights    the decoder's linear layers holding bf16 copies of their weights while generating
             (autocast rounds the same weights at every step otherwise): the same tokens
  fp32 step  weights, and each step's single query attending in fp32 matmuls
             (``model.decode_attention: fp32``, the default) instead of the CPU SDPA kernel

Per set and arm: decoding seconds and the speed ratio against stock, the share of utterances
with the same hypothesis, WER and the paired bootstrap of the difference against stock. On a
machine without native bf16 (``model.bf16: auto`` resolves to fp32) the weights arm is the
stock one and only the attention differs.

    python benchmarks/decode_attention.py [--sets dev_target,asterisk_guard] [--json OUT]
    python benchmarks/decode_attention.py --model data/demo/finetune/rsft/model --layout packed
    python benchmarks/decode_attention.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from dataclasses import replace
from pathlib import Path

import harness
import numpy as np
import pandas as pd
from harness import add_arguments, command_line, demo_recipe, gap_text, manifest_path, setup

ARMS = ("stock", "weights", "fp32 step")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="dev_target,asterisk_guard", help="comma-separated")
    parser.add_argument("--layout", default="standard", choices=("standard", "short", "packed"))
    parser.add_argument("--gap", type=float, default=0.3, help="packed: seconds between")
    parser.add_argument("--model", help="default: the recipe's model (bundled:whisper-tiny.en)")
    parser.add_argument("--limit", type=int, help="first N utterances by id of each set")
    parser.add_argument("--chunk", type=int, default=32, help="utterances per turn")
    add_arguments(parser, "16 utterances of dev_target")
    return setup(parser.parse_args(argv), {"sets": "dev_target", "limit": 16})


def readers(recipe, layout: str) -> dict:
    """Arm name -> (reader, context that the arm decodes in)."""
    from pipeline.models import loader

    sdpa = loader.load(replace(recipe.model, decode_attention="sdpa"), recipe.tree.models)
    sdpa = loader.with_layout(sdpa, layout)
    fp32 = copy.copy(sdpa)  # the same weights
    fp32.decode_attention = "fp32"

    @contextlib.contextmanager
    def stock_weights():
        saved = sdpa._bf16_decoder_weights
        sdpa._bf16_decoder_weights = contextlib.nullcontext
        try:
            yield
        finally:
            sdpa._bf16_decoder_weights = saved

    return {
        "stock": (sdpa, stock_weights),
        "weights": (sdpa, contextlib.nullcontext),
        "fp32 step": (fp32, contextlib.nullcontext),
    }


def run(args) -> dict:
    from pipeline import manifest, metrics, resources
    from pipeline.evaluate import stage as evaluate

    overrides = [f"model.layout={args.layout}", f"model.pack_gap_s={args.gap}"]
    overrides += [f"model.name={args.model}"] * bool(args.model)
    recipe = demo_recipe(args.data_root, *overrides)
    recipe = replace(recipe, evaluate=replace(recipe.evaluate, limit=None))
    sets = {}
    with tempfile.TemporaryDirectory(prefix="rsft-attention-") as tmp:
        for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
            layout = recipe.evaluate.set_layouts.get(name, args.layout)
            arms = readers(recipe, layout)
            frame = manifest.read(manifest_path(args.data_root, name))
            frame = frame.sort_values("id", kind="stable").head(args.limit).reset_index(drop=True)
            seconds, parts = dict.fromkeys(ARMS, 0.0), {arm: [] for arm in ARMS}
            for k, lo in enumerate(range(0, len(frame), args.chunk)):
                chunk = frame.iloc[lo : lo + args.chunk].reset_index(drop=True)
                turn = ARMS[k % len(ARMS) :] + ARMS[: k % len(ARMS)]
                for arm in turn:
                    reader, context = arms[arm]
                    out = Path(tmp) / arm.replace(" ", "_") / name / f"{k:04d}"
                    with context():
                        result = evaluate.evaluate_set(
                            reader, recipe.model.batch_size, chunk, recipe, out
                        )
                    seconds[arm] += result["decode_s"]
                    parts[arm].append(pd.read_parquet(out / "utterances.parquet"))
            per = {arm: pd.concat(parts[arm]).set_index("id").loc[frame["id"]] for arm in ARMS}
            rows = {}
            for arm in ARMS:
                errors, words = per[arm]["errors"].to_numpy(), per[arm]["ref_words"].to_numpy()
                rows[arm] = {"wer": errors.sum() / words.sum(), "decode_s": seconds[arm]}
                if arm == "stock":
                    continue
                base = per["stock"]
                gap = metrics.paired_bootstrap(
                    base["errors"].to_numpy(), errors, words, np.random.default_rng(0)
                )
                same = per[arm]["hypothesis_norm"].to_numpy() == base["hypothesis_norm"].to_numpy()
                rows[arm] |= {
                    "delta": gap["delta"],
                    "delta_95ci": [gap["low"], gap["high"]],
                    "p": gap["p_value"],
                    "same_hypothesis": float(same.mean()),
                    "speed_vs_stock": seconds["stock"] / seconds[arm],
                }
            sets[name] = {"layout": layout, "utterances": len(frame), "arms": rows}
    return {
        "command": command_line(),
        "model": recipe.model.name,
        "bf16": arms["stock"][0].bf16,
        "cpu_has_bf16": resources.cpu_has_bf16(),
        "sets": sets,
    }


def print_table(figures: dict) -> None:
    print(f"{figures['model']}; bf16 decoding: {figures['bf16']}")
    print(
        f"{'set':>15} {'layout':>8} {'arm':>9} {'WER %':>6} {'decode s':>8} {'x stock':>7} "
        f"{'same hyp':>8}  WER - stock [95% CI]"
    )
    for name, s in figures["sets"].items():
        for arm, r in s["arms"].items():
            extra = f"{'1.00x':>7} {'':>8}"
            if "delta" in r:
                speed, same = r["speed_vs_stock"], 100 * r["same_hypothesis"]
                extra = f"{speed:6.2f}x {same:7.1f}%  {gap_text(r)}"
            print(
                f"{name:>15} {s['layout']:>8} {arm:>9} {100 * r['wer']:6.2f} "
                f"{r['decode_s']:8.1f} {extra}"
            )


if __name__ == "__main__":
    harness.main(parse_args, run, print_table)
