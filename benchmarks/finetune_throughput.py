"""Fine-tuning throughput: the finetune stage beside the standard Hugging Face Whisper recipe.

Both recipes train the same model (default: the bundled Whisper tiny.en) on the same slice of
the demo's ``rsft`` subset (a fixed sample of N utterances, each once) for the same number of
epochs, with the recipe's learning rate, batch size, warmup and seed, on this machine's CPU:

  standard  ``transformers.Seq2SeqTrainer`` as in the Hugging Face Whisper fine-tuning blog:
            log-mel features of every utterance padded to 30 s (WhisperFeatureExtractor
            defaults), computed by ``datasets.Dataset.map``; labels from the tokenizer;
            DataCollatorSpeechSeq2SeqWithPadding; fp32; no evaluation, no checkpoints
  rsft      ``pipeline.finetune.run`` on recipes/demo.yaml (what ``rsft finetune`` does), its
            data_dir a temporary folder holding the slice and links to the prepared
            manifests, set to the standard recipe's problem ("matched"): batches of its mean
            audio per optimizer step (the same number of updates), every weight trained, no
            distillation, L2 or replay, fp32. Packed first-fit windows, cached features and
            its loop stay. ``--recipe-settings`` keeps the recipe's own finetune settings
            instead (the demo's 52 s batches and its frozen decoder language model: fewer
            updates of fewer weights)

Timed, wall clock: standard = ``trainer.train()`` alone (its features were computed before,
once, by the map, which is timed and shown apart: the blog pays it once for all epochs);
rsft = the whole ``finetune.run()`` call minus the time spent inside
``pipeline.models.loader.load``, so it includes reading audio, features, the training steps,
any checkpoints the recipe's ``save_every`` asks for, and writing the model, card and log.
This leans toward the standard recipe. Model loading and imports are outside both.
Throughput = seconds of audio trained on (duration_s of the slice x epochs; packing gaps and
30 s padding do not count) / timed seconds; CPU time (user + system) is given beside it.

After training, each model decodes the first ``--dev`` utterances of dev_target by id with the
evaluate stage's code (greedy, the recipe's model options), once per ``--dev-layouts`` entry:
'standard' (each utterance in its own padded 30 s window, the layout the standard recipe trains
on) and 'packed' (one accent and noise condition's utterances together in packed 30 s windows,
the transcript cut by alignment: how the evaluate stage reads synthetic sets, and the layout the
product trains on). The first layout's gap is the verdict's; both are printed.

Each recipe runs in its own process, so its peak RSS (ru_maxrss at the end of
training, imports and model included) is its own. The machine is shared: absolute times are
noisy, which is why both run in one script, one after the other.

    python benchmarks/finetune_throughput.py [--utterances 128] [--epochs 2] [--json OUT]
    python benchmarks/finetune_throughput.py --recipe-settings  # the demo's finetune settings
    python benchmarks/finetune_throughput.py --quick        # a small smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# torch, transformers and the stages are imported in the child processes only
import numpy as np  # noqa: E402
from harness import code_version  # noqa: E402

from pipeline import manifest, metrics  # noqa: E402
from pipeline.config import load_recipe as read_recipe  # noqa: E402

RECIPE = REPO / "recipes" / "demo.yaml"
DATA_ROOT = REPO / "data" / "demo"
SUBSET = "rsft"
DEV_SET = "dev_target"
RECIPES = ("standard", "rsft")
TARGET_RATIO = 5.0  # rsft must train at least this many times the standard recipe's audio/s


# -- the shared inputs ------------------------------------------------------------------------


def training_slice(data_root: Path, utterances: int):
    """A fixed sample of the subset (seed 0; ids encode the pool part, so the first N by id
    would all be one accent), each row once (no ``count`` repeats), in id order."""
    frame = manifest.read(data_root / "select" / SUBSET / "subset.parquet")
    frame = frame.sample(n=min(utterances, len(frame)), random_state=0).sort_values("id")
    return frame.drop(columns=["count"], errors="ignore").reset_index(drop=True)


def make_data_dir(work: Path, data_root: Path, frame) -> Path:
    """A data_dir for the finetune stage: the slice as its subset, the prepared manifests linked."""
    data_dir = work / "data"
    (data_dir / "prepare").mkdir(parents=True)
    (data_dir / "prepare" / "manifests").symlink_to((data_root / "prepare" / "manifests").resolve())
    manifest.write(frame, data_dir / "select" / SUBSET / "subset.parquet")
    return data_dir


def load_recipe(data_dir: Path, model: str | None, steps: int, batch_size: int | None, extra=()):
    """recipes/demo.yaml with its defaults; only data_dir, steps (and what was asked) changed.
    ``extra`` overrides (``--set``) apply to the product's run only."""
    overrides = [f"data_dir={data_dir}", f"finetune.steps={steps}", *extra]
    overrides += [f"finetune.batch_size={batch_size}"] if batch_size else []
    overrides += [f"model.name={model}"] if model else []
    return read_recipe(RECIPE, overrides)


