"""Test factories: real synthesised speech and manifest rows."""

from __future__ import annotations

import io
import math
import pickle
import subprocess

import numpy as np
import soundfile as sf
from safetensors.torch import load_file

from pipeline import audio, manifest


def speak(text: str, voice: str = "en-us") -> tuple[np.ndarray, int]:
    """Real synthesised speech (espeak-ng, 22.05 kHz) as float32."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], capture_output=True, check=True
    )
    return audio.read(wav.stdout, 22050)[0], 22050


def encode(wave: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def dummy_row(i: int, audio_path: str, **kw) -> dict:
    """A manifest row; keyword arguments override fields."""
    base = {
        "id": f"u{i:03d}",
        "audio_path": audio_path,
        "duration_s": 1.0 + i,
        "text": f"say {i}",
        "speaker": "s1",
        "accent": "us",
        "noise": "clean",
        "snr_db": math.nan,
        "split": "pool",
        "source": "synth",
    }
    return {**base, **kw}


def split_entries(entries) -> tuple[list, list]:
    """A source's output as (candidates, rejects)."""
    from pipeline.corpora.base import Candidate, Reject

    entries = list(entries)
    return (
        [e for e in entries if isinstance(e, Candidate)],
        [e for e in entries if isinstance(e, Reject)],
    )


def assert_speech(cand, duration_s: float) -> None:
    """The candidate loads (after a pickle round trip, as in a worker) as real 16 kHz audio."""
    wave, _ = pickle.loads(pickle.dumps(cand.load))(16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - duration_s * 16000) <= 16
    assert np.sqrt(np.mean(wave**2)) > 0.01


TEXTS = ["turn on the lights", "what time is it", "play some music"]


def write_subset(root, name, counts=(1, 2, 1)):
    """A select-stage subset manifest over real espeak-ng speech (``count`` repeats rows)."""
    rows = []
    for i, text in enumerate(TEXTS):
        path = root / "audio" / f"u{i}.flac"
        if not path.exists():
            wave, rate = speak(text)
            audio.write_flac(path, wave, rate)
        rows.append(dummy_row(i, str(path), text=text, duration_s=audio.duration_s(path)))
    frame = manifest.to_frame(rows).assign(count=list(counts))
    manifest.write(frame, root / "select" / name / "subset.parquet", root=root)


def weights(recipe, subset="rsft"):
    return load_file(recipe.root / "finetune" / subset / "model" / "model.safetensors")
