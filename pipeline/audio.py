"""Audio I/O and mixing: read with soundfile, resample with soxr, mix at an SNR on active speech."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from pipeline.fsio import atomic_path

SAMPLE_RATE = 16000  # Hz; every prepared utterance is mono at this rate
MIN_SOURCE_RATE = 8000  # Hz; below this a recording has lost the speech band
FRAME_S = 0.02  # 20 ms frames for the active-speech level
STREAMED_WAV_SIZE = 0x7FFF0000  # data sizes from here up are placeholders of streamed WAVs
ACTIVE_FLOOR_DB = 40.0  # frames more than this below the loudest frame count as pauses


class AudioError(ValueError):
    """Audio that cannot be used; the message is the reject reason."""


def read(src: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict]:
    """Decode ``src`` (a path or encoded bytes) to mono float32 at ``sample_rate``.

    Returns the samples and a dict of what was changed (``downmixed``, ``resampled_from``).
    Raises AudioError with a one-line reason for audio that cannot be used.
    """
    try:
        if isinstance(src, bytes):
            short = _wav_shortfall(io.BytesIO(src), len(src))
        else:
            with open(src, "rb") as fh:
                short = _wav_shortfall(fh, Path(src).stat().st_size)
    except OSError as err:
        raise AudioError(f"unreadable audio: {err.strerror or err}") from None
    if short:
        raise AudioError(short)
    try:
        handle = io.BytesIO(src) if isinstance(src, bytes) else src
        wave, rate = sf.read(handle, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise AudioError(f"unreadable audio: {str(err).splitlines()[0][:120]}") from None
    changes: dict = {}
    if wave.shape[0] == 0:
        raise AudioError("empty audio (zero samples)")
    if not np.isfinite(wave).all():
        raise AudioError("non-finite samples (NaN or inf)")
    if rate < MIN_SOURCE_RATE:
        raise AudioError(f"sample rate {rate} Hz is below the {MIN_SOURCE_RATE} Hz minimum")
    if wave.shape[1] > 1:
        changes["downmixed"] = int(wave.shape[1])
    mono = wave.mean(axis=1)
    if rate != sample_rate:
        mono = soxr.resample(mono, rate, sample_rate, quality="HQ")
        changes["resampled_from"] = int(rate)
    return np.ascontiguousarray(mono, dtype=np.float32), changes


def _wav_shortfall(fh, size: int) -> str | None:
    """The reject reason of a RIFF WAV whose data chunk holds fewer bytes than its header
    declares (a cut download or copy), else None. libsndfile reads such a file without a
    word, as if the recording were that short, so its transcript would be kept with a part
    of its audio. Other formats pass, and so do WAVs written to a stream, whose header
    holds a placeholder size (0, or near 2**31 or 2**32: espeak-ng writes 0x7FFFF000)."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= size:
        fh.seek(pos)
        chunk, length = struct.unpack("<4sI", fh.read(8))
        if chunk == b"data":
            held = size - pos - 8
            if 0 < length < STREAMED_WAV_SIZE and held < length:
                return (
                    f"truncated WAV: header declares {length} bytes of samples, file holds {held}"
                )
            return None
        pos += 8 + length + (length & 1)  # chunks are word-aligned
    return None


def telephone_band(
    wave: np.ndarray, sample_rate: int = SAMPLE_RATE, rate: int = 8000
) -> np.ndarray:
    """``wave`` as a telephone line carries it: down to ``rate`` (soxr's anti-alias filter
    drops everything above ``rate / 2``) and back up, the same length, float32."""
    narrow = soxr.resample(np.asarray(wave, dtype=np.float32), sample_rate, rate, quality="HQ")
    back = soxr.resample(narrow, rate, sample_rate, quality="HQ").astype(np.float32)
    if len(back) >= len(wave):
        return back[: len(wave)]
    return np.pad(back, (0, len(wave) - len(back)))


def write_flac(path: str | Path, wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Atomically write 16-bit mono FLAC, scaling down if the peak would clip."""
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 0.999:
        wave = wave * (0.999 / peak)
    encoded = io.BytesIO()
    sf.write(encoded, wave, sample_rate, subtype="PCM_16", format="FLAC")
    # written by Python, not libsndfile: a full disk is then an OSError naming the file and
    # the cause (libsndfile reports only "System error.")
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(encoded.getvalue())
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(path)) from None


def duration_s(path: str | Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def active_level(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Mean power over active frames (within ACTIVE_FLOOR_DB of the loudest frame).

    SNRs are set on this level so that leading and trailing silence does not change how
    loud the noise is relative to the speech.
    """
    frame = max(1, int(FRAME_S * sample_rate))
    usable = len(wave) // frame * frame
    if usable == 0:
        return float(np.mean(wave.astype(np.float64) ** 2))
    power = np.mean(wave[:usable].astype(np.float64).reshape(-1, frame) ** 2, axis=1)
    floor = power.max() * 10 ** (-ACTIVE_FLOOR_DB / 10)
    active = power[power >= floor]
    return float(active.mean())


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Add ``noise`` (same length) scaled so that active speech is ``snr_db`` above it."""
    if len(noise) != len(speech):
        raise ValueError("speech and noise lengths differ")
    speech_power = active_level(speech)
    noise_power = float(np.mean(noise.astype(np.float64) ** 2))
    if speech_power <= 0 or noise_power <= 0:
        raise AudioError("silent speech or noise: SNR undefined")
    gain = np.sqrt(speech_power / (noise_power * 10 ** (snr_db / 10)))
    return (speech + gain * noise).astype(np.float32)
