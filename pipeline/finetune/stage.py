"""Stage 4, finetune: train the recipe's model on one selected subset with Accelerate.

Writes ``<data_dir>/finetune/<run>/`` (see ``pipeline.finetune.checkpoints``): checkpoints every
``save_every`` steps (``--resume`` continues from the last), the best dev model, the saved
model and processor, a model card, the training log and TensorBoard events.

The loop has the shape of Accelerate's examples (``get_dataloaders``, ``training_function``)
and runs unchanged under ``accelerate launch`` on several processes. Data order depends only
on the seed and the step, so a killed run resumed from its checkpoint ends at the same weights.
Forgetting control (replay, distillation, L2-SP, LoRA, a guard set) is in
``forgetting``, ``batches`` and ``validation`` beside it.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from pipeline import __version__, layout, manifest, resources
from pipeline.config import FinetuneConfig, Recipe
from pipeline.errors import UserError
from pipeline.finetune import checkpoints, forgetting, validation
from pipeline.finetune.batches import Collator, EpochBatches, Utterances
from pipeline.fsio import file_sha256, fingerprint, read_json
from pipeline.models import loader
from pipeline.models.base import SpeechModel
from pipeline.resources import cpu_has_bf16
from pipeline.typed import to_dict

log = logging.getLogger(__name__)
TRACKER_DIR = "tensorboard"  # Accelerate tracker run under finetune/<run>/


def load_subset(recipe: Recipe, subset: str) -> tuple[pd.DataFrame, Path]:
    """The subset's rows, each repeated ``count`` times (selectors that draw with replacement)."""
    path = recipe.tree.subset(subset)
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
    path = recipe.tree.manifest(name)
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


@dataclass
class Run:
    """One fine-tuning run: what it trains on, where it writes, and its key."""

    recipe: Recipe
    subset: str
    name: str
    out: Path
    frame: pd.DataFrame  # the subset's rows, repeated by count
    subset_path: Path
    pool: pd.DataFrame | None  # the replay source
    dev_paths: dict[str, Path]
    key: str

    @property
    def cfg(self) -> FinetuneConfig:
        return self.recipe.finetune

    @property
    def model_cfg(self):
        return replace(self.recipe.model, layout=self.cfg.layout)

    @property
    def seed(self) -> int:
        return self.recipe.seed if self.cfg.seed is None else self.cfg.seed


@dataclass
class Progress:
    """What a checkpoint restores besides the weights and optimizer."""

    step: int = 0
    losses: list = field(default_factory=list)
    dev: dict = field(default_factory=validation.fresh_state)
    stats: dict = field(default_factory=lambda: {"speech_s": 0.0, "input_s": 0.0, "train_s": 0.0})


def plan_run(recipe: Recipe, subset: str, name: str | None, accelerator: Accelerator) -> Run:
    """The run's inputs and its key: the settings that shape training, the model, the data."""
    cfg = recipe.finetune
    frame, subset_path = load_subset(recipe, subset)
    pool, pool_path = load_pool(recipe) if cfg.replay_fraction > 0 else (None, None)
    dev_paths = validation.manifest_paths(recipe.tree, eval_names(cfg)) if cfg.eval_every else {}
    prints = [file_sha256(p) for p in [*dev_paths.values(), pool_path] if p is not None]
    key = fingerprint(
        training_settings(cfg),
        replace(recipe.model, layout=cfg.layout).key(decodes=bool(cfg.eval_every)),
        *([loader.decoding_revisions()] if cfg.eval_every else []),  # validation decodes
        file_sha256(subset_path),
        __version__,
        accelerator.mixed_precision,  # 'auto' resolves by machine
        *prints,
    )
    name = name or layout.subset_run(subset, recipe.seed, recipe.select.budget)
    out = recipe.tree.finetune(name)
    return Run(recipe, subset, name, out, frame, subset_path, pool, dev_paths, key)


