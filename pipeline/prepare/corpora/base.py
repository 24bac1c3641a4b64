"""What every corpus source yields, and the one place where candidate audio is checked.

A source turns its config into a stream of ``Candidate`` (an utterance whose audio can be
loaded) and ``Reject`` (an entry it could not use, with the reason). ``ingest`` loads each
candidate, checks it and writes 16 kHz mono FLAC, or references the original file in place
when it already is 16 kHz mono FLAC/WAV.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline import audio
from pipeline.config import Keep
from pipeline.fsio import stable_seed
from pipeline.manifest import CLEAN

# NIST STM's marker for a stretch left out of scoring (EdAcc and TED-LIUM keep it as a segment)
IGNORE_MARKER = "IGNORE_TIME_SEGMENT_IN_SCORING"
_TAG = re.compile(r"<[^<>]*>|\[[^\[\]]*\]")  # <laugh>, [noise]: events, not words
_BUCKETS = 16**15  # stable_seed gives 60 bits


@dataclass(frozen=True)
class SourceContext:
    """What a source may use besides its own config."""

    seed: int
    set_name: str
    split: str
    work_dir: Path  # a folder of the set's own for downloads and extracted archives
    sample_rate: int = audio.SAMPLE_RATE
    manifests: Path | None = None  # the sets prepared before this one (generated sources)


@dataclass(frozen=True)
class Candidate:
    id: str
    text: str
    speaker: str
    accent: str
    source: str  # e.g. 'synth', 'asterisk', 'local', 'hf', 'openslr'
    spec: str  # how the audio is made: the same spec gives the same audio
    load: Callable[[int], tuple[np.ndarray, dict]]  # sample_rate -> (mono wave, changes)
    path: str | None = None  # original file, if any (may be used in place)
    extra: dict = field(default_factory=dict)  # extra manifest columns (e.g. 'voice')
    noise: object | None = None  # a NoiseConfig that overrides the set's (synth parts)
    room: object | None = None  # a RoomConfig that overrides the set's (synth parts)


@dataclass(frozen=True)
class Reject:
    id: str
    reason: str
    source: str = ""


@dataclass(frozen=True)
class Limits:
    sample_rate: int = audio.SAMPLE_RATE
    min_duration_s: float = 0.3
    max_duration_s: float = 30.0


def file_candidate(
    uid: str, text: str, speaker: str, accent: str, source: str, path: Path
) -> Candidate:
    """A Candidate for an audio file read where it lies; its spec (path, size, mtime) changes
    when the file does, so prepare redoes it."""
    info = path.stat()
    return Candidate(
        id=uid,
        text=text,
        speaker=speaker,
        accent=accent,
        source=source,
        spec=f"{path}:{info.st_size}:{info.st_mtime_ns}",
        load=partial(audio.read, str(path)),
        path=str(path),
    )


def take(items: Iterable[Candidate | Reject], limit: int | None) -> Iterator[Candidate | Reject]:
    """Pass items through until ``limit`` Candidates have gone by; read nothing after."""
    if limit is not None and limit <= 0:
        return
    kept = 0
    for item in items:
        yield item
        kept += isinstance(item, Candidate)
        if limit is not None and kept >= limit:
            return


def audio_file_name(uid: str, spec: object) -> str:
    """``<id>.<hash of how the audio is made>.flac``: a file that exists is the right one."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in uid)
    return f"{safe}.{stable_seed(spec) % 16**8:08x}.flac"


def check_text(text: str | None) -> str | None:
    """The reject reason for a transcript, or None if it is usable."""
    if text is None or not str(text).strip():
        return "empty transcript"
    if str(text).strip().upper() == IGNORE_MARKER:
        return f"segment excluded from scoring ({IGNORE_MARKER})"
    if not _TAG.sub(" ", str(text)).strip():
        return "no words: only non-speech tags"
    return None


def bucket(*parts: object) -> float:
    """A fixed position in [0, 1) for a speaker or an utterance, the same in every run."""
    return stable_seed(*parts) / _BUCKETS


def kept(rule: Keep | None, uid: str, speaker: str, accent: str) -> bool:
    """Whether a set with ``rule`` takes this utterance (sources ask before building it)."""
    if rule is None:
        return True
    if rule.accents and accent.casefold() not in {a.casefold() for a in rule.accents}:
        return False
    if rule.speakers and speaker not in rule.speakers:
        return False
    lo, hi = rule.speaker_range
    if (lo, hi) != (0.0, 1.0) and not lo <= bucket("speaker", speaker) < hi:
        return False
    lo, hi = rule.utterance_range
    return (lo, hi) == (0.0, 1.0) or lo <= bucket("utterance", uid) < hi


def ingest(cand: Candidate, out_path: Path, limits: Limits, labelled: bool = True) -> dict | Reject:
    """Load, check and store one candidate; return its manifest row or a Reject.

    Runs in worker processes, so it only touches ``out_path`` (written atomically). An
    unlabelled set's transcripts (the target sample's) are not checked: they are never used.
    """
    reason = check_text(cand.text) if labelled else None
    if reason:
        return Reject(cand.id, reason, cand.source)
    changes: dict = {}
    if out_path.exists():  # made by an earlier, interrupted run from the same spec
        duration = audio.duration_s(out_path)
        stored = str(out_path)
    else:
        try:
            wave, changes = cand.load(limits.sample_rate)
        except audio.AudioError as err:
            return Reject(cand.id, str(err), cand.source)
        duration = len(wave) / limits.sample_rate
        if not np.any(wave):
            return Reject(cand.id, "silent audio (all samples zero)", cand.source)
        stored = None
    if duration < limits.min_duration_s:
        return Reject(
            cand.id, f"too short: {duration:.2f} s < {limits.min_duration_s} s", cand.source
        )
    if duration > limits.max_duration_s:
        return Reject(
            cand.id, f"too long: {duration:.2f} s > {limits.max_duration_s} s", cand.source
        )
    if stored is None:
        if cand.path and not changes and _usable_in_place(cand.path, limits.sample_rate):
            stored = str(Path(cand.path).resolve())
        else:
            audio.write_flac(out_path, wave, limits.sample_rate)
            stored = str(out_path)
    row = {
        "id": cand.id,
        "audio_path": stored,
        "duration_s": float(duration),
        "text": str(cand.text).strip(),
        "speaker": cand.speaker,
        "accent": cand.accent,
        "noise": CLEAN,
        "snr_db": float("nan"),
        "source": cand.source,
        **cand.extra,
    }
    if changes:  # counted by the prepare summary, not stored in the manifest
        row["_converted"] = sorted(changes)
    return row


def _usable_in_place(path: str, sample_rate: int) -> bool:
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError):
        return False
    return info.samplerate == sample_rate and info.channels == 1 and info.format in ("FLAC", "WAV")
