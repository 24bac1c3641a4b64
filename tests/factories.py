"""Test factories: real synthesised speech and manifest rows."""

from __future__ import annotations

import io
import math
import pickle
import subprocess

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import transformers
from safetensors.torch import load_file

from pipeline import audio, manifest
from pipeline.fsio import write_json
from pipeline.models import bundled


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
    from pipeline.prepare.corpora.base import Candidate, Reject

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


# -- a scored set without audio (select, report and experiment tests) --

ACCENTS = ["us", "gb", "caribbean"]
NOISES = [("clean", np.nan), ("sauna", 0.0), ("white", 10.0)]


def fake_scored_set(root, name, groups, rng, with_wer=True):
    """Manifest, embeddings and scores as the score stage writes them (no audio needed)."""
    rows, emb = [], []
    centres = {(a, n): rng.normal(size=16) for a in ACCENTS for n, _ in NOISES}
    for i, (accent, (noise, snr)) in enumerate(groups):
        rows.append(
            dummy_row(
                i,
                f"/audio/{name}{i}.flac",
                id=f"{name}-{i:05d}",
                accent=accent,
                noise=noise,
                snr_db=snr,
                split=name,
            )
        )
        emb.append(centres[(accent, noise)] * 0.8 + rng.normal(size=16))
    frame = manifest.to_frame(rows)
    manifest.write(frame, root / "prepare" / "manifests" / f"{name}.parquet", root=root)
    out = root / "score" / name
    out.mkdir(parents=True)
    np.save(out / "embeddings.npy", np.asarray(emb, dtype=np.float16))
    wer = rng.uniform(0, 1, len(frame)) if with_wer else np.full(len(frame), np.nan)
    pd.DataFrame(
        {"id": frame["id"], "loss": rng.uniform(0.5, 3, len(frame)), "wer": wer}
    ).to_parquet(out / "scores.parquet")
    write_json(out / "done.json", {"key": "test"})


def small_whisper(spec) -> transformers.WhisperForConditionalGeneration:
    """A 1-layer random Whisper (seeded) with the vocabulary of the bundled model ``spec``."""
    config = transformers.WhisperConfig(
        vocab_size=spec.no_timestamps + 1 + bundled.N_TIMESTAMPS,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        pad_token_id=spec.eot,
        bos_token_id=spec.sot,
        eos_token_id=spec.eot,
        decoder_start_token_id=spec.sot,
    )
    torch.manual_seed(0)
    return transformers.WhisperForConditionalGeneration(config)
