"""Rooms: a seeded bank of simulated shoeboxes, split by region, applied before noise."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import fftconvolve

from pipeline import audio, manifest
from pipeline.config import PrepareConfig, RoomConfig, load_recipe
from pipeline.errors import RecipeError, UserError
from pipeline.prepare import stage as prepare
from pipeline.prepare.corpora import rooms

PREP = PrepareConfig()


def test_bank_is_a_pure_function_of_its_ranges():
    cfg = RoomConfig(rooms=10)
    assert rooms.bank(cfg) == rooms.bank(RoomConfig(rooms=10, region="test"))  # region aside
    other = rooms.bank(RoomConfig(rooms=10, rt60_s=(0.5, 0.9)))
    assert [r.rt60_s for r in other] != [r.rt60_s for r in rooms.bank(cfg)]
    for room in rooms.bank(cfg):
        assert 0.3 <= room.rt60_s <= 0.8 and len(room.placements) == 4
        for source, mic in room.placements:
            assert 0.5 - 1e-3 <= np.linalg.norm(np.subtract(source, mic)) <= 2.5 + 1e-3
            for point in (source, mic):
                assert all(
                    rooms.WALL_GAP_M - 1e-3 <= p <= s - rooms.WALL_GAP_M + 1e-3
                    for p, s in zip(point, room.size_m, strict=True)
                )


def test_regions_split_the_bank_by_room(tmp_path):
    cfg = RoomConfig(rooms=20)
    shares = {k: rooms.share(rooms.bank(cfg), v) for k, v in PREP.noise_regions.items()}
    names = {k: {r.name for r in v} for k, v in shares.items()}
    assert len(names["train"]) == 12 and len(names["dev"]) == 2 and len(names["test"]) == 6
    assert not names["train"] & names["test"] and not names["dev"] & names["test"]
    rows = [{"id": f"u{i}", "audio_path": f"/a/u{i}.flac"} for i in range(200)]
    picked = {
        region: {
            rooms.plan(r, RoomConfig(rooms=20, region=region), PREP, 0, "s", tmp_path).room.name
            for r in rows
        }
        for region in ("train", "test")
    }
    assert picked["train"] == names["train"] and picked["test"] == names["test"]
    again = [rooms.plan(r, cfg, PREP, 0, "s", tmp_path) for r in rows[:5]]
    assert again == [rooms.plan(r, cfg, PREP, 0, "s", tmp_path) for r in rows[:5]]  # seeded
    assert again != [rooms.plan(r, cfg, PREP, 1, "s", tmp_path) for r in rows[:5]]


def test_impulse_response_has_the_rooms_reverberation_time():
    from pyroomacoustics.experimental import measure_rt60

    for rt60 in (0.3, 0.7):
        room = rooms.Room("r", (6.0, 4.5, 2.8), rt60, (((1.5, 1.5, 1.6), (3.5, 2.5, 1.2)),))
        response = rooms.rir(room, 0, 16000)
        assert np.array_equal(response, rooms.rir(room, 0, 16000))
        measured = measure_rt60(response, fs=16000, decay_db=30)
        assert measured == pytest.approx(rt60, rel=0.35), (rt60, measured)


def test_reverberation_keeps_length_level_and_timing(speech):
    room = rooms.Room("r", (6.0, 4.5, 2.8), 0.6, (((1.5, 1.5, 1.6), (3.5, 2.5, 1.2)),))
    response = rooms.rir(room, 0, 16000)
    wet = rooms.reverberate(speech, response, rooms.direct_delay(room, 0, 16000))
    assert len(wet) == len(speech)
    assert audio.active_level(wet) == pytest.approx(audio.active_level(speech), rel=1e-3)
    lag = np.argmax(fftconvolve(wet, speech[::-1])) - (len(speech) - 1)
    assert abs(lag) < 16  # aligned on the direct path: no delay added
    # reverberation smears energy into the pauses: the quietest tenth of frames rises
    assert quiet_frames(wet) > 3 * quiet_frames(speech)


def quiet_frames(wave: np.ndarray) -> float:
    """Mean power of the quietest tenth of 20 ms frames."""
    power = np.sort((wave[: len(wave) // 320 * 320].reshape(-1, 320) ** 2).mean(axis=1))
    return float(power[: len(power) // 10].mean())


ROOMED = {
    "prepare": {
        "workers": 1,
        "sets": [
            {
                "name": "train",
                "split": "pool",
                "source": {"kind": "synth", "parts": [{"count": 4, "voices": ["us"]}]},
                "room": {"rooms": 10, "placements": 2, "rt60_s": [0.3, 0.5]},
                "noise": {"types": ["white"], "snr_db": [10]},
            },
            {
                "name": "test",
                "split": "test",
                "source": {
                    "kind": "synth",
                    "text_split": "test",
                    "speaker_split": "test",
                    "parts": [{"count": 4, "voices": ["us"]}],
                },
                "room": {"rooms": 10, "placements": 2, "rt60_s": [0.3, 0.5], "region": "test"},
            },
        ],
    }
}


def test_prepare_puts_rooms_before_noise(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe(ROOMED))
    prepare.run(recipe)
    train = manifest.read(recipe.tree.manifest("train"))
    test = manifest.read(recipe.tree.manifest("test"))
    assert len(train) == 4 and len(test) == 4
    assert train["id"].str.contains(r"_room[0-9a-f]{4}-\d\d_white_10dB$").all()  # room, then noise
    assert set(train["noise"]) == {"white"} and set(test["noise"]) == {"clean"}
    assert set(train["room"]).isdisjoint(set(test["room"]))
    assert train["rt60_s"].between(0.3, 0.5).all()
    stamp = recipe.tree.manifest("train").stat().st_mtime_ns
    prepare.run(recipe)  # up to date: nothing rebuilt
    assert recipe.tree.manifest("train").stat().st_mtime_ns == stamp


def test_a_synth_part_can_have_a_room_of_its_own(write_recipe):
    data = {
        "prepare": {
            "workers": 1,
            "sets": [
                {
                    "name": "pool",
                    "split": "pool",
                    "source": {
                        "kind": "synth",
                        "parts": [
                            {"count": 3, "voices": ["us"]},
                            {"count": 3, "voices": ["gb"], "room": {"rooms": 5, "placements": 1}},
                        ],
                    },
                }
            ],
        }
    }
    recipe = load_recipe(write_recipe(data))
    prepare.run(recipe)
    pool = manifest.read(recipe.tree.manifest("pool"))
    wet = pool["id"].str.contains("_room")
    assert wet.sum() == 3 and set(pool.loc[wet, "accent"]) == {"gb"}
    assert pool.loc[~wet, "room"].isna().all() and pool.loc[wet, "rt60_s"].notna().all()


def test_room_settings_are_checked(write_recipe):
    bad = {"prepare": {"sets": [{**ROOMED["prepare"]["sets"][0], "room": {"rt60_s": [0.9, 0.3]}}]}}
    with pytest.raises(RecipeError, match=r"room.rt60_s: need"):
        load_recipe(write_recipe(bad))
    with pytest.raises(UserError, match="no placement at"):
        rooms.bank(RoomConfig(size_m=(1.0, 1.2), distance_m=(2.0, 3.0)))
