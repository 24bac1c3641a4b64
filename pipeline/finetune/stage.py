"""Stage 4, finetune: train the recipe's model on one selected subset with Accelerate.

Writes ``<data_dir>/finetune/<run>/`` (see ``pipeline.finetune.checkpoints``): checkpoints every
``save_every`` steps (``--resume`` continues from the last), the best dev model, the saved
model and processor, a model card, the training log and TensorBoard events.

The loop has the shape of Accelerate's examples (``get_dataloaders``, ``training_function``)
and runs unchanged under ``accelerate launch`` on several processes. Data order depends only
on the seed and the step, so a killed run resumed from its checkpoint ends at the same weights.
Forgetting control (replay, distillation, L2-SP, LoRA, a guard set) is in
``pipeline.forgetting``, ``pipeline.batches`` and ``pipeline.validation``.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from pipeline import __version__, manifest, resources
from pipeline.config import FinetuneConfig, Recipe
from pipeline.errors import UserError
from pipeline.evaluate.stage import MODELS_DIR
from pipeline.finetune import checkpoints, forgetting, validation
from pipeline.finetune.batches import Collator, EpochBatches, Utterances
from pipeline.fsio import file_sha256, fingerprint, read_json
from pipeline.models import loader
from pipeline.models.base import SpeechModel
from pipeline.resources import cpu_has_bf16
from pipeline.typed import to_dict

log = logging.getLogger(__name__)
MEL_FRAMES_PER_S = 100  # Whisper's log-mel hop is 10 ms
TRACKER_DIR = "tensorboard"  # Accelerate tracker run under finetune/<run>/


def load_subset(recipe: Recipe, subset: str) -> tuple[pd.DataFrame, Path]:
    """The subset's rows, each repeated ``count`` times (selectors that draw with replacement)."""
    path = recipe.root / "select" / subset / "subset.parquet"
    if not path.exists():
        raise UserError(f"subset {subset!r}: no manifest at {path} (run: rsft select first)")
    frame = manifest.read(path)
    if "count" in frame.columns:
        frame = frame.loc[frame.index.repeat(frame["count"].astype(int))].reset_index(drop=True)
    if frame.empty:
        raise UserError(f"subset {subset!r}: {path} has no utterances to train on")
    return frame, path


def load_pool(recipe: Recipe) -> tuple[pd.DataFrame, Path]:
    """The replay source: finetune.replay_set, else the labelled pool the subset came from."""
    name = recipe.finetune.replay_set or recipe.select.pool
    path = recipe.root / "prepare" / "manifests" / f"{name}.parquet"
    if not path.exists():
        raise UserError(
            f"finetune.replay_fraction: no manifest of replay set {name!r} at {path}"
            " (run: rsft prepare)"
        )
    return manifest.read(path), path


def get_dataloaders(
    frame: pd.DataFrame,
    pool: pd.DataFrame | None,
    model: SpeechModel,
    cfg: FinetuneConfig,
    context_s: float,
    seed: int,
) -> tuple[DataLoader, EpochBatches]:
    """The training loader (before ``accelerator.prepare``) and its seeded batch sampler."""
    pool_s = pool["duration_s"].to_numpy() if pool is not None else ()
    batches = EpochBatches(
        frame["duration_s"].to_numpy(),
        seed,
        cfg.batch_size,
        batch_seconds=cfg.batch_seconds,
        replay_fraction=cfg.replay_fraction,
        pool_durations_s=pool_s,
        # a packed window holds utterances of any length: sorting would only pair them up
        group_by_length=cfg.group_by_length and cfg.layout != "packed",
    )
    frames = (frame,) if pool is None else (frame, pool)
    loader = DataLoader(
        Utterances(*frames, narrowband_fraction=cfg.narrowband_fraction, seed=seed),
        batch_sampler=batches,
        collate_fn=Collator(
            model,
            cfg.layout,
            context_s,
            cfg.labels,
            cfg.pack_gap_s,
            cfg.packing == "first_fit",
            cfg.single_windows,
        ),
    )
    return loader, batches


