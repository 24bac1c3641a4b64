"""Synthesised speech in several accents (espeak-ng and flite): voice-assistant commands in
English, and sentences of text files (``source.texts``) in the other languages' voices.

A *speaker* is one voice with one setting of variant, pitch and speed. Speakers, like the
sentences of the command grammar, are partitioned into train / heldout / dev / test so that
a target sample and test sets can come from speakers the pool never heard.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pipeline import audio
from pipeline.config import SynthPart, SynthSource
from pipeline.errors import UserError
from pipeline.fsio import stable_seed
from pipeline.prepare.corpora import grammar, texts
from pipeline.prepare.corpora.base import Candidate, SourceContext

# accent label -> voices. espeak-ng's English accents, plus flite's four voices.
ACCENT_VOICES: dict[str, tuple[str, ...]] = {
    "us": ("espeak:en-us", "flite:rms", "flite:slt", "flite:kal16"),
    "gb": ("espeak:en-gb",),
    "rp": ("espeak:en-gb-x-rp",),
    "scotland": ("espeak:en-gb-scotland", "flite:awb"),
    "lancaster": ("espeak:en-gb-x-gbclan",),
    "west_midlands": ("espeak:en-gb-x-gbcwmd",),
    "caribbean": ("espeak:en-029",),
    "nyc": ("espeak:en-us-nyc",),
    # other languages (read text files: the command grammar is English)
    "es": ("espeak:es",),  # Spain
    "es_latam": ("espeak:es-419",),
    "fr": ("espeak:fr-fr",),
    "fr_be": ("espeak:fr-be",),
    "fr_ch": ("espeak:fr-ch",),
    "pt": ("espeak:pt",),
    "pt_br": ("espeak:pt-br",),
    "it": ("espeak:it",),
    "ru": ("espeak:ru",),
    "ru_lv": ("espeak:ru-lv",),
    "de": ("espeak:de",),
}
VOICE_ACCENT = {voice: accent for accent, voices in ACCENT_VOICES.items() for voice in voices}
# what 'all', 'espeak' and 'flite' stand for: the English voices, which read the commands
ENGLISH = [v for v in VOICE_ACCENT if v.startswith(("espeak:en", "flite:"))]

ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
ESPEAK_PITCH = (35, 45, 55, 65)  # espeak-ng -p, 0-99
ESPEAK_SPEED = (140, 155, 170)  # words per minute
FLITE_STRETCH = (0.85, 0.95, 1.05, 1.15, 1.25)  # duration_stretch: >1 is slower
FLITE_F0 = (95, 110, 130)  # int_f0_target_mean in Hz (ignored by some clunits voices)
# speakers are dealt into splits in this repeating order, so every split gets some of each voice
SPEAKER_DEAL = (
    "train",
    "train",
    "train",
    "heldout",
    "train",
    "dev",
    "train",
    "test",
    "train",
    "test",
)


@dataclass(frozen=True)
class Speaker:
    voice: str  # 'espeak:en-029' or 'flite:awb'
    variant: str  # espeak variant ('m3') or '' for flite
    pitch: int  # espeak -p, or flite f0 mean in Hz
    rate: float  # espeak words per minute, or flite duration stretch

    @property
    def id(self) -> str:
        engine, name = self.voice.split(":")
        if engine == "espeak":
            return f"{name}+{self.variant}-p{self.pitch}-s{int(self.rate)}"
        return f"{name}-f{self.pitch}-x{self.rate:g}"

    @property
    def accent(self) -> str:
        return VOICE_ACCENT[self.voice]

    def command(self, text: str) -> list[str]:
        engine, name = self.voice.split(":")
        if engine == "espeak":
            voice = f"{name}+{self.variant}"
            return [
                "espeak-ng",
                "-v",
                voice,
                "-p",
                str(self.pitch),
                "-s",
                str(int(self.rate)),
                "--stdout",
                "--",
                text,
            ]
        return [
            "flite",
            "-voice",
            name,
            "--setf",
            f"duration_stretch={self.rate:g}",
            "--setf",
            f"int_f0_target_mean={self.pitch}",
            "-t",
            text,
            "-o",
            "/dev/stdout",
        ]


def speakers(voice: str) -> list[Speaker]:
    """Every speaker of a voice, in a fixed order."""
    engine = voice.split(":")[0]
    if engine == "espeak":
        return [
            Speaker(voice, v, p, s)
            for v in ESPEAK_VARIANTS
            for p in ESPEAK_PITCH
            for s in ESPEAK_SPEED
        ]
    return [Speaker(voice, "", f, x) for x in FLITE_STRETCH for f in FLITE_F0]


def speakers_in_split(voice: str, split: str) -> list[Speaker]:
    return [
        s for i, s in enumerate(speakers(voice)) if SPEAKER_DEAL[i % len(SPEAKER_DEAL)] == split
    ]


def resolve_voices(names: tuple[str, ...]) -> list[str]:
    """Accent names, engine voice ids, 'espeak', 'flite' or 'all' (English voices) -> voice
    ids (ordered)."""
    out: list[str] = []
    for name in names:
        if name == "all":
            found = list(ENGLISH)
        elif name in ("espeak", "flite"):
            found = [v for v in ENGLISH if v.startswith(name + ":")]
        elif name in ACCENT_VOICES:
            found = list(ACCENT_VOICES[name])
        elif name in VOICE_ACCENT:
            found = [name]
        else:
            known = ", ".join(list(ACCENT_VOICES) + list(VOICE_ACCENT))
            raise UserError(f"unknown voice or accent {name!r} (known: {known})")
        out += [v for v in found if v not in out]
    return out


def render(command: tuple[str, ...], sample_rate: int) -> tuple[np.ndarray, dict]:
    """Run a TTS command that writes WAV to stdout; return 16 kHz mono audio."""
    try:
        done = subprocess.run(list(command), capture_output=True, check=True, timeout=60)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as err:
        raise audio.AudioError(f"TTS failed: {str(err)[:120]}") from None
    wave, _ = audio.read(done.stdout, sample_rate)
    return wave, {}  # resampling TTS output is expected, not a conversion worth counting


def check_engines(voices: list[str]) -> None:
    for engine, binary in (("espeak", "espeak-ng"), ("flite", "flite")):
        if any(v.startswith(engine + ":") for v in voices) and not shutil.which(binary):
            raise UserError(f"{binary} is not installed (apt-get install {binary}; make setup)")


def candidates(cfg: SynthSource, ctx: SourceContext) -> Iterator[Candidate]:
    """Commands for every part of a synth set, each with its own sentences and speakers."""
    total = sum(p.count for p in cfg.parts)
    foreign = [v for p in cfg.parts for v in resolve_voices(p.voices) if v not in ENGLISH]
    if foreign and not cfg.texts:
        raise UserError(
            f"set {ctx.set_name}: voices {', '.join(sorted(set(foreign)))} need sentences in "
            "their language (source.texts, e.g. /usr/share/games/fortunes/es from fortunes-es): "
            "the command grammar is English"
        )
    rng = np.random.default_rng(stable_seed(ctx.seed, ctx.set_name, "sentences"))
    if cfg.texts:
        sentences = _text_sentences(cfg.texts, cfg.text_split, total, rng, ctx.set_name)
    else:
        try:
            sentences = grammar.sample(cfg.text_split, total, rng)
        except ValueError as err:
            raise UserError(f"set {ctx.set_name}: {err}") from None
    start = 0
    for index, part in enumerate(cfg.parts):
        chunk = sentences[start : start + part.count]
        start += part.count
        yield from _part(part, index, chunk, cfg.speaker_split, ctx)


def _text_sentences(paths: tuple[str, ...], split: str, total: int, rng, set_name: str) -> list:
    """``total`` distinct sentences of the text files' ``split`` share, drawn by the set's
    seed ("text" intent): sets of different splits share no sentence."""
    found = texts.in_split(texts.file_sentences(paths, f"set {set_name}: source.texts"), split)
    if total > len(found):
        raise UserError(
            f"set {set_name}: source.texts hold {len(found)} usable sentences in the "
            f"{split!r} share, {total} asked for"
        )
    return [("text", found[i]) for i in rng.choice(len(found), size=total, replace=False)]


def _part(part: SynthPart, index: int, sentences: list, speaker_split: str, ctx: SourceContext):
    # sentences are dealt round-robin over the listed entries (accents or voices), then over
    # each entry's voices, then over that voice's speakers in a seeded random order
    entries = [resolve_voices((name,)) for name in part.voices]
    check_engines([v for voices in entries for v in voices])
    rng = np.random.default_rng(stable_seed(ctx.seed, ctx.set_name, "speakers", index))
    speakers_of = {}
    for voice in sorted({v for voices in entries for v in voices}):
        found = speakers_in_split(voice, speaker_split)
        speakers_of[voice] = [found[i] for i in rng.permutation(len(found))]
    for k, (intent, text) in enumerate(sentences):
        voices = entries[k % len(entries)]
        turn = k // len(entries)
        voice = voices[turn % len(voices)]
        speaker = speakers_of[voice][(turn // len(voices)) % len(speakers_of[voice])]
        command = tuple(speaker.command(text))
        yield Candidate(
            id=f"{ctx.set_name}-p{index}-{k:05d}",
            text=text,
            speaker=speaker.id,
            accent=speaker.accent,
            source="synth",
            spec=" ".join(command),
            load=functools.partial(render, command),
            extra={"voice": speaker.voice, "intent": intent},
            noise=part.noise,
            room=part.room,
        )
