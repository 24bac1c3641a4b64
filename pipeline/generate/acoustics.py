"""What makes a target condition, estimated from its unlabelled audio alone.

A voice-activity detector (Silero VAD, whose weights ship in the ``silero-vad`` wheel) marks
the speech in each target utterance. What lies outside speech, with a margin, is the
condition's noise as the microphone heard it: the stretches form a *noise bank*. The
speech-to-noise ratio of an utterance is estimated as ``audio.mix_at_snr`` defines it (the
clean speech's active level over the noise's mean power): the noise power is measured on the
utterance's own non-speech stretches and subtracted from each speech frame's power.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch

from pipeline import audio
from pipeline.errors import UserError

MARGIN_S = 0.08  # left out on each side of a speech segment: onsets and decays are not noise
MIN_NOISE_S = 0.1  # shorter non-speech stretches are not kept
VAD_THRESHOLD = 0.5  # Silero's speech probability threshold (its default)


CHUNK = 512  # Silero VAD at 16 kHz: one probability per 32 ms
CONTEXT = 64  # samples of the previous chunk each chunk sees


class SileroVAD(torch.nn.Module):
    """Silero VAD (16 kHz) in plain PyTorch, with the weights of the safetensors file in the
    ``silero-vad`` wheel: no code is loaded from a model file (the wheel's default model is
    TorchScript, which is, and holds other weights). The layers and the chunk-by-chunk
    recurrence are the wheel's own port (``silero_vad/tinygrad_model.py``); here the
    convolutions run on every chunk at once and only the LSTM cell steps through them
    (tests/test_generate.py checks this against the chunk-by-chunk loop)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)
        self.conv1 = nn.Conv1d(129, 128, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, kernel_size=3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, kernel_size=3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, kernel_size=3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @torch.inference_mode()
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Speech probability of each 512-sample chunk of a 16 kHz mono ``wave`` (the last
        chunk zero-padded)."""
        pad = -len(wave) % CHUNK
        wave = torch.nn.functional.pad(wave, (CONTEXT, pad))
        chunks = wave.unfold(0, CHUNK + CONTEXT, CHUNK)  # each with its 64-sample context
        x = torch.nn.functional.pad(chunks, (0, 64), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = conv(x).relu()
        x = x.squeeze(-1)  # (chunks, 128): one frame per chunk
        h = c = torch.zeros(1, 128)
        states = []
        for frame in x:  # the state runs on from chunk to chunk
            h, c = self.lstm_cell(frame.unsqueeze(0), (h, c))
            states.append(h)
        out = self.final_conv(torch.cat(states).relu().unsqueeze(-1)).sigmoid()
        return out.reshape(-1)


@functools.lru_cache(maxsize=1)
def _silero() -> SileroVAD:
    from safetensors.torch import load_file

    _silero_package()
    weights = resources.files("silero_vad.data") / "silero_vad_16k.safetensors"
    model = SileroVAD()
    model.load_state_dict(load_file(str(weights)))
    return model.eval()


@functools.lru_cache(maxsize=1)
def _silero_package():
    """The silero_vad package, imported without its side effect: its import sets torch's
    threads to 1 for the whole process, which would slow every later stage."""
    threads = torch.get_num_threads()
    try:
        import silero_vad
    except ImportError:
        raise UserError(
            "voice activity detection needs the silero-vad package (pip install silero-vad)"
        ) from None
    finally:
        torch.set_num_threads(threads)
    return silero_vad


def speech_probabilities(wave: np.ndarray) -> np.ndarray:
    """Silero's speech probability per 32 ms chunk of 16 kHz audio."""
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    return _silero()(x).numpy()


def speech_segments(
    wave: np.ndarray, sample_rate: int = audio.SAMPLE_RATE, threshold: float = VAD_THRESHOLD
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of speech in 16 kHz ``wave``: Silero's probabilities turned
    into segments by its own rules (minimum speech 250 ms, silence 100 ms, padding 30 ms)."""
    if sample_rate != 16000:
        raise UserError(f"voice activity detection reads 16 kHz audio, got {sample_rate} Hz")
    probs = speech_probabilities(wave)
    stamps = _silero_package().get_speech_timestamps_from_probs(
        probs.tolist(), sampling_rate=16000, threshold=threshold, audio_length_samples=len(wave)
    )
    return [(int(s["start"]), int(s["end"])) for s in stamps]


def noise_mask(
    length: int,
    segments: list[tuple[int, int]],
    sample_rate: int = audio.SAMPLE_RATE,
    margin_s: float = MARGIN_S,
) -> np.ndarray:
    """True where no speech segment (widened by ``margin_s`` on each side) lies."""
    mask = np.ones(length, dtype=bool)
    margin = int(margin_s * sample_rate)
    for start, end in segments:
        mask[max(0, start - margin) : min(length, end + margin)] = False
    return mask


def stretches(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """[start, end) runs of True in ``mask`` at least ``min_len`` samples long."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True) if e - s >= min_len]


@dataclass(frozen=True)
class Condition:
    """One utterance's acoustics: its non-speech stretches and speech-to-noise ratio."""

    noise: np.ndarray  # the non-speech stretches, joined (float32; empty when none)
    snr_db: float | None  # None: no speech, or no noise stretch to measure against
    speech_s: float  # seconds the VAD marked as speech
    noise_s: float


def analyse(
    wave: np.ndarray,
    sample_rate: int = audio.SAMPLE_RATE,
    segments: list[tuple[int, int]] | None = None,
    min_noise_s: float = MIN_NOISE_S,
) -> Condition:
    """The noise and SNR of one utterance (``segments``: the VAD's, found here when None)."""
    wave = np.asarray(wave, dtype=np.float32)
    if segments is None:
        segments = speech_segments(wave, sample_rate)
    mask = noise_mask(len(wave), segments, sample_rate)
    runs = stretches(mask, int(min_noise_s * sample_rate))
    noise = np.concatenate([wave[s:e] for s, e in runs]) if runs else np.zeros(0, dtype=np.float32)
    speech = np.zeros(len(wave), dtype=bool)
    for start, end in segments:
        speech[start:end] = True
    snr = estimate_snr_db(wave[speech], noise, sample_rate) if runs and speech.any() else None
    return Condition(noise, snr, speech.sum() / sample_rate, len(noise) / sample_rate)


def estimate_snr_db(
    speech: np.ndarray, noise: np.ndarray, sample_rate: int = audio.SAMPLE_RATE
) -> float | None:
    """SNR of noisy ``speech`` against ``noise`` (the same recording's non-speech samples), as
    ``audio.mix_at_snr`` sets it: the active level of the speech alone over the noise's mean
    power. The noise power is subtracted from each 20 ms frame's power (speech and noise add
    in power on average); None when nothing is left above the noise."""
    noise_power = float(np.mean(np.asarray(noise, np.float64) ** 2)) if len(noise) else 0.0
    if noise_power <= 0:
        return None
    frame = max(1, int(audio.FRAME_S * sample_rate))
    usable = len(speech) // frame * frame
    if usable == 0:
        return None
    power = np.mean(np.asarray(speech[:usable], np.float64).reshape(-1, frame) ** 2, axis=1)
    clean = np.maximum(power - noise_power, 0.0)
    if clean.max() <= 0:
        return None
    floor = clean.max() * 10 ** (-audio.ACTIVE_FLOOR_DB / 10)
    active = clean[clean >= floor].mean()
    return float(10 * np.log10(active / noise_power))
