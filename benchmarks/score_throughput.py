"""Scoring throughput: the score stage beside a plain loop over the model, one utterance at a time.

Both compute, for the same sample of the demo's pool (same audio, same weights, one process,
one after the other), each utterance's embedding (final encoder states mean-pooled over its
own frames; the stage keeps every layer's, which one encoder pass gives) and the
teacher-forced loss of its transcript (mean NLL per token, end of text included):

  stage     ``pipeline.score.score_shard`` with recipes/demo.yaml's score settings (packed
            30 s windows, batches of ``score.batch_size``), reading its own audio; what
            ``rsft score`` runs per shard
  standard  the same function with the stage's 'standard' layout (one utterance per 30 s
            input, batched): shows what batching alone gives, and must agree with the loop
  short     the same with the encoder context cut to model.context_s (8 s): each utterance
            at position 0 as in the loop, but a context the model was not trained on
  loop      the plain way: per utterance, WhisperFeatureExtractor features padded to 30 s,
            one forward pass of WhisperForConditionalGeneration, mean of the encoder states
            over the utterance's frames, cross-entropy of the transcript's tokens

Throughput is utterances per second of wall clock (CPU seconds beside it). Agreement with
the loop: cosine of each utterance's embeddings and the correlation of the losses (a packed
window changes both a little: an utterance shares the encoder's attention with its window
mates, and its tokens follow theirs).

    python benchmarks/score_throughput.py [--utterances 64] [--layouts standard short]
                                          [--json OUT] [--profile]
    python benchmarks/score_throughput.py --quick
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import harness
import numpy as np
from harness import (
    add_arguments,
    command_line,
    demo_recipe,
    manifest_path,
    profile,
    sample,
    setup,
    timed,
)

TARGET_RATIO = 5.0  # the stage must score at least this many times the loop's utterances/s
# "the same outputs": every embedding close in direction, losses ranked and scaled alike
AGREE_COSINE, AGREE_LOSS_R = 0.99, 0.95


def plain_loop(model, processor, frame) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and losses the standard way: the processor and one forward pass per file."""
    import torch

    from pipeline import audio

    gen = model.generation_config
    prefix = [gen.decoder_start_token_id, gen.no_timestamps_token_id]
    eot = gen.eos_token_id if isinstance(gen.eos_token_id, int) else gen.eos_token_id[0]
    emb, losses = [], []
    with torch.inference_mode():
        for path, text in zip(frame["audio_path"], frame["text"], strict=True):
            wave = audio.read(path)[0]
            features = processor.feature_extractor(
                wave, sampling_rate=16000, return_tensors="pt"
            ).input_features  # padded to 30 s, the extractor's default
            # Whisper writes text after a space; the end of text is a target too
            labels = processor.tokenizer(" " + text.strip(), add_special_tokens=False).input_ids
            labels = labels + [eot]
            out = model(
                input_features=features, decoder_input_ids=torch.tensor([prefix + labels[:-1]])
            )
            frames = max(1, math.ceil(len(wave) / 16000 * 50))  # 50 encoder states per second
            emb.append(out.encoder_last_hidden_state[0, :frames].mean(0).numpy())
            logits = out.logits[0, len(prefix) - 1 :]
            losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(labels)).item())
    return np.stack(emb), np.asarray(losses, dtype=np.float32)


def agreement(emb: np.ndarray, loss: np.ndarray, ref_emb: np.ndarray, ref_loss: np.ndarray):
    """Per-utterance cosine of embeddings and the correlation of losses with the reference."""
    from scipy import stats

    a, b = emb.astype(np.float64), ref_emb.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    several = len(loss) > 2  # a correlation of two points is always +-1
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "loss_pearson": float(stats.pearsonr(loss, ref_loss)[0]) if several else math.nan,
        "loss_spearman": float(stats.spearmanr(loss, ref_loss)[0]) if several else math.nan,
        "loss_mean_abs_diff": float(np.abs(loss - ref_loss).mean()),
        "loss_mean": float(loss.mean()),
        "ref_loss_mean": float(ref_loss.mean()),
    }


def agrees(agreement: dict) -> bool:
    return (
        agreement["cosine_min"] >= AGREE_COSINE
        and not agreement["loss_pearson"] < AGREE_LOSS_R  # NaN (too few to tell) passes
    )


