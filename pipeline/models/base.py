"""One interface over speech recognisers: transcribe, embed, and score transcripts.

Later stages only see ``SpeechModel``; Whisper (sequence to sequence) and wav2vec2 (CTC) are
its two implementations. Batches are built by the caller; models take lists of 16 kHz waves.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np
import torch

SAMPLE_RATE = 16000  # Hz


class SpeechModel(ABC):
    """A pretrained or fine-tuned recogniser with the operations the stages need."""

    name: str  # what the user asked for: a hub id, a folder, or bundled:...
    model: torch.nn.Module
    # raised when a change to the decoding code changes transcripts: evaluate runs keyed with
    # an older revision are decoded again
    decoding_revision: int = 1

    @abstractmethod
    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Greedy transcripts of a batch of 16 kHz mono waves."""

    def transcribe_scored(self, waves: Sequence[np.ndarray]) -> tuple[list[str], np.ndarray]:
        """Greedy transcripts and their mean log-probability per token (NaN if not known)."""
        return self.transcribe(waves), np.full(len(waves), np.nan, dtype=np.float32)

    @abstractmethod
    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Mean-pooled encoder states over each wave's own frames, per layer: (batch, layers,
        dim) float32, layer 0 the first block's input and the last the final output. Which
        layer tells a target condition from the pool best depends on the condition (accent
        and noise live below the top), so selection chooses among them."""

    @abstractmethod
    def loss(self, waves: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """Per-utterance loss of the given transcripts (mean NLL per token or per frame)."""

    def analyse(
        self, waves: Sequence[np.ndarray], texts: Sequence[str] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and, given transcripts, losses (NaN without); models may share the work."""
        losses = np.full(len(waves), np.nan, dtype=np.float32)
        return self.embed(waves), (self.loss(waves, texts) if texts is not None else losses)

    def fingerprint(self) -> str:
        """sha256 over every parameter and buffer: the same weights give the same print."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
        return digest.hexdigest()[:16]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def length_batches(durations: Sequence[float], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little padding."""
    order = np.argsort(-np.asarray(durations, dtype=np.float64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size].tolist()
