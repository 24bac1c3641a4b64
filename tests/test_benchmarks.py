"""Benchmark scripts run end to end on tiny inputs (the figures themselves are not checked)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import audio, manifest
from tests.factories import dummy_row, speak

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["turn on the lights", "what time is it", "play some music", "set a timer"]


def write_set(root: Path, path: Path, split: str) -> None:
    """A manifest over real espeak-ng speech, one utterance per text."""
    rows = []
    for i, text in enumerate(TEXTS):
        wav = root / "audio" / split / f"u{i}.flac"
        wave, rate = speak(text)
        audio.write_flac(wav, wave, rate)
        rows.append(
            dummy_row(i, str(wav), text=text, split=split, duration_s=audio.duration_s(wav))
        )
    manifest.write(manifest.to_frame(rows), path, root=root)


@pytest.mark.slow  # 40-60 s here: two child processes, each importing torch and transformers
def test_finetune_throughput_quick(tmp_path, tiny_whisper_dir):
    root = tmp_path / "demo"
    write_set(root, root / "select" / "rsft" / "subset.parquet", "pool")
    write_set(root, root / "prepare" / "manifests" / "dev_target.parquet", "dev")
    out = tmp_path / "figures.json"
    command = [sys.executable, "benchmarks/finetune_throughput.py", "--quick"]
    command += ["--data-root", str(root), "--model", str(tiny_whisper_dir), "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rsft / standard, audio seconds per second" in done.stdout
    figures = json.loads(out.read_text())
    settings, recipes = figures["settings"], figures["recipes"]
    assert settings["utterances"] == 4 and settings["steps"] == 2  # batch 2, one epoch
    for name in ("standard", "rsft"):
        row = recipes[name]
        assert row["steps"] == 2, name
        assert row["timed_s"] > 0 and row["audio_s_per_s"] > 0 and row["peak_rss_mib"] > 0
        assert 0 <= row["dev_wer"] < 100
    assert figures["ratio"] > 0
