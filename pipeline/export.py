"""``rsft export``: a fine-tuned (or the pretrained) Whisper as a CTranslate2 folder that
faster-whisper loads as it is, for deployment in an assistant.

The model is read as every stage reads it (``models.loader``: a LoRA run's adapters already
merged in its saved folder; ``--adapter`` merges one user's adapter into the base model),
saved in full precision, and converted by CTranslate2's own converter with the tokenizer and
the feature extractor's settings beside it. The folder is written beside its final place and
renamed into it, with ``export.json`` recording what it came from.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.fsio import write_json
from pipeline.models import loader

log = logging.getLogger(__name__)

QUANTIZATIONS = ("int8", "int8_float32", "int8_bfloat16", "int8_float16", "float16", "float32")
# what faster-whisper reads beside model.bin: the tokenizer and the log-mel settings
COPIED = ("tokenizer.json", "preprocessor_config.json")


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
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise UserError("rsft export needs ctranslate2 (pip install ctranslate2)") from None
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
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        plain = staging / "transformers"
        model.model.float().save_pretrained(plain)
        model.processor.save_pretrained(plain)
        # faster-whisper reads the log-mel settings from the feature extractor's own file
        features = model.processor.feature_extractor
        features.to_json_file(str(plain / "preprocessor_config.json"))
        converted = staging / "ct2"
        TransformersConverter(str(plain), copy_files=list(COPIED)).convert(
            str(converted), quantization=quantization
        )
        record = {
            "source": str(source),
            "adapter": adapter,
            "quantization": quantization,
            "language": model.language,
            "multilingual": model.multilingual,
            "prefix": model.prefix,
        }
        write_json(converted / "export.json", record)
        if out.exists():  # an earlier export: set aside, then replaced in one rename
            out.rename(staging / "old")
        converted.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s (%s) to %s", source, quantization, out)
    print(f"exported {source} ({quantization}) to {out}: load it with faster_whisper.WhisperModel")
    return out
