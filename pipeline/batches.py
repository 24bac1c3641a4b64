"""Training batches for stage 4: utterances from a manifest, a replayable order, model inputs.

``Collator`` turns (wave, text) pairs into what the model's forward takes: Whisper log-mel
windows (one utterance per window, or several packed into 30 s) with teacher-forcing tokens,
or wav2vec2 input values with CTC character labels (-100 on padding).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from pipeline import audio
from pipeline.fsio import stable_seed
from pipeline.models.base import SAMPLE_RATE, SpeechModel
from pipeline.models.whisper import CHUNK_S, Whisper


class Utterances(Dataset):
    """(wave, text) per manifest row; unreadable audio yields None and the collator drops it."""

    def __init__(self, frame: pd.DataFrame):
        self.paths = frame["audio_path"].tolist()
        self.texts = frame["text"].tolist()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return audio.read(self.paths[i])[0], self.texts[i]
        except (audio.AudioError, OSError):
            return None


class EpochSampler(Sampler):
    """A permutation per epoch drawn from (seed, epoch) alone, so any position can be replayed.

    The epoch is set with ``use_epoch`` (not ``set_epoch``, which Accelerate's loader calls
    with its own iteration counter, and which would restart at 0 after a resume).
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng(stable_seed("finetune-order", self.seed, self.epoch))
        return iter(rng.permutation(self.n).tolist())


class Collator:
    """Model inputs for a batch of (wave, text): Whisper windows and tokens, or CTC values."""

    def __init__(self, model: SpeechModel, layout: str, context_s: float):
        self.model, self.layout, self.context_s = model, layout, context_s

    def __call__(self, items) -> dict[str, torch.Tensor]:
        items = [x for x in items if x is not None]
        if not items:  # every file unreadable: an empty batch the loop skips
            return {}
        waves, texts = [w for w, _ in items], [t for _, t in items]
        if isinstance(self.model, Whisper):
            return self._whisper(waves, texts)
        return self._ctc(waves, texts)

    def _whisper(self, waves, texts) -> dict[str, torch.Tensor]:
        m = self.model
        if self.layout == "packed":
            # one window per group of utterances, the transcripts in order, one end of text
            windows = m.pack(waves)
            waves = [w.wave for w in windows]
            tokens = [
                [t for k in w.members for t in m.text_tokens(texts[k])[:-1]] + [m.eot]
                for w in windows
            ]
        else:
            tokens = [m.text_tokens(t) for t in texts]
        # short: the cut context only when every utterance fits (as Whisper.transcribe does)
        fits = max(len(w) for w in waves) <= self.context_s * SAMPLE_RATE
        seconds = self.context_s if self.layout == "short" and fits else CHUNK_S
        inputs, labels = m._teacher_forcing(tokens)
        return {
            "input_features": m.features(waves, seconds).cpu(),
            "decoder_input_ids": inputs.cpu(),
            "labels": labels.cpu(),
        }

    def _ctc(self, waves, texts) -> dict[str, torch.Tensor]:
        batch = self.model.processor(
            waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )
        targets = [self.model.targets(t) for t in texts]
        labels = torch.full((len(targets), max(map(len, targets))), -100, dtype=torch.long)
        for row, seq in enumerate(targets):
            labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask = batch.get("attention_mask", torch.ones_like(batch.input_values, dtype=torch.long))
        return {"input_values": batch.input_values, "attention_mask": mask, "labels": labels}
