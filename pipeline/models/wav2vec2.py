"""wav2vec2 (CTC) behind the SpeechModel interface: greedy CTC decoding, pooled states, CTC loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.models.base import SAMPLE_RATE, Batch, SpeechModel, TrainingLayout


class CTC(SpeechModel):
    lora_trains_in_full = ("lm_head",)  # the head may be new (a vocabulary from the data)

    def __init__(self, model, processor, name: str):
        self.model = model.train(False)  # inference mode: no dropout
        self.processor = processor
        self.name = name
        # the fine-tuning defaults: the library's are 'sum' and no zeroing of impossible paths
        self.model.config.ctc_loss_reduction = "mean"
        self.model.config.ctc_zero_infinity = True

    def _inputs(self, waves: Sequence[np.ndarray]):
        batch = self.processor(
            [np.asarray(w, dtype=np.float32) for w in waves],
            sampling_rate=SAMPLE_RATE,
            return_tensors="pt",
            padding=True,
            return_attention_mask=True,
        )
        return batch.input_values.to(self.model.device), batch.attention_mask.to(self.model.device)

    def _frames(self, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model._get_feat_extract_output_lengths(attention_mask.sum(-1)).long()

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        values, mask = self._inputs(waves)
        logits = self.model(values, attention_mask=mask).logits
        ids = logits.argmax(-1)
        frames = self._frames(mask)
        for row, n in enumerate(frames.tolist()):  # padding frames must not emit characters
            ids[row, n:] = self.processor.tokenizer.pad_token_id
        return [t.strip() for t in self.processor.batch_decode(ids)]

    @torch.inference_mode()
    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        values, mask = self._inputs(waves)
        out = self.model(values, attention_mask=mask, output_hidden_states=True)
        states = torch.stack(out.hidden_states, dim=1)  # (batch, layers, frames, dim)
        frames = self._frames(mask).clamp(min=1, max=states.shape[2])
        keep = torch.arange(states.shape[2])[None, :] < frames[:, None]
        pooled = (states * keep[:, None, :, None]).sum(2) / frames[:, None, None]
        return pooled.float().cpu().numpy()

    def targets(self, text: str) -> list[int]:
        """Character ids of a transcript in the model's vocabulary (unknown characters dropped)."""
        tok = self.processor.tokenizer
        vocab = tok.get_vocab()
        upper = all(c.isupper() for c in vocab if len(c) == 1 and c.isalpha())
        text = text.upper() if upper else text.lower()
        chars = [tok.word_delimiter_token if c == " " else c for c in " ".join(text.split())]
        return [vocab[c] for c in chars if c in vocab]

    @torch.inference_mode()
    def loss(self, waves: Sequence[np.ndarray], texts: Sequence[str]) -> np.ndarray:
        """CTC loss per frame of each transcript."""
        values, mask = self._inputs(waves)
        log_probs = self.model(values, attention_mask=mask).logits.float().log_softmax(-1)
        frames = self._frames(mask)
        labels = [self.targets(t) for t in texts]
        flat = torch.tensor([i for seq in labels for i in seq], dtype=torch.long)
        losses = torch.nn.functional.ctc_loss(
            log_probs.transpose(0, 1),
            flat,
            frames,
            torch.tensor([len(seq) for seq in labels]),
            blank=self.model.config.pad_token_id,
            reduction="none",
            zero_infinity=True,
        )
        return (losses / frames.clamp(min=1)).cpu().numpy().astype(np.float32)

    # -- training ---------------------------------------------------------------------------

    def training_batch(
        self, waves: Sequence[np.ndarray], texts: Sequence[str], layout: TrainingLayout
    ) -> Batch:
        """Input values (one layout: padded rows) and character labels, -100 on padding."""
        batch = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
        targets = [self.targets(t) for t in texts]
        labels = torch.full((len(targets), max(map(len, targets))), -100, dtype=torch.long)
        for row, seq in enumerate(targets):
            labels[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask = batch.get("attention_mask", torch.ones_like(batch.input_values, dtype=torch.long))
        return {
            "input_values": batch.input_values,
            "attention_mask": mask,
            "labels": labels,
            "input_s": torch.tensor(batch.input_values.numel() / SAMPLE_RATE),
        }

    def training_loss(self, module: torch.nn.Module, batch: Batch):
        """CTC loss per frame; the mask marks frames of real audio."""
        out = module(**batch)
        inner = module.module if hasattr(module, "module") else module  # DDP
        inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner  # PEFT
        lengths = inner._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1))
        mask = torch.arange(out.logits.shape[1], device=lengths.device)[None] < lengths[:, None]
        return out.loss, out.logits, mask

    def freeze(self, module: torch.nn.Module, train: str) -> None:
        """'encoder_frozen' trains the head alone; 'feature_encoder_frozen' freezes the
        convolutional front end. CTC models have no decoder to train or hold."""
        if train in ("full", "lora"):
            return
        base = getattr(module, module.base_model_prefix)
        frozen = {"encoder_frozen": [base], "feature_encoder_frozen": [base.feature_extractor]}
        if train not in frozen:
            raise UserError(f"finetune.train: {train!r} needs Whisper; CTC models have no decoder")
        for part in frozen[train]:
            part.requires_grad_(False)