# -- one recipe per process -------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU time (user + system, every thread of this process) is
    less sensitive than wall time to other work on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


def train_rsft(recipe) -> dict:
    """``finetune.run`` timed whole, minus the model loading it does through the loader."""
    from pipeline.finetune import stage as finetune
    from pipeline.models import loader

    loading = []
    real_load = loader.load

    def timed_load(*args, **kwargs):
        start = clock()
        try:
            return real_load(*args, **kwargs)
        finally:
            loading.append(since(start))

    loader.load = timed_load  # only to leave model loading out of the timed seconds
    try:
        start = clock()
        record = finetune.run(recipe)
        wall_s, cpu_s = since(start)
    finally:
        loader.load = real_load
    losses = [x for x in record["losses"] if x is not None]
    return {
        "timed_s": wall_s - sum(w for w, _ in loading),
        "cpu_s": cpu_s - sum(c for _, c in loading),
        "load_s": sum(w for w, _ in loading),
        "steps": record["steps"],
        "losses": losses,
        "audio_s": record["speech_seconds"],  # what the product counted it trained on
        "padding_fraction": record["padding_fraction"],
        "model_dir": str(recipe.root / "finetune" / SUBSET / "model"),
    }


def rsft_steps(recipe, epochs: int) -> int:
    """Steps for ``epochs`` passes over the subset with the recipe's own batches (a duration
    budget makes batches, and so steps per epoch, differ from the standard recipe's)."""
    from pipeline import manifest
    from pipeline.finetune.batches import EpochBatches

    cfg = recipe.finetune
    frame = manifest.read(recipe.root / "select" / SUBSET / "subset.parquet")
    seed = recipe.seed if cfg.seed is None else cfg.seed
    batches = EpochBatches(frame["duration_s"].to_numpy(), seed, cfg.batch_size, cfg.batch_seconds)
    total = 0
    for epoch in range(epochs):
        batches.use_epoch(epoch)
        total += len(batches)
    return math.ceil(total / cfg.grad_accum)


