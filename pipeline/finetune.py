"""Stage 4, finetune: train the recipe's model on one selected subset with Accelerate.

Output, under ``<data_dir>/finetune/<subset>/``:
  checkpoints/step-N/  accelerator.save_state every ``save_every`` steps, plus ``progress.json``
                       (losses and dev curve so far, settings key) and ``best/`` (the best dev
                       model so far); ``--resume`` continues from the last one
  best/                while training with ``eval_every``: the best dev model so far
  model/               save_pretrained model and processor (loads with ``from_pretrained``):
                       the last step's, or with ``eval_every`` the best by the first dev set's WER
  model_card.md        base model, recipe, subset fingerprint and size, steps, loss and dev curve
  train_log.json       loss per step, bad steps, dev curve, processes, settings key

The loop has the shape of Accelerate's examples (``get_dataloaders``, ``training_function``)
and runs unchanged under ``accelerate launch`` on several processes. Data order depends only
on the seed and the step, so a killed run resumed from its checkpoint ends at the same weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator, skip_first_batches
from accelerate.utils import broadcast_object_list, set_seed
from torch.utils.data import BatchSampler, DataLoader
from transformers import get_linear_schedule_with_warmup

from pipeline import __version__, manifest, validation
from pipeline.batches import Collator, EpochSampler, Utterances
from pipeline.config import FinetuneConfig, Recipe
from pipeline.errors import UserError
from pipeline.evaluate import MODELS_DIR
from pipeline.fsio import file_sha256, fingerprint, read_json, write_json, write_text
from pipeline.models import loader
from pipeline.models.base import SpeechModel
from pipeline.typed import to_dict

log = logging.getLogger(__name__)
MEL_FRAMES_PER_S = 100  # Whisper's log-mel hop is 10 ms
KEEP_CHECKPOINTS = 2  # older checkpoints are deleted: each holds the model and optimizer


def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean loss of a batch: token cross-entropy (Whisper) or CTC loss per frame (wav2vec2)."""
    if "input_features" in batch:
        logits = model(
            input_features=batch["input_features"], decoder_input_ids=batch["decoder_input_ids"]
        ).logits
        return torch.nn.functional.cross_entropy(
            logits.float().transpose(1, 2), batch["labels"], ignore_index=-100
        )
    return model(**batch).loss


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


def get_dataloaders(
    frame: pd.DataFrame, model: SpeechModel, cfg: FinetuneConfig, context_s: float, seed: int
) -> tuple[DataLoader, EpochSampler]:
    """The training loader (before ``accelerator.prepare``) and its seeded sampler."""
    sampler = EpochSampler(len(frame), seed)
    return (
        DataLoader(
            Utterances(frame),
            batch_sampler=BatchSampler(sampler, cfg.batch_size, drop_last=False),
            collate_fn=Collator(model, cfg.layout, context_s),
        ),
        sampler,
    )


def freeze(model: torch.nn.Module, train: str) -> None:
    """Set requires_grad for the chosen part of the model (see FinetuneConfig.train)."""
    whisper = model.config.model_type == "whisper"
    if train == "decoder_only" and not whisper:
        raise UserError("finetune.train: 'decoder_only' needs Whisper; CTC models have no decoder")
    if train == "full":
        return
    if whisper:
        core = model.model
        frozen = {
            "encoder_frozen": [core.encoder],
            "decoder_only": [core.encoder, core.decoder.embed_tokens, core.decoder.embed_positions],
            "feature_encoder_frozen": [core.encoder.conv1, core.encoder.conv2],
        }[train]
    else:
        base = getattr(model, model.base_model_prefix)
        frozen = {"encoder_frozen": [base], "feature_encoder_frozen": [base.feature_extractor]}[
            train
        ]
    for module in frozen:
        module.requires_grad_(False)


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    steps = [p for p in folder.glob("step-*") if (p / "progress.json").exists()]
    return max(steps, key=lambda p: int(p.name.split("-")[1]), default=None)


