"""Noisy copies: real recordings, babble of other utterances, white and pink noise.

Every recording is cut into regions (e.g. the first 60% for training sets, the last 30% for
test sets) so that test noise is never heard in training. A noise *bank* (many recordings, such
as MUSAN's noise part) is split by recording instead: each region owns a fixed share of the
bank's files and each noisy copy draws one of them. A noisy copy is fully described by a
``NoisyJob``: the same job always gives the same audio, whichever process runs it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import audio
from pipeline.config import NoiseConfig, PrepareConfig
from pipeline.errors import UserError
from pipeline.fsio import stable_seed
from pipeline.prepare.corpora.base import audio_file_name

GENERATED = ("white", "pink")
BABBLE = "babble"
# short names for the sonic-pi recordings used by the recipes; any other sample stem works too
SONIC_PI = {
    "vinyl_hiss": "vinyl_hiss",
    "3d_printer": "loop_3d_printer",
    "sauna": "ambi_sauna",
    "safari": "loop_safari",
}
AUDIO_SUFFIXES = (".flac", ".wav", ".ogg")


@dataclass(frozen=True)
class NoisyJob:
    id: str
    clean_path: str
    out_path: str
    noise: str  # noise name, as written to the manifest
    snr_db: float
    seed: int
    recording: tuple[str, ...] = ()  # files of a recorded noise (concatenated)
    region: tuple[float, float] = (0.0, 1.0)  # fraction of the recording this job may use
    babble: tuple[str, ...] = ()  # clean utterances mixed into babble


def recording_files(name: str, prep: PrepareConfig) -> tuple[str, ...]:
    """Files behind a recorded noise name; UserError if the name is unknown or missing."""
    if name in prep.noise_files:
        path = Path(prep.noise_files[name])
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        files = [path] if path.is_file() else files
        if not files:
            raise UserError(f"prepare.noise_files.{name}: no audio files in {path}")
        return tuple(str(p) for p in files)
    stem = SONIC_PI.get(name, name)
    path = Path(prep.sonic_pi_dir) / f"{stem}.flac"
    if not path.is_file():
        hint = "apt-get install sonic-pi-samples" if name in SONIC_PI else "add it to noise_files"
        raise UserError(f"noise {name!r}: recording not found at {path} ({hint})")
    return (str(path),)


def bank_share(files: tuple[str, ...], region: tuple[float, float]) -> tuple[str, ...]:
    """The recordings of a bank that a region may use: a fixed share of its files.

    Files are ordered by a hash of their names, so every share mixes the bank's folders.
    """
    order = sorted(files, key=lambda f: (stable_seed("noise bank", Path(f).name), f))
    lo, hi = (round(f * len(order)) for f in region)
    return tuple(order[lo:hi])


def plan(
    row: dict,
    cfg: NoiseConfig,
    prep: PrepareConfig,
    seed: int,
    set_name: str,
    others: list[dict],
    out_dir: Path,
    banks: dict[str, tuple[str, ...]] | None = None,
) -> list[NoisyJob]:
    """The noisy copies of one clean row, drawn with an RNG of its own (order-independent).

    ``banks`` holds the recordings of the noise banks (``prepare.noise_sources``) by name.
    """
    rng = np.random.default_rng(stable_seed(seed, set_name, row["id"], "noise"))
    if cfg.per_utterance == "one":
        conditions = [
            (cfg.types[rng.integers(len(cfg.types))], cfg.snr_db[rng.integers(len(cfg.snr_db))])
        ]
    else:
        conditions = [(cfg.types[rng.integers(len(cfg.types))], snr) for snr in cfg.snr_db]
    jobs = []
    for noise, snr in conditions:
        job_seed = int(rng.integers(2**62))
        recording: tuple[str, ...] = ()
        babble: tuple[str, ...] = ()
        region = tuple(prep.noise_regions[cfg.region])
        if noise == BABBLE:
            babble = _talkers(row, others, cfg.babble_talkers, rng)
        elif banks and noise in banks:
            share = bank_share(banks[noise], region)
            if not share:
                raise UserError(
                    f"noise {noise!r}: region {cfg.region!r} gets none of the bank's "
                    f"{len(banks[noise])} recordings; the bank is too small"
                )
            recording, region = (share[int(rng.integers(len(share)))],), (0.0, 1.0)
        elif noise not in GENERATED:
            recording = recording_files(noise, prep)
        uid = f"{row['id']}_{noise}_{snr:g}dB"
        # file names (which carry their own spec hash), not folders: the same audio gets the
        # same name under any data root
        names = [Path(p).name for p in (row["audio_path"], *recording, *babble)]
        spec = (names, noise, snr, job_seed, region)
        name = audio_file_name(uid, spec)
        jobs.append(
            NoisyJob(
                uid,
                row["audio_path"],
                str(out_dir / name),
                noise,
                float(snr),
                job_seed,
                recording,
                region,
                babble,
            )
        )
    return jobs


def _talkers(row: dict, others: list[dict], talkers: tuple[int, int], rng) -> tuple[str, ...]:
    """Babble talkers: other utterances, by other speakers where the set has them."""
    k = int(rng.integers(talkers[0], talkers[1] + 1))
    picked: list[int] = []
    for _ in range(50 * k):  # random probes: cheap on large sets, bounded on tiny ones
        i = int(rng.integers(len(others)))
        if (
            i not in picked
            and others[i]["id"] != row["id"]
            and others[i]["speaker"] != row["speaker"]
        ):
            picked.append(i)
            if len(picked) == k:
                break
    if not picked:
        picked = [i for i, o in enumerate(others) if o["id"] != row["id"]][:k]
    if not picked:
        raise UserError("babble needs at least two utterances in the set")
    return tuple(others[i]["audio_path"] for i in sorted(picked))


def make(job: NoisyJob, sample_rate: int = audio.SAMPLE_RATE) -> dict:
    """Mix and write one noisy copy (runs in worker processes); return its manifest fields."""
    if not Path(job.out_path).exists():
        speech, _ = audio.read(job.clean_path, sample_rate)
        rng = np.random.default_rng(job.seed)
        noise = segment(job, len(speech), rng, sample_rate)
        audio.write_flac(job.out_path, audio.mix_at_snr(speech, noise, job.snr_db), sample_rate)
    return {
        "id": job.id,
        "audio_path": job.out_path,
        "noise": job.noise,
        "snr_db": job.snr_db,
        "duration_s": audio.duration_s(job.out_path),
    }


def segment(job: NoisyJob, length: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """``length`` samples of the job's noise."""
    if job.noise == "white":
        return rng.standard_normal(length).astype(np.float32)
    if job.noise == "pink":
        return pink(length, rng)
    if job.babble:
        talkers = [_loop(audio.read(p, sample_rate)[0], length, rng) for p in job.babble]
        # equal active level per talker, so no single voice stands out
        return np.sum([t / np.sqrt(audio.active_level(t) + 1e-12) for t in talkers], axis=0)
    full = _recording(job.recording, sample_rate)
    lo, hi = (int(f * len(full)) for f in job.region)
    return _loop(full[lo:hi], length, rng)


def pink(length: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(length))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    wave = np.fft.irfft(spectrum / np.sqrt(freqs), n=length)
    return (wave / (np.std(wave) + 1e-12)).astype(np.float32)


def _loop(wave: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples from ``wave`` starting at a random offset, wrapping around."""
    if len(wave) == 0:
        raise audio.AudioError("noise region is empty")
    start = int(rng.integers(len(wave)))
    reps = (start + length) // len(wave) + 1
    return np.tile(wave, reps)[start : start + length]


@functools.lru_cache(maxsize=16)
def _recording(files: tuple[str, ...], sample_rate: int) -> np.ndarray:
    return np.concatenate([audio.read(f, sample_rate)[0] for f in files])
