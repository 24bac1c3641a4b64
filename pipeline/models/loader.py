"""Load a recogniser by name: ``bundled:whisper-tiny.en``, a local folder, or a hub id."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers

from pipeline import resources
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models.base import SpeechModel
from pipeline.models.wav2vec2 import CTC
from pipeline.models.whisper import Whisper

log = logging.getLogger(__name__)

OFFLINE_HINT = "use bundled:whisper-tiny.en (offline) or a local folder written by save_pretrained"


def load(cfg: ModelConfig, cache_dir: Path) -> SpeechModel:
    """The model named in ``cfg``, wrapped for the stages; UserError if it cannot be had."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.name.startswith("bundled:"):
        from pipeline.models import bundled

        model, processor = bundled.load_bundled(cache_dir, name=cfg.name)
    else:
        model, processor = _from_pretrained(cfg.name)
    if cfg.adapter is not None:
        model = with_adapter(model, cfg.adapter)
    kind = model.config.model_type
    if kind == "whisper":
        return Whisper(
            model,
            processor,
            cfg.name,
            layout=cfg.layout,
            context_s=cfg.context_s,
            pack_gap_s=cfg.pack_gap_s,
            tokens_per_s=cfg.tokens_per_s,
            bf16=resources.native_bf16(model.device) if cfg.bf16 == "auto" else cfg.bf16,
            loop_repeats=cfg.loop_repeats,
            decode_attention=cfg.decode_attention,
            language=cfg.language,
            task=cfg.task,
        )
    if hasattr(model, "lm_head"):  # wav2vec2, HuBERT, WavLM, ... with a CTC head
        ctc = CTC(model, processor, cfg.name)
        ctc.language = cfg.language  # its vocabulary is its language: this names it for text
        return ctc
    raise UserError(f"model {cfg.name!r}: model type {kind!r} is neither Whisper nor CTC")


def with_adapter(model, folder: str):
    """``model`` with the LoRA adapter in ``folder`` merged into its weights (a copy of the
    base is never kept: the base is read again without the adapter)."""
    from peft import PeftModel

    path = Path(folder).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise UserError(f"model.adapter: no LoRA adapter (adapter_config.json) in {path}")
    try:
        return PeftModel.from_pretrained(model, str(path)).merge_and_unload()
    except (ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"model.adapter: {path} does not fit the model: {err}") from None


def decoding_revisions() -> tuple[int, ...]:
    """Every model kind's decoding revision: for a key taken before the model is loaded."""
    return (Whisper.decoding_revision, CTC.decoding_revision)


def with_layout(model: SpeechModel, layout: str) -> SpeechModel:
    """The same weights read in another Whisper input layout (CTC models have one layout)."""
    if not isinstance(model, Whisper) or model.layout == layout:
        return model
    return Whisper(
        model.model,
        model.processor,
        model.name,
        layout=layout,
        context_s=model.configured_context_s,
        pack_gap_s=model.pack_gap_s,
        tokens_per_s=model.tokens_per_s,
        bf16=model.bf16,
        loop_repeats=model.loop_repeats,
        decode_attention=model.decode_attention,
        language=model.language,
        task=model.task,
    )


def _from_pretrained(name: str):
    """Local files first (a folder, or the hub cache); then the hub, never running remote code."""
    local = Path(name).expanduser()
    if name.startswith((".", "/", "~")) and not local.exists():
        raise UserError(f"model folder not found: {name}")
    errors = []
    for local_only in (True, False):
        if local.exists() and not local_only:
            break
        try:
            config = transformers.AutoConfig.from_pretrained(name, local_files_only=local_only)
            cls = (
                transformers.WhisperForConditionalGeneration
                if config.model_type == "whisper"
                else transformers.AutoModelForCTC
            )
            model = cls.from_pretrained(name, local_files_only=local_only)
            processor = transformers.AutoProcessor.from_pretrained(
                name, local_files_only=local_only
            )
            return model, processor
        except (OSError, ValueError) as err:
            errors.append(str(err).splitlines()[0][:160])
    if local.exists():
        raise UserError(f"model folder {name} could not be loaded: {errors[0]}")
    raise UserError(
        f"model {name!r} could not be loaded: not in the local cache and the hub is "
        f"unreachable (offline?); {OFFLINE_HINT}"
    )
