"""What stage 4 writes: checkpoints, the saved model, the training log and the model card.

Layout, under ``<data_dir>/finetune/<run>/``:
  checkpoints/step-N/  accelerator.save_state, ``best/`` (the best dev model so far) and
                       ``progress.json`` last (a checkpoint without it is never resumed)
  best/                while training with validation: the best dev model so far
  model/               save_pretrained model and processor (LoRA adapters merged)
  trained/             with finetune.interpolate*: the trained weights before the mix, so
                       that another mix is saved without training again
  model_card.md        base model, recipe, subset fingerprint and size, steps, dev curve
  train_log.json       losses, bad steps, dev curve, padding, throughput, settings key
  tensorboard/         Accelerate's TensorBoard tracker: loss, learning rate, dev WER
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import numpy as np
from peft import PeftModel

from pipeline.finetune import forgetting
from pipeline.fsio import write_json, write_text

log = logging.getLogger(__name__)
KEEP_CHECKPOINTS = 2  # older checkpoints are deleted: each holds the model and optimizer


def last_checkpoint(folder: Path) -> Path | None:
    """The checkpoint with the highest step, or None."""
    steps = [p for p in folder.glob("step-*") if (p / "progress.json").exists()]
    return max(steps, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(accelerator, checkpoints: Path, step: int, progress: dict, key: str) -> None:
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


ADAPTER = "adapter"  # model/adapter/: a LoRA run's adapters alone (peft's save_pretrained)


def save_model(folder: Path, model, processor) -> None:
    """save_pretrained model (adapters merged) and processor, renamed into place; a LoRA
    model's adapters are also saved alone in ``<folder>/adapter`` (a per-user adapter, a small
    fraction of the model, that ``model.adapter`` applies to the base model when it reads)."""
    staging = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    forgetting.plain(model).save_pretrained(staging)
    processor.save_pretrained(staging)
    if isinstance(model, PeftModel):
        model.save_pretrained(staging / ADAPTER)
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)


def write_outputs(out: Path, model, processor, record: dict, best: Path | None) -> None:
    """The model (``best``, a saved folder, when given; else ``model``), card and log."""
    final = out / "model"
    if best is None:
        save_model(final, model, processor)
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
    size = (
        f"{ft['batch_seconds']} s of audio"
        if ft.get("batch_seconds")
        else f"{ft['batch_size']} utterances"
    )
    control = ", ".join(
        f"{k} {ft[k]}"
        for k in ("replay_fraction", "distill_weight", "l2_weight", "guard_set")
        if ft.get(k)
    )
    held = {
        "decoder_frozen": "the decoder frozen",
        "decoder_lm_frozen": "the decoder's language model frozen",
    }
    if ft["train"] in held:
        control = ", ".join(x for x in (held[ft["train"]], control) if x)
    w, wd = ft.get("interpolate", 1.0), ft.get("interpolate_decoder")
    if w < 1.0 or wd not in (None, 1.0):
        mix = f"saved weights {w:g} x trained + {1 - w:g} x pretrained"
        if wd is not None:
            mix += f", the decoder's {wd:g} x trained + {1 - wd:g} x pretrained"
        mix += " (WiSE-FT; the trained weights are kept in trained/)"
        control = f"{control}, {mix}" if control else mix
    rss = record.get("peak_rss_mib")
    peak = f"; peak memory {rss:,.0f} MiB (main process)" if rss else ""
    return (
        f"# {record['base_model']} fine-tuned on the {record['subset']!r} subset\n\n"
        f"- recipe: {record['recipe']['name']} (rsft {record['version']})\n"
        f"- base model: {record['base_model']}, language "
        f"{record['recipe'].get('model', {}).get('language', 'en')}\n"
        f"- subset: {record['subset_utterances']} utterances, "
        f"sha256 {record['subset_sha256'][:16]}\n"
        f"- steps: {record['steps']} ({record['bad_steps']} skipped for NaN/inf loss), "
        f"batches of {size} x {ft['grad_accum']} x {record['processes']} process(es), "
        f"lr {ft['lr']}, train {ft['train']}, layout {ft['layout']}, labels {ft['labels']}, "
        f"precision {record.get('mixed_precision', 'no')}\n"
        f"- forgetting control: {control or 'none'}\n"
        f"- padding: {100 * record['padding_fraction']:.1f}% of the model's input; "
        f"{record['speech_seconds']:.0f} s of audio in {record['train_seconds']:.0f} s"
        f"{peak}\n"
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
    sets = list(dict.fromkeys(k for row in curve for k in row if k != "step"))
    rows = "".join(
        f"| {row['step']} | "
        + " | ".join(f"{100 * row[s]:.1f}" if s in row else "" for s in sets)
        + " |\n"
        for row in curve
    )
    ft = record["recipe"]["finetune"]
    guard = record.get("guard")
    rule = (
        f", among evaluations with {guard['set']} WER at most {100 * guard['limit']:.1f}% "
        f"(the pretrained model's plus {100 * ft['guard_tolerance']:.1f} points)"
        if guard
        else ""
    )
    return (
        f"The saved model is step {best['step']} of {record['steps']}: the lowest WER on "
        f"{sets[0]}{rule} (evaluated every {ft['eval_every']} steps, standard 30 s layout, "
        f"first {ft['eval_limit']} utterances by id).\n\n"
        f"| step | {' | '.join(f'{s} WER %' for s in sets)} |\n"
        f"|---:|{'---:|' * len(sets)}\n{rows}\n"
    )