def train_standard(recipe, spec: dict, work: Path) -> dict:
    """The Hugging Face blog's recipe with the recipe's lr, batch size, warmup and seed."""
    import datasets
    import transformers

    from pipeline import audio
    from pipeline.models import loader

    start = time.perf_counter()
    wrapped = loader.load(recipe.model, recipe.tree.models)
    load_s = time.perf_counter() - start
    model, processor = wrapped.model, wrapped.processor
    cfg = recipe.finetune

    def prepare_dataset(example):
        wave = audio.read(example["audio_path"])[0]  # 16 kHz mono, as datasets' Audio gives
        example["input_features"] = processor.feature_extractor(
            wave, sampling_rate=16000
        ).input_features[0]
        example["labels"] = processor.tokenizer(example["text"]).input_ids
        return example

    frame = manifest.read(recipe.root / "select" / SUBSET / "subset.parquet")  # rsft's input
    table = datasets.Dataset.from_dict(
        {"audio_path": frame["audio_path"].tolist(), "text": frame["text"].tolist()}
    )
    args = transformers.Seq2SeqTrainingArguments(
        output_dir=str(work / "standard"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        num_train_epochs=spec["epochs"],
        max_steps=spec["max_steps"],  # -1: epochs decide
        seed=recipe.seed if cfg.seed is None else cfg.seed,
        use_cpu=True,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to=[],
        disable_tqdm=True,
    )
    start = clock()
    train_set = table.map(prepare_dataset, remove_columns=table.column_names)
    features_s, features_cpu_s = since(start)
    trainer = transformers.Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        data_collator=DataCollatorSpeechSeq2SeqWithPadding(
            processor, model.config.decoder_start_token_id
        ),
        processing_class=processor.feature_extractor,
    )
    trainer.remove_callback(transformers.PrinterCallback)
    start = clock()
    trainer.train()
    train_s, train_cpu_s = since(start)
    model_dir = work / "standard" / "model"
    trainer.save_model(str(model_dir))
    processor.save_pretrained(str(model_dir))
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        "timed_s": train_s,
        "cpu_s": train_cpu_s,
        "features_s": features_s,
        "features_cpu_s": features_cpu_s,
        "train_s": train_s,
        "load_s": load_s,
        "steps": trainer.state.global_step,
        "losses": losses,
        "model_dir": str(model_dir),
    }


class DataCollatorSpeechSeq2SeqWithPadding:
    """The blog's collator: pad features and labels, -100 on label padding, no leading SOT."""

    def __init__(self, processor, decoder_start_token_id: int):
        self.processor = processor
        self.decoder_start_token_id = decoder_start_token_id

    def __call__(self, features):
        inputs = [{"input_features": f["input_features"]} for f in features]
        batch = self.processor.feature_extractor.pad(inputs, return_tensors="pt")
        labels_batch = self.processor.tokenizer.pad(
            [{"input_ids": f["labels"]} for f in features], return_tensors="pt"
        )
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        # the model prepends the start token itself when it shifts the labels right
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def dev_wer(recipe, model_name: str, data_root: Path, dev: int, layouts, out: Path) -> dict:
    """WER of ``model_name`` on the first ``dev`` dev_target utterances by id, read in each of
    ``layouts`` by the evaluate stage's own code (``evaluate_set``: 'standard' decodes each
    utterance in its own 30 s window; 'packed' decodes the utterances of one accent and noise
    condition together in packed windows and cuts the transcript by alignment, as the stage
    reads synthetic sets), with the per-utterance errors (for a paired bootstrap) and the
    decoding seconds. The first layout's WER is ``dev_wer``."""
    import pandas as pd

    from pipeline.evaluate import stage as evaluate
    from pipeline.models import loader

    model = loader.load(replace(recipe.model, name=model_name), recipe.tree.models)
    frame = manifest.read(data_root / "prepare" / "manifests" / f"{DEV_SET}.parquet")
    frame = frame.sort_values("id", kind="stable").head(dev).reset_index(drop=True)
    settings = replace(recipe, evaluate=replace(recipe.evaluate, limit=None))
    by_layout = {}
    for layout in layouts:
        reader = loader.with_layout(model, layout)
        result = evaluate.evaluate_set(
            reader, recipe.model.batch_size, frame, settings, out / layout
        )
        per = pd.read_parquet(out / layout / "utterances.parquet").set_index("id")
        if len(per) < len(frame):  # the paired bootstrap needs every utterance on both sides
            raise SystemExit(f"{DEV_SET}: unreadable utterances {sorted(result['rejects'])}")
        per = per.loc[frame["id"]]
        by_layout[layout] = {
            "wer": result["wer"],
            "decode_s": result["decode_s"],
            "errors": per["errors"].tolist(),
            "ref_words": per["ref_words"].tolist(),
        }
    first = by_layout[layouts[0]]
    return {
        "dev_wer": first["wer"],
        "dev_decode_s": first["decode_s"],
        "dev_layouts": by_layout,
    }


