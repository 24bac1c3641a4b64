"""Training batches: a replayable order, replay from the pool, duration budgets, grouping."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.finetune.batches import Collator, EpochBatches
from pipeline.models import loader

DURATIONS = np.random.default_rng(0).uniform(1.0, 6.0, size=97)
POOL = np.random.default_rng(1).uniform(1.0, 6.0, size=40)


def epoch(batches: EpochBatches, e: int) -> list[list[int]]:
    batches.use_epoch(e)
    return list(batches)


def test_each_epoch_is_a_replayable_permutation():
    a, b = EpochBatches(DURATIONS, 3, 8), EpochBatches(DURATIONS, 3, 8)
    assert epoch(a, 2) == epoch(b, 2) and epoch(a, 0) != epoch(a, 1)
    for e in range(3):
        flat = [i for batch in epoch(a, e) for i in batch]
        assert sorted(flat) == list(range(len(DURATIONS)))
        assert len(a) == 13 and all(len(batch) == 8 for batch in epoch(a, e)[:-1])
    assert epoch(EpochBatches(DURATIONS, 4, 8), 0) != epoch(a, 0)


def test_replay_mixes_the_asked_share_of_pool_rows_into_every_batch():
    batches = EpochBatches(DURATIONS, 0, 8, replay_fraction=0.25, pool_durations_s=POOL)
    n = len(DURATIONS)
    drawn = epoch(batches, 0)
    own = [i for b in drawn for i in b if i < n]
    assert sorted(own) == list(range(n))  # the subset is still seen once per epoch
    assert all(sum(i >= n for i in b) == 2 and len(b) == 8 for b in drawn[:-1])
    pool = [i - n for b in drawn for i in b if i >= n]
    assert len(pool) == 32 == len(set(pool))  # 16 full batches; no pool row twice in a pass
    small = EpochBatches(DURATIONS, 0, 8, replay_fraction=0.25, pool_durations_s=POOL[:5])
    cycled = [i - n for b in epoch(small, 0) for i in b if i >= n]
    assert sorted(set(cycled)) == list(range(5)) and len(cycled) == 32
    assert epoch(batches, 1) != drawn
    with pytest.raises(ValueError, match="needs pool"):
        EpochBatches(DURATIONS, 0, 8, replay_fraction=0.5)


def test_a_duration_budget_fills_batches_by_seconds():
    batches = EpochBatches(DURATIONS, 0, 8, batch_seconds=20.0)
    drawn = epoch(batches, 0)
    seconds = [DURATIONS[b].sum() for b in drawn]
    assert max(seconds) <= 20.0 and np.mean(seconds) > 15.0
    assert batches.batch_size is None  # Accelerate shards them as batches of varying size
    mixed = EpochBatches(
        DURATIONS, 0, 8, batch_seconds=20.0, replay_fraction=0.5, pool_durations_s=POOL
    )
    n = len(DURATIONS)
    for b in epoch(mixed, 0):
        own = DURATIONS[[i for i in b if i < n]].sum()
        replay = POOL[[i - n for i in b if i >= n]].sum()
        assert own <= 10.0 and own <= replay < own + 6.0


def test_grouping_by_length_cuts_padding():
    def padded_s(drawn):
        return sum(len(b) * DURATIONS[b].max() for b in drawn)

    plain = epoch(EpochBatches(DURATIONS, 0, 8), 0)
    grouped = epoch(EpochBatches(DURATIONS, 0, 8, group_by_length=True), 0)
    assert sorted(i for b in grouped for i in b) == list(range(len(DURATIONS)))
    assert padded_s(grouped) < 0.85 * padded_s(plain)


def test_a_fixed_share_of_files_is_read_through_a_telephone_band(speech, tmp_path):
    import pandas as pd
    from scipy.signal import welch

    from pipeline import audio
    from pipeline.finetune.batches import Utterances

    paths = []
    for i in range(40):
        paths.append(tmp_path / f"u{i:02d}.flac")
        audio.write_flac(paths[-1], speech)
    frame = pd.DataFrame({"audio_path": [str(p) for p in paths], "text": ["hi"] * 40})
    data = Utterances(frame, narrowband_fraction=0.5, seed=3)
    assert 10 <= len(data.narrowband) <= 30  # about half of 40
    assert data.narrowband == Utterances(frame, narrowband_fraction=0.5, seed=3).narrowband
    assert data.narrowband != Utterances(frame, narrowband_fraction=0.5, seed=4).narrowband
    assert not Utterances(frame).narrowband
    assert len(Utterances(frame, narrowband_fraction=1.0, seed=3).narrowband) == 40

    def high_share(wave):  # share of the power above 4.2 kHz
        freqs, power = welch(wave, fs=16000, nperseg=1024)
        return power[freqs > 4200].sum() / power.sum()

    narrow = data[min(data.narrowband)][0]
    wide = data[min(set(range(40)) - data.narrowband)][0]
    assert len(narrow) == len(wide) == len(audio.read(paths[0])[0])
    assert high_share(wide) > 100 * high_share(narrow)
    # below the band edge the wave is kept: speech's power lies mostly there
    assert np.corrcoef(wide, narrow)[0, 1] > 0.9


def test_every_training_setting_enters_the_key_and_the_weight_mix_does_not():
    from dataclasses import replace

    from pipeline.config import FinetuneConfig
    from pipeline.finetune.stage import training_settings

    plain = training_settings(FinetuneConfig())
    assert plain["narrowband_fraction"] == 0.0 and plain["single_windows"] == 0
    banded = training_settings(replace(FinetuneConfig(), narrowband_fraction=0.5))
    assert banded == {**plain, "narrowband_fraction": 0.5}
    # the mix is applied after training: changing it must not train again
    mixed = replace(FinetuneConfig(), interpolate=0.5, interpolate_decoder=0.25)
    assert training_settings(mixed) == plain and "interpolate" not in plain


def test_single_windows_put_the_first_utterances_of_a_batch_alone(tiny_whisper_dir):
    """finetune.single_windows: the first k utterances each get a 30 s window of their own
    (one transcript, one end of text), the rest are packed; nothing is lost or repeated."""
    model = loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir)
    rng = np.random.default_rng(0)
    waves = [rng.normal(0, 0.1, 16000 * s).astype(np.float32) for s in (2, 3, 1, 2, 4)]
    texts = ["turn on the lights", "what time is it", "play some music", "stop", "call mum"]
    packed = Collator(model, "packed", 8.0)(list(zip(waves, texts, strict=True)))
    mixed = Collator(model, "packed", 8.0, single_windows=2)(list(zip(waves, texts, strict=True)))
    assert packed["input_features"].shape[0] == 1
    assert mixed["input_features"].shape[0] == 3
    for row, k in enumerate((0, 1)):
        want = model.text_tokens(texts[k])
        got = [t for t in mixed["labels"][row].tolist() if t != -100]
        assert got == want
    rest = [t for k in (2, 3, 4) for t in model.text_tokens(texts[k])[:-1]] + [model.eot]
    assert [t for t in mixed["labels"][2].tolist() if t != -100] == rest
    one = model.features([waves[0]], 30.0)
    torch.testing.assert_close(mixed["input_features"][0], one[0])
