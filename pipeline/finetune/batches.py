"""Training batches for stage 4: utterances from a manifest, a replayable order, model inputs.

``Collator`` turns (wave, text) pairs into what the model's loss takes, as the model lays
them out (``SpeechModel.training_batch``: Whisper log-mel windows, one utterance per window or
several packed into 30 s, with teacher-forcing tokens; wav2vec2 input values with CTC labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from pipeline import audio, text
from pipeline.fsio import stable_seed
from pipeline.models.base import SAMPLE_RATE, SpeechModel, TrainingLayout


class Utterances(Dataset):
    """(wave, text) per manifest row; unreadable audio yields None and the collator drops it.

    Several frames (the subset, then the replay pool) are one dataset, rows in that order.
    """

    def __init__(self, *frames: pd.DataFrame, narrowband_fraction: float = 0.0, seed: int = 0):
        self.paths = [p for f in frames for p in f["audio_path"].tolist()]
        self.texts = [t for f in frames for t in f["text"].tolist()]
        # a fixed share of the files, drawn from (seed, file name), is read through a
        # telephone band on every pass: the same choice after a resume or in another process
        self.narrowband = {
            i
            for i, p in enumerate(self.paths)
            if narrowband_fraction > 0
            and stable_seed(seed, "narrowband", Path(p).name) / 2**60 < narrowband_fraction
        }

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            wave = audio.read(self.paths[i])[0]
        except (audio.AudioError, OSError):
            return None
        if i in self.narrowband:
            wave = audio.telephone_band(wave)
        return wave, self.texts[i]


class EpochBatches(Sampler):
    """Batches of dataset indices per epoch, drawn from (seed, epoch) alone, so any position
    can be replayed after a resume.

    Rows ``0..n-1`` of the dataset are the subset, rows ``n..`` the replay pool. A batch holds
    ``batch_size`` utterances, or with ``batch_seconds`` as many as fill that much audio; a
    ``replay_fraction`` of it (by count, or by seconds) is drawn from the pool. With
    ``group_by_length`` each run of 50 batches is sorted by duration before it is cut, so a
    padded batch holds utterances of similar length; batch order stays random.

    The epoch is set with ``use_epoch`` (not ``set_epoch``, which Accelerate's loader calls
    with its own iteration counter, and which would restart at 0 after a resume).
    """

    drop_last = False
    GROUP_RUN = 50  # batches per length-sorted run

    def __init__(
        self,
        durations_s,
        seed: int,
        batch_size: int,
        batch_seconds: float | None = None,
        replay_fraction: float = 0.0,
        pool_durations_s=(),
        group_by_length: bool = False,
    ):
        self.durations = np.asarray(durations_s, dtype=np.float64)
        self.pool = np.asarray(pool_durations_s, dtype=np.float64)
        if replay_fraction > 0 and not len(self.pool):
            raise ValueError("replay_fraction > 0 needs pool utterances")
        self.seed, self.epoch = seed, 0
        self.size, self.seconds = batch_size, batch_seconds
        self.replay, self.group = replay_fraction, group_by_length
        # Accelerate shards fixed-size batches by count; a duration budget gives varying sizes
        self.batch_size = None if batch_seconds else batch_size
        self._cache: tuple[int, list[list[int]]] | None = None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self):
        return iter(self._batches())

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._draw(self.epoch))
        return self._cache[1]

    def _draw(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng(stable_seed("finetune-order", self.seed, epoch))
        order = rng.permutation(len(self.durations))
        if self.group:
            run = self.GROUP_RUN * self._per_batch()
            batches = []
            for lo in range(0, len(order), run):
                part = order[lo : lo + run]
                batches += self._cut(part[np.argsort(-self.durations[part], kind="stable")])
            batches = [batches[i] for i in rng.permutation(len(batches))]
        else:
            batches = self._cut(order)
        batches = [[int(i) for i in b] for b in batches]
        if self.replay > 0:
            batches = self._add_replay(batches, epoch)
        return batches

    def _per_batch(self) -> int:
        """Subset utterances per batch (typical, with a duration budget)."""
        if self.seconds:
            mean = float(self.durations.mean()) if len(self.durations) else 1.0
            return max(1, round(self.seconds * (1.0 - self.replay) / mean))
        return max(1, self.size - round(self.size * self.replay))

    def _cut(self, order: np.ndarray) -> list:
        if self.seconds:
            return _fill_by_seconds(order, self.durations, self.seconds * (1.0 - self.replay))
        count = self._per_batch()
        return [order[i : i + count] for i in range(0, len(order), count)]

    def _add_replay(self, batches: list[list[int]], epoch: int) -> list[list[int]]:
        """Pool rows after each batch: a fresh permutation of the pool per epoch, cycled."""
        rng = np.random.default_rng(stable_seed("finetune-replay", self.seed, epoch))
        n, queue, at = len(self.durations), rng.permutation(len(self.pool)), 0
        out = []
        for batch in batches:
            own_s = float(self.durations[batch].sum())
            extra, extra_s = [], 0.0
            want_n = round(len(batch) * self.replay / (1.0 - self.replay))
            want_s = own_s * self.replay / (1.0 - self.replay)
            while (extra_s < want_s) if self.seconds else (len(extra) < want_n):
                if at == len(queue):
                    queue, at = rng.permutation(len(self.pool)), 0
                extra.append(n + int(queue[at]))
                extra_s += float(self.pool[queue[at]])
                at += 1
            out.append(batch + extra)
        return out


def _fill_by_seconds(order: np.ndarray, durations: np.ndarray, limit_s: float) -> list:
    """Cut ``order`` into runs whose audio stays within ``limit_s`` (at least one each)."""
    batches, current, used = [], [], 0.0
    for i in order:
        if current and used + durations[i] > limit_s:
            batches.append(current)
            current, used = [], 0.0
        current.append(i)
        used += durations[i]
    if current:
        batches.append(current)
    return batches


class Collator:
    """Model inputs for a batch of (wave, text), as the model lays them out for training
    (``SpeechModel.training_batch``).

    Each batch also carries ``speech_s`` and ``input_s``: seconds of audio in it and seconds
    of model input (windows or padded rows), whose ratio is the padding fraction's complement.
    """

    def __init__(
        self,
        model: SpeechModel,
        layout: str,
        context_s: float,
        labels: str = "raw",
        gap_s: float | None = None,
        first_fit: bool = False,
        single_windows: int = 0,
    ):
        self.model = model
        self.layout = TrainingLayout(layout, context_s, gap_s, first_fit, single_windows)
        self.normalize = labels == "normalized"

    def __call__(self, items) -> dict[str, torch.Tensor]:
        items = [x for x in items if x is not None]
        if not items:  # every file unreadable: an empty batch the loop skips
            return {}
        waves = [w for w, _ in items]
        language = self.model.language
        texts = [text.normalize(t, language) if self.normalize else t for _, t in items]
        batch = self.model.training_batch(waves, texts, self.layout)
        batch["speech_s"] = torch.tensor(sum(len(w) for w in waves) / SAMPLE_RATE)
        return batch