def training_function(
    recipe: Recipe, subset: str, resume: bool, accelerator: Accelerator, name: str | None = None
) -> dict:
    """Train and return the log; the main process writes the model, card and log."""
    run = plan_run(recipe, subset, name, accelerator)
    if not resume and (record := _up_to_date(run, accelerator)) is not None:
        return record
    cfg, main = run.cfg, accelerator.is_main_process
    if main:
        log.info(
            "Stage 4: finetune %s on %s (%d utterances), %d steps on %d process(es) -> %s",
            recipe.model.name,
            subset,
            len(run.frame),
            cfg.steps,
            accelerator.num_processes,
            run.out,
        )
    with accelerator.main_process_first():  # the bundled model is converted once
        wrapped = loader.load(run.model_cfg, recipe.tree.models)
    dev_sets = validation.load_sets(run.dev_paths, cfg.eval_limit) if main and run.dev_paths else {}
    set_seed(run.seed)
    model = wrapped.model.train()
    wrapped.freeze(model, cfg.train)
    if cfg.interpolate_decoder is not None:
        wrapped.is_decoder("")  # a model without a decoder fails here, before training
    if cfg.train == "lora":
        model = forgetting.add_lora(model, cfg, wrapped.lora_trains_in_full)
    anchor = forgetting.Anchor(model, cfg, accelerator.device, wrapped.training_loss)
    train_loader, sampler = get_dataloaders(
        run.frame, run.pool, wrapped, cfg, recipe.model.context_s, run.seed
    )
    params = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over every tensor (the default loop updates them one at a time, which
    # dominated a small model's step on the CPU)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    # stepped by hand once per optimizer step: Accelerate's wrapper would step it once per
    # process, which shortens the schedule under `accelerate launch`
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.init_trackers(TRACKER_DIR, config=_hparams(to_dict(cfg)))

    progress = _restore(run, accelerator, resume)
    if progress.step == 0 and cfg.guard_set:  # the guard's limit comes from the pretrained model
        progress.dev = _validate(
            accelerator, model, wrapped, dev_sets, progress.dev, 0, run.out / "best", recipe
        )
    batches = _batches(train_loader, sampler, progress.step * cfg.grad_accum)
    step_parts = (accelerator, model, wrapped, anchor, optimizer, batches, cfg)
    _train(run, progress, step_parts, scheduler, dev_sets)
    record = _record(run, progress, accelerator)
    if main:
        _save(run, progress, accelerator.unwrap_model(model), wrapped, record)
    accelerator.wait_for_everyone()
    accelerator.end_training()  # closes the trackers and, last of all, the process group
    return record


def _up_to_date(run: Run, accelerator: Accelerator) -> dict | None:
    """The saved run's log when its key and weight mix match; the same training saved with
    another mix (no training again) when only the mix changed; else None."""
    done = run.out / "train_log.json"
    if not done.exists() or not (run.out / "model").is_dir():
        return None
    record = read_json(done)
    if record.get("key") != run.key:
        return None
    if record.get("mix") == mix(run.cfg):
        if accelerator.is_main_process:
            log.info("Stage 4: finetune %s: up to date (%s)", run.name, run.out / "model")
        return record
    return _remix(run.recipe, run.out, record, accelerator)


def _restore(run: Run, accelerator: Accelerator, resume: bool) -> Progress:
    """The last checkpoint's state with --resume (it must have the run's key); otherwise a
    fresh start, with stale checkpoints removed so that a later --resume cannot pick them up."""
    main = accelerator.is_main_process
    checkpoint_dir, best_dir = run.out / "checkpoints", run.out / "best"
    found = checkpoints.last_checkpoint(checkpoint_dir) if resume else None
    progress = Progress()
    if found is not None:
        saved = read_json(found / "progress.json")
        if saved.get("key") != run.key:
            raise UserError(f"{found}: made with other settings or data; rerun without --resume")
        accelerator.load_state(str(found))
        progress = Progress(saved["step"], saved["losses"], saved["dev"], saved["stats"])
        if main:
            log.info("resumed from %s", found)
    elif resume and main:
        log.info("no checkpoint in %s: starting from step 0", checkpoint_dir)
    elif main and checkpoint_dir.exists():
        shutil.rmtree(checkpoint_dir)
    if main:  # the best model so far is the checkpoint's: a later one may be on disk
        shutil.rmtree(best_dir, ignore_errors=True)
        if progress.dev["best"] is not None:
            shutil.copytree(found / "best", best_dir)
    accelerator.wait_for_everyone()
    return progress


def _train(run: Run, progress: Progress, step_parts: tuple, scheduler, dev_sets: dict) -> None:
    """Optimizer steps up to finetune.steps (or an early stop), validating and saving
    checkpoints on the way; ``progress`` is updated in place."""
    accelerator, model, wrapped, *_ = step_parts
    cfg, main = run.cfg, accelerator.is_main_process
    bad_in_row = 0
    while progress.step < cfg.steps:
        started = time.perf_counter()
        try:
            loss = _train_step(*step_parts, progress.stats)
        except torch.OutOfMemoryError:
            raise UserError(_oom_hint(cfg, progress.step + 1)) from None
        progress.stats["train_s"] += time.perf_counter() - started
        progress.losses.append(loss)
        bad_in_row = bad_in_row + 1 if loss is None else 0
        if bad_in_row >= cfg.max_bad_steps:
            raise UserError(
                f"finetune: loss was NaN or infinite, or no audio was readable, at {bad_in_row} "
                f"steps in a row (step {progress.step + 1}); lower finetune.lr or check the "
                "subset's audio and text"
            )
        scheduler.step()
        progress.step += 1
        step = progress.step
        accelerator.log({"train/loss": loss, "train/lr": scheduler.get_last_lr()[0]}, step=step)
        if main and (step % 10 == 0 or step == cfg.steps):
            log.info("step %d/%d loss %s", step, cfg.steps, loss)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            progress.dev = _validate(
                accelerator,
                model,
                wrapped,
                dev_sets,
                progress.dev,
                step,
                run.out / "best",
                run.recipe,
            )
            if cfg.patience and validation.evaluations_since_best(progress.dev) >= cfg.patience:
                if main:
                    log.info(
                        "early stop at step %d: no better dev WER in %d evaluation(s) "
                        "(best: step %d)",
                        step,
                        cfg.patience,
                        progress.dev["best"]["step"],
                    )
                break
        if step % cfg.save_every == 0 and step < cfg.steps:
            saved = {"losses": progress.losses, "dev": progress.dev, "stats": progress.stats}
            checkpoints.save_checkpoint(accelerator, run.out / "checkpoints", step, saved, run.key)
    accelerator.wait_for_everyone()


def _record(run: Run, progress: Progress, accelerator: Accelerator) -> dict:
    """The training log (train_log.json): the key, the losses and dev curve, the data."""
    stats, dev = progress.stats, progress.dev
    totals = accelerator.reduce(
        torch.tensor([stats["speech_s"], stats["input_s"]], device=accelerator.device), "sum"
    ).tolist()
    return {
        "key": run.key,
        "steps": progress.step,
        "losses": progress.losses,
        "bad_steps": sum(x is None for x in progress.losses),
        "dev_curve": dev["curve"],
        "best": dev["best"],  # {step, wer} on the first eval set; None without validation
        "guard": dev.get("guard"),  # {set, limit} with a guard set
        "speech_seconds": totals[0],  # audio trained on, every process and epoch
        "padding_fraction": 1.0 - totals[0] / totals[1] if totals[1] else 0.0,
        "train_seconds": stats["train_s"],  # training steps only: no validation or saving
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "base_model": run.recipe.model.name,
        "subset": run.subset,
        "subset_sha256": file_sha256(run.subset_path),
        "subset_utterances": len(run.frame),
        "recipe": to_dict(run.recipe),
        "mix": mix(run.cfg),
        "version": __version__,
        **resources.peak_rss(),  # of this process after training (model and imports included)
    }


def _save(run: Run, progress: Progress, module, wrapped: SpeechModel, record: dict) -> None:
    """The model (the best on dev, else the last), mixed with the pretrained weights when
    finetune.interpolate* ask; the trained weights are then kept, so that another mix needs
    no training."""
    best = run.out / "best" if progress.dev["best"] is not None else None
    trained_dir = run.out / "trained"
    shutil.rmtree(trained_dir, ignore_errors=True)  # an earlier training's weights
    if not is_identity(mix(run.cfg)):
        if best is not None:
            best.rename(trained_dir)
        else:
            checkpoints.save_model(trained_dir, module, wrapped.processor)
        module = _mixed(trained_dir, run.model_cfg, run.cfg, run.recipe.tree.models)
        best = None
    checkpoints.write_outputs(run.out, module, wrapped.processor, record, best)
    log.info(
        "trained on %.0f s of audio in %.0f s (%.1f audio s/s), padding %.1f%%",
        record["speech_seconds"],
        record["train_seconds"],
        record["speech_seconds"] / max(record["train_seconds"], 1e-9),
        100 * record["padding_fraction"],
    )


def training_settings(cfg: FinetuneConfig) -> dict:
    """The settings that shape training (the run's key): the weight mix is applied after
    training, so it is left out."""
    settings = to_dict(cfg)
    for name in mix(cfg):
        settings.pop(name)
    return settings


def mix(cfg: FinetuneConfig) -> dict:
    """How the saved weights mix trained and pretrained ones (finetune.interpolate*)."""
    return {"interpolate": cfg.interpolate, "interpolate_decoder": cfg.interpolate_decoder}


def is_identity(m: dict) -> bool:
    return m["interpolate"] == 1.0 and m["interpolate_decoder"] in (None, 1.0)


def _mixed(trained_dir: Path, model_cfg, cfg: FinetuneConfig, models: Path) -> torch.nn.Module:
    """The trained weights in ``trained_dir`` mixed with the pretrained model's."""
    trained = loader.load(replace(model_cfg, name=str(trained_dir)), models)
    pretrained = loader.load(model_cfg, models).model
    mixed = forgetting.interpolate(
        trained.model,
        pretrained,
        cfg.interpolate,
        cfg.interpolate_decoder,
        trained.is_decoder if cfg.interpolate_decoder is not None else None,
    )
    decoder = "" if cfg.interpolate_decoder is None else f", decoder {cfg.interpolate_decoder:g}"
    log.info(
        "saved weights: %g x trained + %g x pretrained%s (%d tensors)",
        cfg.interpolate,
        1 - cfg.interpolate,
        decoder,
        mixed,
    )
    return trained.model


def _remix(recipe: Recipe, out: Path, record: dict, accelerator: Accelerator) -> dict | None:
    """Save the same training's weights with another mix, without training again; None
    when the trained weights were not kept (an earlier mix saved only the mixed ones)."""
    cfg = recipe.finetune
    trained_dir, final = out / "trained", out / "model"
    if not trained_dir.is_dir() and not is_identity(record["mix"]):
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
        models = recipe.tree.models
        processor = loader.load(replace(model_cfg, name=str(trained_dir)), models).processor
        module = _mixed(trained_dir, model_cfg, cfg, models)
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
            with wrapped.training_context(batch), accelerator.autocast():
                loss, logits, mask = wrapped.training_loss(model, batch)
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
    subset's run, ``layout.subset_run``); under accelerate launch, too."""
    cfg = recipe.finetune
    subset = subset or cfg.subset
    name = name or layout.subset_run(subset, recipe.seed, recipe.select.budget)
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=precision(cfg.mixed_precision, cfg.cpu),
        gradient_accumulation_steps=cfg.grad_accum,
        log_with="tensorboard",
        project_dir=str(recipe.tree.finetune(name)),
    )
    return training_function(recipe, subset, resume, accelerator, name)
