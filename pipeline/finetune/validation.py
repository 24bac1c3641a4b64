"""Dev-set WER during fine-tuning: load the prepared dev sets once, decode them, keep the best.

The dev state travels as a plain dict, ``{"curve": [{"step": N, <set>: wer, ...}], "best":
{"step": N, "wer": w} | None}``, so it can be stored in a checkpoint's ``progress.json`` and
broadcast to every process. The best is judged on the first set's WER alone.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import audio, manifest, metrics, text
from pipeline.errors import UserError
from pipeline.layout import DataTree
from pipeline.models import loader
from pipeline.models.base import SAMPLE_RATE, SpeechModel, length_batches

log = logging.getLogger(__name__)

DevSet = tuple[list[np.ndarray], list[str]]  # waves and reference transcripts


def fresh_state() -> dict:
    return {"curve": [], "best": None, "guard": None}


def manifest_paths(tree: DataTree, names: Sequence[str]) -> dict[str, Path]:
    """The prepared manifests of the dev sets; a one-line UserError for a missing one."""
    if not names:
        raise UserError("finetune.eval_sets: name at least one prepared set to validate on")
    paths = {name: tree.manifest(name) for name in names}
    for name, path in paths.items():
        if not path.exists():
            raise UserError(
                f"finetune.eval_sets: set {name!r} has no manifest at {path} "
                "(run: rsft prepare first, or set finetune.eval_every=0)"
            )
    return paths


def load_sets(paths: dict[str, Path], limit: int | None) -> dict[str, DevSet]:
    """The first ``limit`` utterances of each set by id, read into memory once."""
    sets = {}
    for name, path in paths.items():
        frame = manifest.read(path).sort_values("id", kind="stable")
        if limit is not None:
            frame = frame.head(limit)
        waves, texts = [], []
        for audio_path, reference in zip(frame["audio_path"], frame["text"], strict=True):
            try:
                waves.append(audio.read(audio_path)[0])
            except (audio.AudioError, OSError):
                continue
            texts.append(reference)
        if not waves:
            raise UserError(f"finetune.eval_sets: set {name!r} has no readable utterance")
        if len(waves) < len(frame):
            log.warning("dev set %s: %d utterances unreadable", name, len(frame) - len(waves))
        sets[name] = (waves, texts)
    return sets


def reader(wrapped: SpeechModel, module) -> SpeechModel:
    """``wrapped``'s interface over ``module`` (the unwrapped training model) in eval mode,
    reading the standard 30 s layout whatever the training layout."""
    view = copy.copy(wrapped)  # shares the processor; no re-init of the model's config
    view.model = module.train(False)
    return loader.with_layout(view, "standard")


def dev_wer(
    model: SpeechModel, waves: list[np.ndarray], texts: list[str], batch_size: int
) -> float:
    """Corpus WER of ``model``'s transcripts, both sides through the shared normaliser."""
    hyps = [""] * len(waves)
    for batch in length_batches([len(w) / SAMPLE_RATE for w in waves], batch_size):
        for i, hyp in zip(batch, model.transcribe([waves[i] for i in batch]), strict=True):
            hyps[i] = hyp
    refs, hyps = (text.normalize_batch(x, model.language) for x in (texts, hyps))
    errors = metrics.utterance_errors(refs, hyps)
    return metrics.wer(errors)


def record(
    state: dict, step: int, wers: dict[str, float], guard: str | None = None, tolerance=0.0
) -> bool:
    """Append ``wers`` to the curve; True if the first set's WER is a new best.

    With a ``guard`` set, its first evaluation (step 0, the pretrained model) fixes a limit,
    that WER plus ``tolerance``; an evaluation above the limit is never the best.
    """
    state["curve"].append({"step": step, **wers})
    if guard is not None and state.get("guard") is None:
        state["guard"] = {"set": guard, "limit": wers[guard] + tolerance}
    if guard is not None and not wers[guard] <= state["guard"]["limit"]:
        return False
    score = next(iter(wers.values()))
    score = score if math.isfinite(score) else math.inf  # NaN (no reference words) never wins
    if state["best"] is None or score < state["best"]["wer"]:
        state["best"] = {"step": step, "wer": score}
        return True
    return False


def evaluations_since_best(state: dict) -> int:
    best = state["best"]
    return 0 if best is None else sum(row["step"] > best["step"] for row in state["curve"])
