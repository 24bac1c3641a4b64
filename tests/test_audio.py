import numpy as np
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.audio import AudioError
from tests.factories import encode, speak


def test_read_resamples_and_downmixes_real_speech():
    wave, rate = speak("Set a timer for ten minutes.")
    stereo = np.stack([wave, wave], axis=1)
    out, changes = audio.read(encode(stereo, rate))
    assert changes == {"downmixed": 2, "resampled_from": 22050}
    assert out.dtype == np.float32
    assert abs(len(out) - len(wave) * 16000 / 22050) <= 2
    assert np.sqrt(np.mean(out**2)) > 0.01


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"RIFF\x00\x00garbage", "unreadable audio"),
        (encode(np.zeros((0,), np.float32), 16000), "empty audio"),
        (encode(np.array([0.1, np.nan, 0.2] * 100, np.float32), 16000, "FLOAT"), "non-finite"),
        (encode(np.full(4000, 0.1, np.float32), 4000), "below the 8000 Hz minimum"),
    ],
)
def test_read_refuses_bad_audio_with_a_reason(payload, reason):
    with pytest.raises(AudioError, match=reason):
        audio.read(payload)


def test_mix_at_snr_sets_snr_on_active_speech(speech):
    rng = np.random.default_rng(0)
    # pad with a second of silence: the SNR must not depend on pauses
    padded = np.concatenate([np.zeros(16000, np.float32), speech, np.zeros(16000, np.float32)])
    noise = rng.standard_normal(len(padded)).astype(np.float32)
    for snr in (20.0, 5.0, 0.0):
        mixed = audio.mix_at_snr(padded, noise, snr)
        added = mixed - padded
        measured = 10 * np.log10(
            audio.active_level(padded) / np.mean(added.astype(np.float64) ** 2)
        )
        assert measured == pytest.approx(snr, abs=0.05)


def test_write_flac_is_16k_mono_and_does_not_clip(tmp_path, speech):
    path = tmp_path / "x.flac"
    audio.write_flac(path, speech * 10)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    back, _ = audio.read(str(path))
    assert np.max(np.abs(back)) <= 1.0
    assert audio.duration_s(path) == pytest.approx(len(speech) / 16000)
