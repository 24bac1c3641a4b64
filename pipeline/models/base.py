"""One interface over speech recognisers: transcribe, embed, score transcripts, and train.

Later stages only see ``SpeechModel``; Whisper (sequence to sequence) and wav2vec2 (CTC) are
its two implementations, each in its own module. Batches are built by the caller; models take
lists of 16 kHz waves. A third family implements the abstract methods below and is chosen in
``loader.load``; no stage needs to change.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import UserError

SAMPLE_RATE = 16000  # Hz
Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainingLayout:
    """How training audio becomes model input (finetune.layout and the settings that go with
    it); models with a single input layout ignore it."""

    layout: str = "standard"  # 'standard', 'short' or 'packed' (Whisper)
    context_s: float = 30.0  # 'short': the encoder context
    gap_s: float | None = None  # 'packed': silence between utterances (None: the model's)
    first_fit: bool = False  # 'packed': fuller windows, longest first
    single_windows: int = 0  # 'packed': this many utterances of a batch alone in a window


class SpeechModel(ABC):
    """A pretrained or fine-tuned recogniser with the operations the stages need."""

    name: str  # what the user asked for: a hub id, a folder, or bundled:...
    model: torch.nn.Module
    # raised when a change to the decoding code changes transcripts: evaluate runs keyed with
    # an older revision are decoded again
    decoding_revision: int = 1
    # modules a LoRA run trains in full beside its adapters (a CTC head built for new data)
    lora_trains_in_full: tuple[str, ...] = ()
    # the language spoken (model.language): transcripts are normalised for it
    language: str = "en"
    # CTranslate2's converter takes the model (rsft export): Whisper's
    exports_to_ct2: bool = False

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

    # -- training (the finetune stage) --------------------------------------------------------

    @abstractmethod
    def training_batch(
        self, waves: Sequence[np.ndarray], texts: Sequence[str], layout: TrainingLayout
    ) -> Batch:
        """The tensors the loss needs for a batch of (wave, transcript), on the CPU, plus
        ``input_s``: seconds of model input (windows or padded rows), for the padding share."""

    @abstractmethod
    def training_loss(self, module: torch.nn.Module, batch: Batch):
        """(mean loss, logits, mask of the positions that count) of ``module``: this model's
        network, or a copy of it (a frozen teacher), possibly wrapped (DDP, PEFT)."""

    def training_context(self, batch: Batch) -> contextlib.AbstractContextManager:
        """What the forward pass of ``batch`` runs inside (e.g. a cut encoder context)."""
        return contextlib.nullcontext()

    @abstractmethod
    def freeze(self, module: torch.nn.Module, train: str) -> None:
        """Set requires_grad for the part of ``module`` that finetune.train names; a one-line
        UserError for a part this model does not have."""

    def is_decoder(self, name: str) -> bool:
        """Whether parameter ``name`` belongs to the decoder (finetune.interpolate_decoder)."""
        raise UserError(
            f"finetune.interpolate_decoder: {type(self).__name__} models have no decoder to mix"
        )

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
