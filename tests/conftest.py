"""Shared fixtures: real speech from espeak-ng, and a recipe writer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import audio


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
