"""Reverberant copies: each utterance played in a simulated shoebox room, before any noise.

A ``room:`` block beside a set's ``noise:`` draws a *bank* of rooms from its ranges (size,
RT60, source-to-microphone distance), the same bank for every set that names the same
ranges. Like a noise bank, the bank is split by room between regions (the recipe's
``prepare.noise_regions``): a test set's rooms are never heard in training. Each room has a
few fixed source and microphone placements; an utterance draws one room of its region and
one placement, with an RNG of its own. Room impulse responses come from ``pyroomacoustics``
(image source method, wall absorption from the RT60 by Sabine's formula) and are computed
once per process for each placement used.

The reverberant copy keeps the clean utterance's length and active level, aligned on the
direct path, so that a later SNR means the same as for a dry utterance.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import fftconvolve

from pipeline import audio
from pipeline.config import PrepareConfig, RoomConfig
from pipeline.errors import UserError
from pipeline.fsio import stable_seed
from pipeline.prepare.corpora.base import audio_file_name

HEIGHT_M = (2.4, 3.2)  # ceiling heights drawn for every room
WALL_GAP_M = 0.3  # sources and microphones keep this far from every wall


@dataclass(frozen=True)
class Room:
    name: str  # room<bank>-<k>, as written to the manifest
    size_m: tuple[float, float, float]
    rt60_s: float
    placements: tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]  # (source, mic)


@dataclass(frozen=True)
class ReverbJob:
    id: str
    clean_path: str
    out_path: str
    room: Room
    placement: int


def bank(cfg: RoomConfig) -> tuple[Room, ...]:
    """The rooms drawn from ``cfg``'s ranges (its region aside): a pure function of them."""
    ranges = (cfg.size_m, cfg.rt60_s, cfg.distance_m, cfg.rooms, cfg.placements)
    seed = stable_seed("rooms", *ranges)
    rng = np.random.default_rng(seed)
    bank_name = f"{seed % 16**4:04x}"  # rooms of different banks never share a name
    rooms = []
    for k in range(cfg.rooms):
        length, width = (float(rng.uniform(*cfg.size_m)) for _ in range(2))
        size = (length, width, float(rng.uniform(*HEIGHT_M)))
        placements = tuple(_placement(size, cfg.distance_m, rng) for _ in range(cfg.placements))
        name = f"room{bank_name}-{k:02d}"
        rooms.append(Room(name, size, float(rng.uniform(*cfg.rt60_s)), placements))
    return tuple(rooms)


def _placement(size, distance_m: tuple[float, float], rng) -> tuple[tuple, tuple]:
    """A source and a microphone at a drawn distance apart, both inside the walls' margin."""
    lo = np.array([WALL_GAP_M] * 3)
    hi = np.array(size) - WALL_GAP_M
    for _ in range(1000):
        source = rng.uniform(lo, hi)
        source[2] = rng.uniform(1.2, min(1.9, hi[2]))  # a talker's mouth
        direction = rng.normal(size=3)
        direction[2] *= 0.2  # mostly level with the talker
        mic = source + rng.uniform(*distance_m) * direction / np.linalg.norm(direction)
        if (mic >= lo).all() and (mic <= hi).all():
            return tuple(np.round(source, 3)), tuple(np.round(mic, 3))
    raise UserError(
        f"room {size[0]:.1f} x {size[1]:.1f} m: no placement at {distance_m} m apart fits; "
        "make room.size_m larger or room.distance_m smaller"
    )


def share(rooms: tuple[Room, ...], region: tuple[float, float]) -> tuple[Room, ...]:
    """The rooms a region may use: a fixed share of the bank, in bank order."""
    lo, hi = (round(f * len(rooms)) for f in region)
    return rooms[lo:hi]


def plan(
    row: dict, cfg: RoomConfig, prep: PrepareConfig, seed: int, set_name: str, out_dir: Path
) -> ReverbJob:
    """The reverberant copy of one clean row, drawn with an RNG of its own."""
    region = tuple(prep.noise_regions[cfg.region])
    rooms = share(bank(cfg), region)
    if not rooms:
        raise UserError(
            f"room: region {cfg.region!r} gets none of the bank's {cfg.rooms} rooms; "
            "set room.rooms higher"
        )
    rng = np.random.default_rng(stable_seed(seed, set_name, row["id"], "room"))
    room = rooms[int(rng.integers(len(rooms)))]
    placement = int(rng.integers(len(room.placements)))
    uid = f"{row['id']}_{room.name}"
    spec = (Path(row["audio_path"]).name, room, placement)
    return ReverbJob(
        uid, row["audio_path"], str(out_dir / audio_file_name(uid, spec)), room, placement
    )


def direct_delay(room: Room, placement: int, sample_rate: int) -> int:
    """Where the direct sound sits in ``rir``: the path's travel time plus the half-length of
    pyroomacoustics' fractional-delay filter (a reflection may peak higher than it)."""
    import pyroomacoustics as pra

    source, mic = room.placements[placement]
    travel = np.linalg.norm(np.subtract(source, mic)) / pra.constants.get("c")
    return int(round(travel * sample_rate)) + pra.constants.get("frac_delay_length") // 2


@functools.lru_cache(maxsize=256)
def rir(room: Room, placement: int, sample_rate: int) -> np.ndarray:
    """The room impulse response from a placement's source to its microphone."""
    import pyroomacoustics as pra  # only recipes with rooms need it

    try:
        absorption, max_order = pra.inverse_sabine(room.rt60_s, list(room.size_m))
    except ValueError as err:
        raise UserError(
            f"room {room.name}: RT60 {room.rt60_s:.2f} s is out of reach ({err})"
        ) from None
    shoebox = pra.ShoeBox(
        list(room.size_m), fs=sample_rate, materials=pra.Material(absorption), max_order=max_order
    )
    source, mic = room.placements[placement]
    shoebox.add_source(list(source))
    shoebox.add_microphone(list(mic))
    shoebox.compute_rir()
    return np.asarray(shoebox.rir[0][0], dtype=np.float64)


def reverberate(speech: np.ndarray, response: np.ndarray, delay: int) -> np.ndarray:
    """``speech`` through ``response``: aligned on the direct path (at ``delay``), the same
    length and active level as the dry speech."""
    wet = fftconvolve(speech.astype(np.float64), response)[delay : delay + len(speech)]
    gain = np.sqrt(audio.active_level(speech) / max(audio.active_level(wet), 1e-20))
    return (wet * gain).astype(np.float32)


def make(job: ReverbJob, sample_rate: int = audio.SAMPLE_RATE) -> dict:
    """Write one reverberant copy (runs in worker processes); return its manifest fields."""
    if not Path(job.out_path).exists():
        speech, _ = audio.read(job.clean_path, sample_rate)
        response = rir(job.room, job.placement, sample_rate)
        wet = reverberate(speech, response, direct_delay(job.room, job.placement, sample_rate))
        audio.write_flac(job.out_path, wet, sample_rate)
    return {
        "id": job.id,
        "audio_path": job.out_path,
        "room": job.room.name,
        "rt60_s": job.room.rt60_s,
        "duration_s": audio.duration_s(job.out_path),
    }
