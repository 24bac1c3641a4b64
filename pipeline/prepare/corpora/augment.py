"""Generated candidates: labelled speech in the target condition's own acoustics.

The unlabelled target audio is the only audio truly recorded in the target condition. Its
non-speech stretches (found by a voice-activity detector, ``pipeline.generate.acoustics``) form
a noise bank, and each target utterance's speech-to-noise ratio is estimated. Each candidate
takes a labelled utterance of another prepared set (the pool, clean or noisy), changes its
speed (tempo and pitch, by resampling), and mixes in a stretch of the bank at one of the
estimated SNRs. Its transcript is the labelled utterance's. ``select`` then accepts candidates
by rejection on a density ratio, so that only those that look like the target train.

The bank is cached under the set's work folder (``sources/<set>/bank/``, one FLAC per target
utterance, and ``bank.json``), keyed by each target file and the detector's settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import soxr

from pipeline import audio, manifest
from pipeline.config import AugmentSource
from pipeline.errors import UserError
from pipeline.fsio import read_json, stable_seed, write_json
from pipeline.generate import acoustics
from pipeline.prepare.corpora.base import Candidate, SourceContext

log = logging.getLogger(__name__)

SOURCE = "augment"
NOISE = "target_bank"  # the manifest's noise name for the target's own noise


def candidates(cfg: AugmentSource, ctx: SourceContext) -> Iterator[Candidate]:
    speech = _read_set(cfg.speech, ctx, "speech")
    target = _read_set(cfg.target, ctx, "target")
    bank = noise_bank(target, ctx.work_dir, cfg.min_noise_s)
    usable = [b for b in bank if b["bank"] is not None]
    snrs = [b["snr_db"] for b in bank if b["snr_db"] is not None]
    if not usable or not snrs:
        raise UserError(
            f"source augment: no non-speech stretch of {cfg.min_noise_s} s or more with speech "
            f"beside it in the {len(target)} utterances of set {cfg.target!r}: no noise bank"
        )
    log.info(
        "augment: noise bank of %d of %d %s utterances (%.1f s of noise); SNR estimated on %d: "
        "median %.1f dB, 10-90%% %.1f to %.1f dB",
        len(usable),
        len(target),
        cfg.target,
        sum(b["noise_s"] for b in usable),
        len(snrs),
        np.median(snrs),
        *np.percentile(snrs, [10, 90]),
    )
    speech = speech.sort_values("id", kind="stable").reset_index(drop=True)
    for k in range(cfg.count):
        rng = np.random.default_rng(stable_seed(ctx.seed, ctx.set_name, SOURCE, k))
        row = speech.iloc[int(rng.integers(len(speech)))]
        noise = usable[int(rng.integers(len(usable)))]
        snr = float(snrs[int(rng.integers(len(snrs)))])
        speed = float(cfg.speeds[int(rng.integers(len(cfg.speeds)))])
        seed = int(rng.integers(2**62))
        origin = str(row["audio_path"])
        bank_file = str(ctx.work_dir / "bank" / noise["bank"])
        yield Candidate(
            id=f"{ctx.set_name}-{k:05d}",
            text=str(row["text"]),
            speaker=str(row["speaker"]),
            accent=str(row["accent"]),
            source=SOURCE,
            spec=repr((Path(origin).name, noise["bank"], round(snr, 3), speed, seed)),
            load=partial(render, origin, bank_file, snr, speed, seed),
            extra={
                "noise": NOISE,
                "snr_db": round(snr, 3),
                "origin": str(row["id"]),
                "origin_noise": str(row["noise"]),
                "speed": speed,
            },
        )


def render(
    origin: str, bank: str, snr_db: float, speed: float, seed: int, sample_rate: int
) -> tuple[np.ndarray, dict]:
    """One candidate's audio (runs in worker processes): ``origin`` at ``speed``, mixed with a
    random stretch of the noise in ``bank`` at ``snr_db``."""
    wave, _ = audio.read(origin, sample_rate)
    if speed != 1.0:  # played back at the same rate: tempo and pitch change together
        wave = soxr.resample(wave, sample_rate * speed, sample_rate).astype(np.float32)
    noise, _ = audio.read(bank, sample_rate)
    rng = np.random.default_rng(seed)
    start = int(rng.integers(len(noise)))
    looped = np.tile(noise, (start + len(wave)) // len(noise) + 1)[start : start + len(wave)]
    return audio.mix_at_snr(wave, looped, snr_db), {}


def noise_bank(target, work_dir: Path, min_noise_s: float) -> list[dict]:
    """Per target utterance (by id): its noise stretches' file under ``work_dir/bank/`` (None
    when it has none), seconds of speech and noise, and estimated SNR (None when unknown).
    Entries whose file and settings are unchanged come from ``bank.json``."""
    index_path = work_dir / "bank.json"
    cached = read_json(index_path) if index_path.exists() else {}
    entries, index = [], {}
    for row in target.sort_values("id", kind="stable").itertuples(index=False):
        path = Path(row.audio_path)
        info = path.stat()
        key = f"{stable_seed(path.name, info.st_size, info.st_mtime_ns, min_noise_s, _VAD):016x}"
        entry = cached.get(key)
        if entry is None or (entry["bank"] and not (work_dir / "bank" / entry["bank"]).exists()):
            wave, _ = audio.read(path)
            found = acoustics.analyse(wave, min_noise_s=min_noise_s)
            name = None
            if len(found.noise):
                name = f"{key}.flac"
                audio.write_flac(work_dir / "bank" / name, found.noise)
            entry = {
                "bank": name,
                "snr_db": found.snr_db,
                "speech_s": found.speech_s,
                "noise_s": found.noise_s,
            }
        index[key] = entry
        entries.append({"id": row.id, **entry})
    if index != cached:
        write_json(index_path, index)
    return entries


# the detector's settings: a change re-analyses the target audio
_VAD = (acoustics.MARGIN_S, acoustics.VAD_THRESHOLD, "silero-vad")


def _read_set(name: str, ctx: SourceContext, role: str):
    path = ctx.manifests / f"{name}.parquet" if ctx.manifests else None
    if path is None or not path.exists():
        raise UserError(
            f"source augment: {role} set {name!r} is not prepared; list it before "
            f"{ctx.set_name!r} in prepare.sets"
        )
    frame = manifest.read(path)
    if frame.empty:
        raise UserError(f"source augment: {role} set {name!r} has no utterance")
    return frame
