"""Pseudo-labels of the unlabelled target audio, with a reliability that reads no reference.

A teacher (the recipe's model, or a fine-tuned one for a second round) transcribes each
target utterance greedily, one request per 30 s window as it is read in deployment, and draws
``samples`` more transcripts at a temperature. The reliability of the greedy transcript is its
mean agreement with the samples, 1 - WER(greedy, sample) floored at 0: a model that is sure of
what it heard says the same thing however it is sampled (self-consistency). The greedy
transcript's mean token log-probability is kept beside it. ``select`` accepts pseudo-labelled
utterances by rejection on the reliability.

Written under ``<data_dir>/score/<set>/``: ``pseudo.parquet`` (id, hypothesis, logprob,
agreement, samples) and ``pseudo.done.json`` (the key: teacher, settings, manifest).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import __version__, audio, layout, manifest, metrics, text
from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.fsio import atomic_path, file_sha256, fingerprint, stable_seed
from pipeline.models import ct2, loader
from pipeline.models.base import SpeechModel, length_batches
from pipeline.typed import to_dict

log = logging.getLogger(__name__)

TABLE = "pseudo.parquet"
STAMP = "pseudo.done.json"


def agreement(greedy: str, samples: list[str], language: str = "en") -> float:
    """Mean over samples of max(0, 1 - WER) with the greedy transcript as the reference (both
    normalised as ``language`` is scored); 0 for an empty greedy transcript, which labels
    nothing."""
    ref = text.normalize(greedy, language)
    if not ref or not samples:
        return 0.0
    hyps = text.normalize_batch(samples, language)
    errors = metrics.utterance_errors([ref] * len(hyps), hyps)
    rates = errors["errors"] / errors["ref_words"].clip(lower=1)
    return float(np.clip(1.0 - rates, 0.0, 1.0).mean())


def label(
    model: SpeechModel,
    frame: pd.DataFrame,
    samples: int,
    temperature: float,
    seed: int,
    batch_size: int = 8,
    language: str = "en",
) -> pd.DataFrame:
    """Greedy pseudo-labels of ``frame``'s audio with their reliability (module docstring)."""
    if not hasattr(model, "sample"):
        raise UserError(f"pseudo-labels: sampling needs a Whisper model, not {model.name!r}")
    hyps = [""] * len(frame)
    logprob = np.full(len(frame), np.nan, dtype=np.float32)
    drawn: list[list[str]] = [[] for _ in range(len(frame))]
    ids = frame["id"].tolist()
    batches = list(length_batches(frame["duration_s"].tolist(), batch_size))
    for batch in tqdm(batches, desc="pseudo-labels", unit="batch", disable=None):
        waves = [audio.read(frame["audio_path"].iloc[i])[0] for i in batch]
        texts, scores = model.transcribe_scored(waves)
        for i, wave, hyp, score in zip(batch, waves, texts, scores, strict=True):
            hyps[i], logprob[i] = hyp, score
            if samples:
                drawn[i] = model.sample(wave, samples, temperature, stable_seed(seed, ids[i]))
    return pd.DataFrame(
        {
            "id": ids,
            "hypothesis": hyps,
            "logprob": logprob,
            "agreement": [agreement(h, d, language) for h, d in zip(hyps, drawn, strict=True)],
            "samples": ["\n".join(d) for d in drawn],
        }
    )


def run(recipe: Recipe, names: list[str]) -> None:
    """Pseudo-label each set in ``names`` (the target sample) unless its labels are current."""
    cfg = recipe.score
    teacher = replace(recipe.model, layout="standard", name=cfg.pseudo_teacher or recipe.model.name)
    model = None
    for name in names:
        path = recipe.tree.manifest(name)
        out = recipe.tree.score(name)
        settings = {k: v for k, v in to_dict(cfg).items() if k.startswith("pseudo_")}
        if model is None:
            model = loader.load(teacher, recipe.tree.models)
            engine = (teacher.engine, teacher.ct2_compute_type, teacher.threads)
            model = ct2.reader(model, *engine, recipe.tree.models)
        key = fingerprint(
            model.fingerprint(),
            teacher.key(decodes=True),
            settings,
            recipe.seed,
            file_sha256(path),
            __version__,
        )
        if layout.is_done(out / STAMP, key):
            log.info("set %s: pseudo-labels up to date", name)
            continue
        frame = manifest.read(path).sort_values("id", kind="stable").reset_index(drop=True)
        log.info(
            "set %s: pseudo-labels of %d utterances by %s (%d samples at T %g)",
            name,
            len(frame),
            teacher.name,
            cfg.pseudo_samples,
            cfg.pseudo_temperature,
        )
        table = label(
            model,
            frame,
            cfg.pseudo_samples,
            cfg.pseudo_temperature,
            recipe.seed,
            recipe.model.batch_size,
            recipe.model.language,
        )
        _write(out, table)
        layout.mark_done(out / STAMP, key, teacher=teacher.name, utterances=len(table))


def _write(out: Path, table: pd.DataFrame) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / TABLE) as tmp:
        table.to_parquet(tmp, index=False)