def child(which: str, spec: dict) -> dict:
    """Train one recipe (or, for 'pretrained', train nothing) and decode the dev slice."""
    work, data_root = Path(spec["work"]), Path(spec["data_root"])
    extra = spec["set"] if which == "rsft" else []
    recipe = load_recipe(
        Path(spec["data_dir"]), spec["model"], spec["steps"], spec["batch_size"], extra
    )
    load_before = os.getloadavg()[0]
    if which == "rsft" and recipe.finetune.batch_seconds and spec["max_steps"] < 0:
        steps = rsft_steps(recipe, spec["epochs"])
        recipe = load_recipe(
            Path(spec["data_dir"]), spec["model"], steps, spec["batch_size"], extra
        )
    if which == "pretrained":
        out = {"model_dir": recipe.model.name}
    else:
        trained = train_rsft(recipe) if which == "rsft" else train_standard(recipe, spec, work)
        out = {**trained, "peak_rss_mib": peak_rss_mib()}
    out["load_avg_1min"] = [load_before, os.getloadavg()[0]]
    layouts, dev_out = spec["dev_layouts"], work / "dev" / which
    return {**out, **dev_wer(recipe, out["model_dir"], data_root, spec["dev"], layouts, dev_out)}


# -- the parent: inputs, both children, the table ---------------------------------------------


def run_child(which: str, spec: dict, work: Path) -> dict:
    result = work / f"{which}.json"
    command = [sys.executable, __file__, "--child", which, "--spec", json.dumps(spec)]
    command += ["--child-out", str(result)]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads(result.read_text())


def summarise(rows: dict, audio_s: float) -> dict:
    """Throughputs per recipe, then rsft over standard (wall and CPU time) and the WER gap."""
    for row in rows.values():
        if "timed_s" in row:
            seconds = row.get("audio_s", audio_s)  # the product counts its own
            row["audio_s_per_s"] = seconds / row["timed_s"]
            row["audio_s_per_cpu_s"] = seconds / row["cpu_s"]
            row["s_per_step"] = row["timed_s"] / max(1, row["steps"])
            tail = row["losses"][-5:]
            row["final_loss"] = sum(tail) / len(tail) if tail else math.nan
    ours, std = rows["rsft"], rows["standard"]
    with_features = audio_s / (std["timed_s"] + std["features_s"])
    by_layout = {}
    for layout, a in std["dev_layouts"].items():
        b = ours["dev_layouts"][layout]
        paired = metrics.paired_bootstrap(
            a["errors"], b["errors"], a["ref_words"], np.random.default_rng(0)
        )
        by_layout[layout] = {
            "delta": b["wer"] - a["wer"],
            "delta_95ci": [paired["low"], paired["high"]],
            "p": paired["p_value"],
        }
    first = next(iter(by_layout.values()))
    return {
        "ratio": ours["audio_s_per_s"] / std["audio_s_per_s"],
        "ratio_with_standard_features": ours["audio_s_per_s"] / with_features,
        "ratio_cpu": ours["audio_s_per_cpu_s"] / std["audio_s_per_cpu_s"],
        "target_ratio": TARGET_RATIO,
        "dev_wer_delta": first["delta"],
        "dev_wer_delta_95ci": first["delta_95ci"],
        "dev_wer_delta_p": first["p"],
        "dev_by_layout": by_layout,
    }