def training_function(recipe: Recipe, subset: str, resume: bool, accelerator: Accelerator) -> dict:
    """Train and return the log; the main process writes the model, card and log."""
    cfg = recipe.finetune
    seed = recipe.seed if cfg.seed is None else cfg.seed
    out = recipe.root / "finetune" / subset
    frame, subset_path = load_subset(recipe, subset)
    model_cfg = replace(recipe.model, layout=cfg.layout)
    dev_paths = validation.manifest_paths(recipe.root, cfg.eval_sets) if cfg.eval_every else {}
    dev_prints = [file_sha256(p) for p in dev_paths.values()]  # none when validation is off
    key = fingerprint(
        to_dict(cfg), to_dict(model_cfg), file_sha256(subset_path), __version__, *dev_prints
    )
    main = accelerator.is_main_process
    done = out / "train_log.json"
    if not resume and done.exists() and (out / "model").is_dir():
        record = read_json(done)
        if record.get("key") == key:
            if main:
                log.info("Stage 4: finetune %s: up to date (%s)", subset, out / "model")
            return record
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
    freeze(model, cfg.train)
    train_loader, sampler = get_dataloaders(frame, wrapped, cfg, recipe.model.context_s, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # stepped by hand once per optimizer step: Accelerate's wrapper would step it once per
    # process, which shortens the schedule under `accelerate launch`
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.steps)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    accelerator.register_for_checkpointing(scheduler)

    step, losses, dev = 0, [], validation.fresh_state()
    checkpoints, best_dir = out / "checkpoints", out / "best"
    found = last_checkpoint(checkpoints) if resume else None
    if found is not None:
        progress = read_json(found / "progress.json")
        if progress.get("key") != key:
            raise UserError(f"{found}: made with other settings or data; rerun without --resume")
        accelerator.load_state(str(found))
        step, losses = progress["step"], progress["losses"]
        dev = progress.get("dev", dev)
        if main:
            log.info("resumed from %s", found)
    elif resume and main:
        log.info("no checkpoint in %s: starting from step 0", checkpoints)
    elif main and checkpoints.exists():
        shutil.rmtree(checkpoints)  # a fresh run: stale checkpoints must not be resumed later
    if main:  # the best model so far is the checkpoint's: a later one may be on disk
        shutil.rmtree(best_dir, ignore_errors=True)
        if dev["best"] is not None:
            shutil.copytree(found / "best", best_dir)
    accelerator.wait_for_everyone()

    per_epoch = len(train_loader)
    batches = _batches(train_loader, sampler, step * cfg.grad_accum, per_epoch)
    bad_in_row = 0
    while step < cfg.steps:
        total, bad = 0.0, False
        for micro in range(cfg.grad_accum):
            batch = next(batches)
            if not batch:
                continue
            # gradients are all-reduced on the last micro-batch only
            sync = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                with _context(wrapped, batch):
                    loss = compute_loss(model, batch)
                # every process must agree before backward, or DDP waits for the one that skipped
                broken = (~torch.isfinite(loss.detach())).float()
                if accelerator.reduce(broken, "max").item() > 0 or bad:
                    bad = True
                    continue
                accelerator.backward(loss)
                total += loss.item() / cfg.grad_accum
        if bad:
            optimizer.zero_grad()  # the step is skipped; its slot in the schedule is used
            bad_in_row += 1
            losses.append(None)
            if bad_in_row >= cfg.max_bad_steps:
                raise UserError(
                    f"finetune: loss was NaN or infinite at {bad_in_row} steps in a row (step "
                    f"{step + 1}); lower finetune.lr or check the subset's audio and text"
                )
        else:
            optimizer.step()
            optimizer.zero_grad()
            bad_in_row = 0
            mean = accelerator.reduce(torch.tensor(total, device=accelerator.device), "mean")
            losses.append(mean.item())
        scheduler.step()
        step += 1
        if main and (step % 10 == 0 or step == cfg.steps):
            log.info("step %d/%d loss %s", step, cfg.steps, losses[-1])
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
            _save_checkpoint(accelerator, checkpoints, step, {"losses": losses, "dev": dev}, key)

    accelerator.wait_for_everyone()
    record = {
        "key": key,
        "steps": step,
        "losses": losses,
        "bad_steps": sum(x is None for x in losses),
        "dev_curve": dev["curve"],
        "best": dev["best"],  # {step, wer} on the first eval set; None without validation
        "processes": accelerator.num_processes,
        "base_model": recipe.model.name,
        "subset": subset,
        "subset_sha256": file_sha256(subset_path),
        "subset_utterances": len(frame),
        "recipe": to_dict(recipe),
        "version": __version__,
    }
    if main:
        best = best_dir if dev["best"] is not None else None
        _write_outputs(out, accelerator.unwrap_model(model), wrapped.processor, record, best)
    accelerator.wait_for_everyone()
    return record


def _context(wrapped: SpeechModel, batch: dict[str, torch.Tensor]):
    """The 'short' layout's cut encoder context, read off the features' length."""
    if "input_features" not in batch:
        return contextlib.nullcontext()
    return wrapped.context(batch["input_features"].shape[-1] / MEL_FRAMES_PER_S)


def _batches(train_loader, sampler: EpochSampler, start: int, per_epoch: int):
    """Micro-batches forever from position ``start``: epoch after epoch, the same order."""
    epoch, skip = divmod(start, per_epoch)
    while True:
        sampler.use_epoch(epoch)
        loader = skip_first_batches(train_loader, skip) if skip else train_loader
        yield from loader
        epoch, skip = epoch + 1, 0


