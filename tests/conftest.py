"""Shared fixtures: real speech from espeak-ng, and a recipe writer."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
import yaml

from pipeline import audio
from pipeline.config import load_recipe
from pipeline.fsio import read_json
from pipeline.models import bundled
from tests.factories import small_whisper, write_subset


@pytest.fixture
def speech() -> np.ndarray:
    """About two seconds of real speech at 16 kHz."""
    wave, _ = audio.read(
        subprocess.run(
            ["espeak-ng", "--stdout", "Turn on the kitchen lights please."],
            capture_output=True,
            check=True,
        ).stdout
    )
    return wave


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict to a YAML file under tmp_path, with data_dir inside tmp_path."""

    def _write(data: dict, name: str = "recipe.yaml") -> Path:
        data = {"name": "t", "data_dir": str(tmp_path / "data"), **data}
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory):
    """A 2-layer random Whisper with the bundled model's real tokenizer, saved to a folder."""
    src = bundled.bundled_source_dir()
    model = small_whisper(bundled.TINY_EN)
    model.generation_config = bundled.generation_config(read_json(src / "config.json"), 448)
    out = tmp_path_factory.mktemp("tiny_whisper")
    model.save_pretrained(out)
    bundled.processor(src).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_ctc_dir(tmp_path_factory):
    """A small random wav2vec2 CTC model with a character vocabulary."""
    out = tmp_path_factory.mktemp("tiny_ctc")
    letters = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ'")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, **{c: i + 3 for i, c in enumerate(letters)}}
    (out / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = transformers.Wav2Vec2CTCTokenizer(out / "vocab.json", word_delimiter_token="|")
    extractor = transformers.Wav2Vec2FeatureExtractor(return_attention_mask=True)
    transformers.Wav2Vec2Processor(
        feature_extractor=extractor, tokenizer=tokenizer
    ).save_pretrained(out)
    config = transformers.Wav2Vec2Config(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(32, 32, 32),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 8),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    transformers.Wav2Vec2ForCTC(config).save_pretrained(out)
    return out


@pytest.fixture
def ft_recipe(write_recipe, tmp_path, tiny_whisper_dir):
    """Write a recipe for the tiny Whisper (overrides on top) and the 'rsft' subset."""

    def make(model_dir=tiny_whisper_dir, **finetune_cfg):
        cfg = {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, **finetune_cfg}
        path = write_recipe({"model": {"name": str(model_dir)}, "finetune": cfg})
        recipe = load_recipe(path)
        write_subset(recipe.root, "rsft")
        return path, recipe

    return make