def print_table(settings: dict, rows: dict, verdict: dict) -> None:
    s = settings
    print(
        f"\n{s['utterances']} utterances ({s['slice_audio_s']:.0f} s of audio) x "
        f"{s['epochs']:g} epoch(s) = {s['steps']} steps of batch {s['batch_size']}, lr "
        f"{s['lr']:g}, warmup {s['warmup_steps']}, rsft layout {s['layout']}; {s['model']}; "
        f"dev WER on the first {s['dev']} of {DEV_SET}\nrsft: {s['rsft_settings']} settings "
        f"({' '.join(s['rsft_overrides']) or 'no overrides'})"
    )
    print(
        f"{'recipe':>10} {'timed s':>8} {'s/step':>7} {'audio s/s':>10} {'per CPU s':>10} "
        f"{'final loss':>10} {'dev WER %':>9} {'peak RSS MiB':>12} {'untimed load s':>14}"
    )
    for name in ("standard", "rsft", "pretrained"):
        row = rows.get(name)
        if row is None:
            continue
        wer = f"{100 * row['dev_wer']:9.1f}"
        if "timed_s" not in row:
            print(f"{name:>10} {'':>8} {'':>7} {'':>10} {'':>10} {'':>10} {wer}  (not trained)")
            continue
        print(
            f"{name:>10} {row['timed_s']:8.1f} {row['s_per_step']:7.2f} "
            f"{row['audio_s_per_s']:10.2f} {row['audio_s_per_cpu_s']:10.2f} "
            f"{row['final_loss']:10.3f} {wer} {row['peak_rss_mib']:12.0f} {row['load_s']:14.1f}"
        )
    std, load = rows["standard"], {n: rows[n]["load_avg_1min"] for n in RECIPES}
    low, high = verdict["dev_wer_delta_95ci"]
    print(
        f"\nrsft / standard, audio seconds per second: {verdict['ratio']:.2f}x wall clock (target "
        f"{TARGET_RATIO:g}x), "
        f"{verdict['ratio_cpu']:.2f}x CPU time; dev WER {100 * rows['rsft']['dev_wer']:.1f} vs "
        f"{100 * std['dev_wer']:.1f}: {100 * verdict['dev_wer_delta']:+.1f} points [95% CI "
        f"{100 * low:+.1f}, {100 * high:+.1f}; paired bootstrap p {verdict['dev_wer_delta_p']:.2f}"
        f"] in the {s['dev_layouts'][0]} layout\n"
        f"standard: trainer.train {std['train_s']:.1f} s; its features, before it, "
        f"{std['features_s']:.1f} s (counting them: {verdict['ratio_with_standard_features']:.2f}x)"
        "\nload average (1 min) before/after training: "
        + ", ".join(f"{n} {a:.1f}/{b:.1f}" for n, (a, b) in load.items())
        + f"; whole script {s['wall_s']:.0f} s ({s['code']})"
    )
    for layout, gap in verdict["dev_by_layout"].items():
        wers = ", ".join(
            f"{name} {100 * row['dev_layouts'][layout]['wer']:.1f}" for name, row in rows.items()
        )
        low, high = gap["delta_95ci"]
        print(
            f"dev WER %, {layout} layout: {wers}; rsft - standard {100 * gap['delta']:+.1f} "
            f"[{100 * low:+.1f}, {100 * high:+.1f}], p {gap['p']:.2f}"
        )


def schedule(frame, cfg, epochs: int | None, steps: int | None) -> tuple[int, float, float]:
    """(steps, epochs, seconds of audio trained on) for ``epochs`` or ``steps`` of batches of
    ``cfg.batch_size`` utterances; a part epoch counts at the slice's mean duration."""
    per_step = cfg.batch_size * cfg.grad_accum
    per_epoch = math.ceil(len(frame) / per_step)
    steps = steps or epochs * per_epoch
    full, part = divmod(steps, per_epoch)
    total_s = float(frame["duration_s"].sum())
    return steps, steps / per_epoch, full * total_s + part * per_step * total_s / len(frame)


