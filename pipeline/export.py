"""``rsft export``: a fine-tuned (or the pretrained) Whisper as a CTranslate2 folder that
faster-whisper loads as it is, for deployment in an assistant.

The model is read as every stage reads it (``models.loader``: a LoRA run's adapters already
merged in its saved folder; ``--adapter`` merges one user's adapter into the base model),
saved in full precision, and converted by CTranslate2's own converter with the tokenizer and
the feature extractor's settings beside it (``models.ct2.convert``, which model.engine ct2
uses too). The folder is written beside its final place and renamed into it, with
``export.json`` recording what it came from.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.models import ct2, loader

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int8_float16", "float16", "float32")


def model_folder(recipe: Recipe, run: str) -> Path:
    """A run's saved model (``finetune/<run>/model``), a model folder, or the recipe's own
    pretrained model for ``pretrained``."""
    if run == "pretrained":
        return Path(recipe.model.name)
    path = Path(run).expanduser()
    if path.is_dir():
        return path
    saved = recipe.tree.model(run)
    if not saved.is_dir():
        raise UserError(f"no model for run {run!r} at {saved} (run: rsft finetune), nor a folder")
    return saved


def run(
    recipe: Recipe,
    run_name: str,
    quantization: str = "int8",
    out: Path | None = None,
    adapter: str | None = None,
) -> Path:
    """Export ``run_name``'s model to ``out`` (default: ``<data_dir>/export/<run>-ct2-<q>``)."""
    if quantization not in QUANTIZATIONS:
        raise UserError(f"--quantization {quantization!r}: one of {', '.join(QUANTIZATIONS)}")
    ct2.require()
    source = model_folder(recipe, run_name)
    name = run_name if not Path(run_name).is_dir() else Path(run_name).name
    out = Path(out) if out else recipe.tree.export(f"{name}-ct2-{quantization}")
    if out.exists() and any(out.iterdir()) and not (out / "export.json").is_file():
        raise UserError(f"--out {out}: not empty and not an earlier export; name a new folder")
    model = loader.load(
        replace(recipe.model, name=str(source), adapter=adapter), recipe.tree.models
    )
    if not model.exports_to_ct2:
        raise UserError(f"{source}: only Whisper models export to CTranslate2 (this is CTC)")
    record = {
        "source": str(source),
        "adapter": adapter,
        "quantization": quantization,
        "language": model.language,
        "multilingual": model.multilingual,
        "prefix": model.prefix,
    }
    ct2.convert(model, out, quantization, record)
    log.info("exported %s (%s) to %s", source, quantization, out)
    print(f"exported {source} ({quantization}) to {out}: load it with faster_whisper.WhisperModel")
    return out