def _validate(accelerator, model, wrapped, dev_sets, dev, step, best_dir, recipe) -> dict:
    """Dev WER on the main process (the others wait); a new best is saved to ``best_dir``.

    Returns the updated dev state, the same on every process, so all agree on stopping.
    """
    if accelerator.is_main_process:
        module = accelerator.unwrap_model(model)
        view = validation.reader(wrapped, module)
        wers = {
            name: validation.dev_wer(view, waves, texts, recipe.model.batch_size)
            for name, (waves, texts) in dev_sets.items()
        }
        module.train()
        improved = validation.record(dev, step, wers)
        if improved:
            _save_model(best_dir, module, wrapped.processor)
        shown = ", ".join(f"{name} {wer:.4f}" for name, wer in wers.items())
        log.info("step %d dev WER %s%s", step, shown, " (best so far)" if improved else "")
    accelerator.wait_for_everyone()
    return broadcast_object_list([dev])[0]


def _save_checkpoint(accelerator, checkpoints: Path, step: int, progress: dict, key: str) -> None:
    """Accelerate state, the best dev model so far, then ``progress.json`` (losses, dev)."""
    folder = checkpoints / f"step-{step}"
    accelerator.save_state(str(folder))  # every process takes part; the main one writes
    if accelerator.is_main_process:
        if progress["dev"]["best"] is not None:
            shutil.copytree(checkpoints.parent / "best", folder / "best", dirs_exist_ok=True)
        # progress.json last: a checkpoint without it (killed while saving) is not resumed
        write_json(folder / "progress.json", {"step": step, **progress, "key": key})
        done = sorted(checkpoints.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in done[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _save_model(folder: Path, model, processor) -> None:
    """save_pretrained model and processor, renamed into place."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def _write_outputs(out: Path, model, processor, record: dict, best: Path | None) -> None:
    """The model (``best``, a saved folder, when given; else ``model``), card and log."""
    final = out / "model"
    if best is None:
        _save_model(final, model, processor)
    else:
        shutil.rmtree(final, ignore_errors=True)
        best.rename(final)
    write_json(out / "train_log.json", record)
    write_text(out / "model_card.md", model_card(record))
    log.info("model saved to %s", final)


def model_card(record: dict) -> str:
    """A short Markdown card: what was trained, on what, and how the loss went."""
    finite = [x for x in record["losses"] if x is not None]
    tail = finite[-10:]
    ft = record["recipe"]["finetune"]
    return (
        f"# {record['base_model']} fine-tuned on the {record['subset']!r} subset\n\n"
        f"- recipe: {record['recipe']['name']} (rsft {record['version']})\n"
        f"- base model: {record['base_model']}\n"
        f"- subset: {record['subset_utterances']} utterances, "
        f"sha256 {record['subset_sha256'][:16]}\n"
        f"- steps: {record['steps']} ({record['bad_steps']} skipped for NaN/inf loss), "
        f"batch {ft['batch_size']} x {ft['grad_accum']} x {record['processes']} process(es), "
        f"lr {ft['lr']}, train {ft['train']}, layout {ft['layout']}\n"
        f"- loss: first {finite[0] if finite else math.nan:.4f}, "
        f"mean of last 10 {np.mean(tail) if tail else math.nan:.4f}\n\n"
        f"{_dev_section(record)}"
        "Load with `from_pretrained` on the `model/` folder. Test WER: run `rsft evaluate "
        "--model` on it.\n"
    )


def _dev_section(record: dict) -> str:
    """Which step the saved model is and the dev WER curve it was chosen on."""
    curve, best = record.get("dev_curve") or [], record.get("best")
    if not curve or best is None:
        return ""
    sets = [k for k in curve[0] if k != "step"]
    rows = "".join(
        f"| {row['step']} | " + " | ".join(f"{100 * row[s]:.1f}" for s in sets) + " |\n"
        for row in curve
    )
    return (
        f"The saved model is step {best['step']} of {record['steps']}: the lowest WER on "
        f"{sets[0]} (evaluated every {record['recipe']['finetune']['eval_every']} steps, "
        f"standard 30 s layout, first {record['recipe']['finetune']['eval_limit']} "
        "utterances by id).\n\n"
        f"| step | {' | '.join(f'{s} WER %' for s in sets)} |\n"
        f"|---:|{'---:|' * len(sets)}\n{rows}\n"
    )


def run(recipe: Recipe, subset: str | None = None, resume: bool = False) -> dict:
    """Fine-tune on ``subset`` (default: finetune.subset); under accelerate launch, too."""
    cfg = recipe.finetune
    accelerator = Accelerator(
        cpu=cfg.cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
    )
    return training_function(recipe, subset or cfg.subset, resume, accelerator)