def matched(frame, cfg) -> list[str]:
    """Overrides that give the product the standard recipe's training problem: its mean audio
    per optimizer step (so the same number of updates per epoch), its objective (every weight
    trains; no distillation, L2 or replay) and its fp32 arithmetic. What stays the product's
    is how it trains: packed windows, cached features, its loop."""
    per_step = cfg.batch_size * cfg.grad_accum
    seconds = float(frame["duration_s"].sum()) / math.ceil(len(frame) / per_step)
    return [
        f"finetune.batch_seconds={seconds / cfg.grad_accum:.2f}",
        "finetune.train=full",
        "finetune.distill_weight=0",
        "finetune.l2_weight=0",
        "finetune.replay_fraction=0",
        "finetune.mixed_precision=no",
    ]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--utterances", type=int, default=128, help="training slice size")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--epochs", type=int, default=None, help="epochs for both (default 2)")
    size.add_argument("--steps", type=int, help="optimizer steps for both, instead of epochs")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's finetune.batch_size")
    parser.add_argument("--dev", type=int, default=100, help="dev_target utterances to decode")
    parser.add_argument(
        "--dev-layouts",
        default="standard,packed",
        help="comma-separated Whisper layouts to decode the dev slice in; the first is the "
        "verdict's (default: standard,packed)",
    )
    parser.add_argument("--pretrained", action="store_true", help="also decode the base model")
    parser.add_argument("--model", help="default: the recipe's model (bundled:whisper-tiny.en)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="default: data/demo")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    parser.add_argument(
        "--recipe-settings",
        action="store_true",
        help="train the product with the recipe's own finetune settings (the demo's: its batch "
        "audio, its frozen decoder language model) instead of the standard recipe's matched "
        "problem",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="recipe override for the product's run only (e.g. finetune.batch_seconds=45)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 4 utterances, batch 2, 1 epoch, 4 dev"
    )
    parser.add_argument("--child", choices=(*RECIPES, "pretrained"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.utterances, args.dev = 4, 4
        args.batch_size = args.batch_size or 2
    if args.steps is None and args.epochs is None:
        args.epochs = 1 if args.quick else 2
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%X")
        args.child_out.write_text(json.dumps(child(args.child, json.loads(args.spec))))
        return
    started = time.perf_counter()
    layouts = [x.strip() for x in args.dev_layouts.split(",") if x.strip()]
    if not layouts or set(layouts) - {"standard", "short", "packed"}:
        sys.exit(f"--dev-layouts: {args.dev_layouts!r}: choose from standard, short, packed")
    data_root = args.data_root.resolve()
    subset = data_root / "select" / SUBSET / "subset.parquet"
    if not subset.exists():
        sys.exit(f"no subset at {subset}: run make prepare score select first")
    with tempfile.TemporaryDirectory(prefix="rsft-bench-") as tmp:
        work = Path(tmp)
        frame = training_slice(data_root, args.utterances)
        data_dir = make_data_dir(work, data_root, frame)
        base = load_recipe(data_dir, args.model, 1, args.batch_size)
        cfg = base.finetune
        steps, epochs, audio_s = schedule(frame, cfg, args.epochs, args.steps)
        overrides = [] if args.recipe_settings else matched(frame, cfg)
        spec = {
            "work": str(work),
            "data_root": str(data_root),
            "data_dir": str(data_dir),
            "model": args.model,
            "steps": steps,
            "batch_size": args.batch_size,
            "epochs": math.ceil(epochs),
            "max_steps": args.steps or -1,
            "dev": args.dev,
            "dev_layouts": layouts,
            "set": overrides + args.set,
        }
        rows = {}
        for which in RECIPES + (("pretrained",) if args.pretrained else ()):
            start = time.perf_counter()
            rows[which] = run_child(which, spec, work)
            rows[which]["process_s"] = time.perf_counter() - start
    settings = {
        "utterances": len(frame),
        "audio_s": audio_s,
        "slice_audio_s": float(frame["duration_s"].sum()),
        "epochs": epochs,
        "steps": steps,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "lr": cfg.lr,
        "warmup_steps": cfg.warmup_steps,
        "layout": cfg.layout,
        "model": base.model.name,
        "dev": args.dev,
        "dev_layouts": layouts,
        "rsft_settings": "the recipe's" if args.recipe_settings else "matched",
        "rsft_overrides": overrides + args.set,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "code": code_version(),
        "wall_s": time.perf_counter() - started,
    }
    verdict = summarise(rows, audio_s)
    print_table(settings, rows, verdict)
    if args.json:
        for row in rows.values():
            for key in ("losses", "model_dir"):
                row.pop(key, None)
            for figures_ in row["dev_layouts"].values():  # totals, not one per utterance
                figures_["errors"] = sum(figures_.pop("errors"))
                figures_["ref_words"] = sum(figures_.pop("ref_words"))
        figures = {"settings": settings, "recipes": rows, **verdict}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