def run(args: argparse.Namespace) -> dict:
    import torch

    from pipeline import manifest
    from pipeline.models import loader
    from pipeline.score import stage as score

    recipe = demo_recipe(args.data_root)
    cfg = recipe.score
    frame = sample(manifest.read(manifest_path(args.data_root, args.set)), args.utterances)
    stage = loader.load(replace(recipe.model, layout=cfg.layout), recipe.tree.models)
    arms = {"stage": stage} | {name: loader.with_layout(stage, name) for name in args.layouts}

    def shard(model, rows):
        return score.score_shard(model, None, rows, cfg.batch_size, labelled=True)

    for model in arms.values():  # warm-up: first calls allocate and pick kernels
        shard(model, frame.head(2))
    plain_loop(stage.model, stage.processor, frame.head(1))

    rows = {}
    for name, model in arms.items():
        arrays, wall, cpu = timed(shard, model, frame)
        rows[name] = {"wall_s": wall, "cpu_s": cpu, "layout": model.layout}
        # the stage keeps every encoder layer; the loop's embedding is the final one's
        rows[name]["arrays"] = arrays["embeddings"].astype(np.float32)[:, -1], arrays["loss"]
    (emb, loss), wall, cpu = timed(plain_loop, stage.model, stage.processor, frame)
    rows["loop"] = {"wall_s": wall, "cpu_s": cpu, "layout": "standard, one at a time"}
    for row in rows.values():
        row["utt_per_s"] = len(frame) / row["wall_s"]
        row["utt_per_cpu_s"] = len(frame) / row["cpu_s"]
    for name in arms:
        row = rows[name]
        row["agreement_with_loop"] = agreement(*row.pop("arrays"), emb, loss)
        row["speedup"] = row["utt_per_s"] / rows["loop"]["utt_per_s"]
        row["speedup_cpu"] = row["utt_per_cpu_s"] / rows["loop"]["utt_per_cpu_s"]
    ratio = rows["stage"]["speedup"]
    figures = {
        "settings": {
            "set": args.set,
            "utterances": len(frame),
            "audio_s": float(frame["duration_s"].sum()),
            "batch_size": cfg.batch_size,
            "layout": cfg.layout,
            "model": recipe.model.name,
            "threads": torch.get_num_threads(),
            "command": command_line(),
        },
        "arms": rows,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "outputs_agree": agrees(rows["stage"]["agreement_with_loop"]),
    }
    if args.profile or ratio < TARGET_RATIO:
        figures["profile_stage"] = profile(shard, stage, frame)
    return figures


def print_table(figures: dict) -> None:
    s = figures["settings"]
    print(
        f"\n{s['utterances']} utterances of {s['set']} ({s['audio_s']:.0f} s of audio), "
        f"{s['model']}, score.batch_size {s['batch_size']}"
    )
    print(
        f"{'arm':>9} {'layout':>24} {'wall s':>7} {'utt/s':>7} {'utt/CPU s':>9} {'speedup':>8} "
        f"{'cos mean':>8} {'cos min':>7} {'loss r':>6} {'loss rho':>8}"
    )
    for name, row in figures["arms"].items():
        agree = row.get("agreement_with_loop")
        tail = (
            f"{row['speedup']:7.2f}x {agree['cosine_mean']:8.4f} {agree['cosine_min']:7.4f} "
            f"{agree['loss_pearson']:6.3f} {agree['loss_spearman']:8.3f}"
            if agree
            else f"{'1.00x':>8}"
        )
        print(
            f"{name:>9} {row['layout']:>24} {row['wall_s']:7.1f} {row['utt_per_s']:7.2f} "
            f"{row['utt_per_cpu_s']:9.2f} {tail}"
        )
    stage = figures["arms"]["stage"]
    print(
        f"\nscore stage / plain loop, utterances per second: {figures['ratio']:.2f}x wall clock "
        f"({stage['speedup_cpu']:.2f}x CPU time; target {figures['target_ratio']:g}x: "
        f"{'met' if figures['target_met'] else 'NOT met'})\nagreement with the loop: embedding "
        f"cosine mean {stage['agreement_with_loop']['cosine_mean']:.4f}, min "
        f"{stage['agreement_with_loop']['cosine_min']:.4f}; loss Pearson r "
        f"{stage['agreement_with_loop']['loss_pearson']:.3f}: "
        + ("the same outputs" if figures["outputs_agree"] else "NOT the same outputs")
        + f" (cosine >= {AGREE_COSINE}, r >= {AGREE_LOSS_R})"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=64, help="pool sample size")
    parser.add_argument("--set", default="pool", help="prepared set to sample (default: pool)")
    parser.add_argument(
        "--layouts",
        nargs="*",
        default=["standard", "short"],
        choices=["standard", "short", "packed"],
        help="other layouts timed through the stage's code (default: standard short)",
    )
    add_arguments(parser, "4 utterances", profile=True)
    return setup(parser.parse_args(argv), quick={"utterances": 4})


def main(argv=None) -> None:
    harness.main(parse_args, run, print_table, argv)


if __name__ == "__main__":
    main()
