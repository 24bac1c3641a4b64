"""What trains in stage 4, and what keeps the fine-tuned model close to the pretrained one.

The model chooses its trainable part (``SpeechModel.freeze``, finetune.train); ``add_lora``
puts adapters on it instead.

Fine-tuning a recogniser on a few hundred utterances of one condition gains there and loses
on everything else (design.md: +3.5 to +7.5 WER points on real speech in a prototype). The
means offered here, each measured in recipes/RESULTS.md:

- ``Anchor``: a frozen copy of the pretrained model for distillation (KL divergence from its
  output distribution to the model's, on every label position or CTC frame) and the
  pretrained weights for an L2-SP penalty (squared distance of the trained weights to them);
- ``add_lora``: peft LoRA adapters, the base weights frozen; ``plain`` merges them back, so
  the saved model is an ordinary transformers model;
- ``interpolate``: the saved weights mixed with the pretrained ones (WiSE-FT);
- replay of pool data (``batches.EpochBatches``) and a guard set watched during training
  (``validation``) live with the batches and the dev WER.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model

from pipeline.config import FinetuneConfig
from pipeline.errors import UserError

# (module, batch) -> (mean loss, logits, mask of the positions that count)
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor]], tuple]


class Anchor:
    """What the trained model is held to: the frozen pretrained model (distillation) and
    its trainable weights at the start (L2-SP). Built before training starts."""

    def __init__(
        self, model: torch.nn.Module, cfg: FinetuneConfig, device: torch.device, loss: LossFn
    ):
        self.distill_weight, self.l2_weight = cfg.distill_weight, cfg.l2_weight
        self.loss = loss  # the model's training loss (SpeechModel.training_loss)
        self.teacher = None
        if self.distill_weight > 0:
            frozen = plain(model) if isinstance(model, PeftModel) else copy.deepcopy(model)
            self.teacher = frozen.to(device).train(False).requires_grad_(False)
        self.start: dict[str, torch.Tensor] = {}
        if self.l2_weight > 0:
            self.start = {
                name: p.detach().clone().to(device)
                for name, p in model.named_parameters()
                if p.requires_grad
            }

    @property
    def active(self) -> bool:
        return self.teacher is not None or bool(self.start)

    def penalty(self, model, batch, logits, mask) -> torch.Tensor:
        """distill_weight * KL(teacher || model) + l2_weight * ||theta - theta_0||^2 / 2."""
        total = logits.new_zeros((), dtype=torch.float32)
        if self.teacher is not None:
            with torch.no_grad():
                _, teacher_logits, _ = self.loss(self.teacher, batch)
            total = total + self.distill_weight * kl_divergence(teacher_logits, logits, mask)
        if self.start:
            inner = model.module if hasattr(model, "module") else model
            squared = [
                (p.float() - self.start[name]).pow(2).sum()
                for name, p in inner.named_parameters()
                if name in self.start
            ]
            total = total + 0.5 * self.l2_weight * torch.stack(squared).sum()
        return total


def kl_divergence(teacher_logits, logits, mask) -> torch.Tensor:
    """Mean over the masked positions of KL(softmax(teacher) || softmax(logits))."""
    teacher = F.log_softmax(teacher_logits.float(), dim=-1)
    student = F.log_softmax(logits.float(), dim=-1)
    per_position = (teacher.exp() * (teacher - student)).sum(-1)
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def add_lora(model: torch.nn.Module, cfg: FinetuneConfig, keep: tuple[str, ...] = ()) -> PeftModel:
    """LoRA adapters on ``cfg.lora_modules`` (base weights frozen); the modules in ``keep``
    train in full (``SpeechModel.lora_trains_in_full``: a CTC head may be new)."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [m for m in cfg.lora_modules if m in names]
    if not targets:
        raise UserError(
            f"finetune.lora_modules: none of {list(cfg.lora_modules)} is a module of "
            f"{model.config.model_type} (e.g. q_proj, v_proj)"
        )
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        modules_to_save=list(keep) or None,
    )
    return get_peft_model(model, config)


def inner(module: torch.nn.Module) -> torch.nn.Module:
    """The transformers model to decode with (LoRA adapters active inside it)."""
    return module.get_base_model() if isinstance(module, PeftModel) else module


def plain(module: torch.nn.Module) -> torch.nn.Module:
    """The transformers model to save: adapters merged into a copy, the training one intact."""
    if isinstance(module, PeftModel):
        return copy.deepcopy(module).merge_and_unload()
    return module


def interpolate(
    model: torch.nn.Module,
    pretrained: torch.nn.Module,
    weight: float,
    decoder_weight: float | None = None,
    is_decoder: Callable[[str], bool] | None = None,
) -> int:
    """Weight-space ensembling (WiSE-FT, Wortsman et al. 2022): set each parameter of
    ``model`` to ``weight`` * trained + (1 - ``weight``) * pretrained, in place; the decoder's
    parameters (``is_decoder``, the model's ``SpeechModel.is_decoder``) with ``decoder_weight``
    instead, when given.

    Parameters the pretrained model lacks or holds in another shape (a CTC head built for a
    new vocabulary) keep their trained values; buffers are left alone. Tied weights are one
    parameter, mixed once. Returns how many parameters were mixed."""
    for w in (weight, decoder_weight):
        if w is not None and not 0.0 <= w <= 1.0:
            raise ValueError(f"interpolation weight {w} is outside [0, 1]")
    if decoder_weight is not None and is_decoder is None:
        raise ValueError("a decoder weight needs is_decoder")
    start = dict(pretrained.named_parameters())
    mixed = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            ref = start.get(name)
            if ref is None or ref.shape != param.shape:
                continue
            w = decoder_weight if decoder_weight is not None and is_decoder(name) else weight
            param.lerp_(ref.to(param.device, param.dtype), 1.0 - w)
            mixed += 1
    return mixed