def training_function(
    recipe: Recipe, subset: str, resume: bool, accelerator: Accelerator, name: str | None = None
) -> dict:
    """Train and return the log; the main process writes the model, card and log."""
    cfg = recipe.finetune
    seed = recipe.seed if cfg.seed is None else cfg.seed
    name = name or subset
    out = recipe.root / "finetune" / name
    frame, subset_path = load_subset(recipe, subset)
    pool, pool_path = load_pool(recipe) if cfg.replay_fraction > 0 else (None, None)
    model_cfg = replace(recipe.model, layout=cfg.layout)
    dev_paths = validation.manifest_paths(recipe.root, eval_names(cfg)) if cfg.eval_every else {}
    prints = [file_sha256(p) for p in [*dev_paths.values(), pool_path] if p is not None]
    key = fingerprint(
        training_settings(cfg),
        model_cfg.key(decodes=bool(cfg.eval_every)),  # validation decodes the dev sets
        *([loader.decoding_revisions()] if cfg.eval_every else []),
        file_sha256(subset_path),
        __version__,
        accelerator.mixed_precision,  # 'auto' resolves by machine
        *prints,
    )
    main = accelerator.is_main_process
    done = out / "train_log.json"
    if not resume and done.exists() and (out / "model").is_dir():
        record = read_json(done)
        if record.get("key") == key and record_mix(record) == mix(cfg):
            if main:
                log.info("Stage 4: finetune %s: up to date (%s)", name, out / "model")
            return record
        if record.get("key") == key and (remixed := _remix(recipe, out, record, accelerator)):
            return remixed
    if main:
        log.info(
            "Stage 4: finetune %s on %s (%d utterances), %d steps on %d process(es) -> %s",
            recipe.model.name,
            subset,
            len(frame),
            cfg.steps,
            accelerator.num_processes,
            out,
        )
    with accelerator.main_process_first():  # the bundled model is converted once
        wrapped = loader.load(model_cfg, MODELS_DIR)
    dev_sets = validation.load_sets(dev_paths, cfg.eval_limit) if main and dev_paths else {}
    set_seed(seed)
    model = wrapped.model.train()
    forgetting.freeze(model, cfg.train)
    if cfg.train == "lora":
        model = forgetting.add_lora(model, cfg)
    anchor = forgetting.Anchor(model, cfg, accelerator.device)
    train_loader, sampler = get_dataloaders(frame, pool, wrapped, cfg, recipe.model.context_s, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over every tensor (the default loop updates them one at a time,
    # 0.7-2.4 s against 0.15-0.2 s a step for tiny.en on 2 CPU cores)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    # stepped by hand once per optimizer step: Accelerate's wrapper would step it once per
    # process, which shortens the schedule under `accelerate launch`
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.init_trackers(TRACKER_DIR, config=_hparams(to_dict(cfg)))

    step, losses, dev = 0, [], validation.fresh_state()
    stats = {"speech_s": 0.0, "input_s": 0.0, "train_s": 0.0}
    checkpoint_dir, best_dir = out / "checkpoints", out / "best"
    found = checkpoints.last_checkpoint(checkpoint_dir) if resume else None
    if found is not None:
        progress = read_json(found / "progress.json")
        if progress.get("key") != key:
            raise UserError(f"{found}: made with other settings or data; rerun without --resume")
        accelerator.load_state(str(found))
        step, losses, dev = progress["step"], progress["losses"], progress["dev"]
        stats = progress["stats"]
        if main:
            log.info("resumed from %s", found)
    elif resume and main:
        log.info("no checkpoint in %s: starting from step 0", checkpoint_dir)
    elif main and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)  # a fresh run: stale checkpoints must not be resumed later
    if main:  # the best model so far is the checkpoint's: a later one may be on disk
        shutil.rmtree(best_dir, ignore_errors=True)
        if dev["best"] is not None:
            shutil.copytree(found / "best", best_dir)
    accelerator.wait_for_everyone()
    if step == 0 and cfg.guard_set:  # the guard's limit comes from the pretrained model
        dev = _validate(accelerator, model, wrapped, dev_sets, dev, 0, best_dir, recipe)

    batches = _batches(train_loader, sampler, step * cfg.grad_accum)
    bad_in_row = 0
    while step < cfg.steps:
        started = time.perf_counter()
        try:
            loss = _train_step(accelerator, model, wrapped, anchor, optimizer, batches, cfg, stats)
        except torch.OutOfMemoryError:
            raise UserError(_oom_hint(cfg, step + 1)) from None
        stats["train_s"] += time.perf_counter() - started
        losses.append(loss)
        bad_in_row = bad_in_row + 1 if loss is None else 0
        if bad_in_row >= cfg.max_bad_steps:
            raise UserError(
                f"finetune: loss was NaN or infinite, or no audio was readable, at {bad_in_row} "
                f"steps in a row (step {step + 1}); lower finetune.lr or check the subset's "
                "audio and text"
            )
        scheduler.step()
        step += 1
        accelerator.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
        if main and (step % 10 == 0 or step == cfg.steps):
            log.info("step %d/%d loss %s", step, cfg.steps, loss)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            dev = _validate(accelerator, model, wrapped, dev_sets, dev, step, best_dir, recipe)
            if cfg.patience and validation.evaluations_since_best(dev) >= cfg.patience:
                if main:
                    log.info(
                        "early stop at step %d: no better dev WER in %d evaluation(s) "
                        "(best: step %d)",
                        step,
                        cfg.patience,
                        dev["best"]["step"],
                    )
                break
        if step % cfg.save_every == 0 and step < cfg.steps:
            progress = {"losses": losses, "dev": dev, "stats": stats}
            checkpoints.save_checkpoint(accelerator, checkpoint_dir, step, progress, key)

    accelerator.wait_for_everyone()
    totals = accelerator.reduce(
        torch.tensor([stats["speech_s"], stats["input_s"]], device=accelerator.device), "sum"
    ).tolist()
    record = {
        "key": key,
        "steps": step,
        "losses": losses,
        "bad_steps": sum(x is None for x in losses),
        "dev_curve": dev["curve"],
        "best": dev["best"],  # {step, wer} on the first eval set; None without validation
        "guard": dev.get("guard"),  # {set, limit} with a guard set
        "speech_seconds": totals[0],  # audio trained on, every process and epoch
        "padding_fraction": 1.0 - totals[0] / totals[1] if totals[1] else 0.0,
        "train_seconds": stats["train_s"],  # training steps only: no validation or saving
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "base_model": recipe.model.name,
        "subset": subset,
        "subset_sha256": file_sha256(subset_path),
        "subset_utterances": len(frame),
        "recipe": to_dict(recipe),
        "mix": mix(cfg),
        "version": __version__,
        **resources.peak_rss(),  # of this process after training (model and imports included)
    }
    if main:
        best = best_dir if dev["best"] is not None else None
        module = accelerator.unwrap_model(model)
        trained_dir = out / "trained"
        shutil.rmtree(trained_dir, ignore_errors=True)  # an earlier training's weights
        if not is_identity(mix(cfg)):
            # the trained weights are kept, so that another mix needs no training
            if best is not None:
                best.rename(trained_dir)
            else:
                checkpoints.save_model(trained_dir, module, wrapped.processor)
            module, best = _mixed(trained_dir, model_cfg, cfg), None
        checkpoints.write_outputs(out, module, wrapped.processor, record, best)
        log.info(
            "trained on %.0f s of audio in %.0f s (%.1f audio s/s), padding %.1f%%",
            record["speech_seconds"],
            record["train_seconds"],
            record["speech_seconds"] / max(record["train_seconds"], 1e-9),
            100 * record["padding_fraction"],
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers and, last of all, the process group
    return record


ADDED_SETTINGS = {"narrowband_fraction": 0.0, "replay_set": None, "single_windows": 0}


def training_settings(cfg: FinetuneConfig) -> dict:
    """The settings that shape training (the run's key): the weight mix is applied after
    training, so it is left out. ``interpolate`` stays in at 1.0, so that runs saved before
    the decoder's own weight existed keep their key."""
    settings = to_dict(replace(cfg, interpolate=1.0))
    settings.pop("interpolate_decoder")
    # settings added later enter the key only when set, so earlier runs keep theirs
    for name, default in ADDED_SETTINGS.items():
        if settings.get(name) == default:
            settings.pop(name)
    return settings


def mix(cfg: FinetuneConfig) -> dict:
    """How the saved weights mix trained and pretrained ones (finetune.interpolate*)."""
    return {"interpolate": cfg.interpolate, "interpolate_decoder": cfg.interpolate_decoder}


def record_mix(record: dict) -> dict:
    """The mix a training log was saved with (logs before the decoder weight: its recipe's)."""
    if "mix" in record:
        return record["mix"]
    return {
        "interpolate": record["recipe"]["finetune"].get("interpolate", 1.0),
        "interpolate_decoder": None,
    }


def is_identity(m: dict) -> bool:
    return m["interpolate"] == 1.0 and m["interpolate_decoder"] in (None, 1.0)


def _mixed(trained_dir: Path, model_cfg, cfg: FinetuneConfig) -> torch.nn.Module:
    """The trained weights in ``trained_dir`` mixed with the pretrained model's."""
    trained = loader.load(replace(model_cfg, name=str(trained_dir)), MODELS_DIR).model
    pretrained = loader.load(model_cfg, MODELS_DIR).model
    mixed = forgetting.interpolate(trained, pretrained, cfg.interpolate, cfg.interpolate_decoder)
    decoder = "" if cfg.interpolate_decoder is None else f", decoder {cfg.interpolate_decoder:g}"
    log.info(
        "saved weights: %g x trained + %g x pretrained%s (%d tensors)",
        cfg.interpolate,
        1 - cfg.interpolate,
        decoder,
        mixed,
    )
    return trained


def _remix(recipe: Recipe, out: Path, record: dict, accelerator: Accelerator) -> dict | None:
    """Save the same training's weights with another mix, without training again; None
    when the trained weights were not kept (an earlier mix saved only the mixed ones)."""
    cfg = recipe.finetune
    trained_dir, final = out / "trained", out / "model"
    if not trained_dir.is_dir() and not is_identity(record_mix(record)):
        if accelerator.is_main_process:
            log.info("finetune: the trained weights of %s were not kept: training again", out)
        return None
    if accelerator.is_main_process:
        log.info("Stage 4: finetune %s: trained weights found, mixed again", out.name)
        if not trained_dir.is_dir():  # the saved model is the trained one: keep it as such
            staging = out / ".trained.tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(final, staging)
            staging.rename(trained_dir)
        model_cfg = replace(recipe.model, layout=cfg.layout)
        processor = loader.load(replace(model_cfg, name=str(trained_dir)), MODELS_DIR).processor
        module = _mixed(trained_dir, model_cfg, cfg)
        record = {**record, "recipe": to_dict(recipe), "mix": mix(cfg)}
        checkpoints.write_outputs(out, module, processor, record, None)
    accelerator.wait_for_everyone()
    return {**record, "recipe": to_dict(recipe), "mix": mix(cfg)}


def eval_names(cfg: FinetuneConfig) -> list[str]:
    """The dev sets to evaluate: eval_sets, then the guard set if it is not among them."""
    names = list(cfg.eval_sets)
    if cfg.guard_set and cfg.guard_set not in names:
        names.append(cfg.guard_set)
    return names


def _train_step(accelerator, model, wrapped, anchor, optimizer, batches, cfg, stats):
    """One optimizer step over ``grad_accum`` micro-batches; its mean loss, or None when a
    loss was NaN or infinite on any process (the step is skipped, its slot in the schedule
    used). Every process takes the same branches, or DDP would wait for the one that left."""
    total, bad, used = 0.0, False, 0
    for micro in range(cfg.grad_accum):
        batch = dict(next(batches))
        speech_s, input_s = batch.pop("speech_s", 0.0), batch.pop("input_s", 0.0)
        empty = torch.tensor(float(not batch), device=accelerator.device)
        if accelerator.reduce(empty, "max").item() > 0 or bad:
            continue  # unreadable audio somewhere: every process skips this micro-batch
        stats["speech_s"] += float(speech_s)
        stats["input_s"] += float(input_s)
        # gradients are all-reduced on the last micro-batch only
        sync = micro == cfg.grad_accum - 1
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            with _context(wrapped, batch), accelerator.autocast():
                loss, logits, mask = forgetting.forward(model, batch)
                if anchor.active:
                    loss = loss + anchor.penalty(model, batch, logits, mask)
            broken = (~torch.isfinite(loss.detach())).float()
            if accelerator.reduce(broken, "max").item() > 0:
                bad = True
                continue
            accelerator.backward(loss)
            total += loss.item() / cfg.grad_accum
            used += 1
    if bad or not used:  # NaN/inf, or no readable audio in any micro-batch
        optimizer.zero_grad()
        return None
    optimizer.step()
    optimizer.zero_grad()
    return accelerator.reduce(torch.tensor(total, device=accelerator.device), "mean").item()


def precision(setting: str, cpu: bool = False) -> str:
    """finetune.mixed_precision for Accelerate: 'auto' resolved for this machine."""
    if setting != "auto":
        return setting
    if torch.cuda.is_available() and not cpu:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "no"


def _oom_hint(cfg: FinetuneConfig, step: int) -> str:
    size = (
        f"finetune.batch_seconds (now {cfg.batch_seconds})"
        if cfg.batch_seconds
        else f"finetune.batch_size (now {cfg.batch_size})"
    )
    return (
        f"finetune: out of GPU memory at step {step}; lower {size} and raise finetune.grad_accum "
        f"(now {cfg.grad_accum}) to keep the same batch, or set finetune.mixed_precision=bf16"
    )


def _hparams(cfg: dict) -> dict:
    """The config as TensorBoard hparams take it: numbers, strings and booleans only."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in cfg.items()}


def _context(wrapped: SpeechModel, batch: dict[str, torch.Tensor]):
    """The 'short' layout's cut encoder context, read off the features' length."""
    if "input_features" not in batch:
        return contextlib.nullcontext()
    return wrapped.context(batch["input_features"].shape[-1] / MEL_FRAMES_PER_S)


def _batches(train_loader, sampler: EpochBatches, start: int):
    """Micro-batches forever from position ``start``: epoch after epoch, the same order.

    Epochs may differ in length (batches by duration), so they are counted one by one."""
    epoch, skip = 0, start
    while True:
        sampler.use_epoch(epoch)
        if skip >= len(train_loader):
            epoch, skip = epoch + 1, skip - len(train_loader)
            continue
        loader = skip_first_batches(train_loader, skip) if skip else train_loader
        yield from loader
        epoch, skip = epoch + 1, 0


def _validate(accelerator, model, wrapped, dev_sets, dev, step, best_dir, recipe) -> dict:
    """Dev WER on the main process (the others wait); a new best is saved to ``best_dir``.

    Returns the updated dev state, the same on every process, so all agree on stopping.
    """
    cfg = recipe.finetune
    if accelerator.is_main_process:
        module = accelerator.unwrap_model(model)
        view = validation.reader(wrapped, forgetting.inner(module))
        wers = {
            name: validation.dev_wer(view, waves, texts, recipe.model.batch_size)
            for name, (waves, texts) in dev_sets.items()
        }
        module.train()
        improved = validation.record(dev, step, wers, cfg.guard_set, cfg.guard_tolerance)
        if improved:
            checkpoints.save_model(best_dir, module, wrapped.processor)
        shown = ", ".join(f"{name} {wer:.4f}" for name, wer in wers.items())
        log.info("step %d dev WER %s%s", step, shown, " (best so far)" if improved else "")
        accelerator.log({f"dev/{name}_wer": wer for name, wer in wers.items()}, step=step)
    accelerator.wait_for_everyone()
    return broadcast_object_list([dev])[0]


def run(
    recipe: Recipe, subset: str | None = None, resume: bool = False, name: str | None = None
) -> dict:
    """Fine-tune on ``subset`` (default: finetune.subset) into finetune/<name> (default: the
    subset's name); under accelerate launch, too."""
    cfg = recipe.finetune
    subset = subset or cfg.subset
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=precision(cfg.mixed_precision, cfg.cpu),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_dir=str(recipe.root / "finetune" / (name or subset)),
    )
    return training_function(recipe, subset, resume, accelerator, name)
