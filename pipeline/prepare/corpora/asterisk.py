"""Real speech: the prompts of the Asterisk PBX (Debian asterisk-core-sounds-<language>*).

One speaker per language (English: US female; Spanish: Mexican, the same voice talent; French:
Canadian), 8 kHz telephone audio, with transcripts in ``core-sounds-<language>.txt.gz``
(``key: text`` lines; most Spanish ones are written without diacritics). Entries that are tones
or silence are dropped; the rest are split by prompt into a guard part (a dev set that watches
for forgetting) and a test part.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import AsteriskSource
from pipeline.errors import UserError
from pipeline.prepare.corpora.base import Candidate, Reject, SourceContext, file_candidate, take

SOUNDS = Path("/usr/share/asterisk/sounds")
DOCS = Path("/usr/share/doc")
_ANNOTATION = re.compile(r"\[[^\]]*\]|<[^>]*>|\([^)]*\)")  # [beep], <beep ascending>, (silence)


def read_transcripts(path: str | Path) -> dict[str, str]:
    """``key: text`` lines (comments start with ';') from a plain or gzipped file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    entries = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith(";") or ":" not in line:
                continue
            key, text = line.split(":", 1)
            entries[key.strip()] = text.strip()
    return entries


def speech_text(text: str) -> str:
    """The spoken words of a transcript, without bracketed sound descriptions."""
    return " ".join(_ANNOTATION.sub(" ", text).split())


def part_of(key: str, guard_fraction: float) -> str:
    """'guard' or 'test' for a prompt, by a stable hash of its key."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 16**8
    return "guard" if bucket < guard_fraction else "test"


def candidates(cfg: AsteriskSource, ctx: SourceContext) -> Iterator[Candidate | Reject]:
    yield from take(_entries(cfg), cfg.limit)


# Debian's English voice, named as the English prompts always were (the alternatives link
# /usr/share/asterisk/sounds/en points at it)
VOICE_FOLDERS = {"en": "en_US_f_Allison"}


def voice(sounds: Path, language: str) -> tuple[str, str]:
    """Speaker and accent from Debian's voice folder name (``es_MX_f_Allison``: the
    ``asterisk-allison`` speaker, accent ``mx``); a folder named otherwise is one speaker
    (English: the US prompts' speaker and accent)."""
    parts = sounds.resolve().name.split("_")
    if len(parts) == 4:
        return f"asterisk-{parts[3].lower()}", parts[1].lower()
    if language == "en":
        return "asterisk-allison", "us"
    return f"asterisk-{sounds.resolve().name.lower()}", "unknown"


def _entries(cfg: AsteriskSource) -> Iterator[Candidate | Reject]:
    lang = cfg.language
    sounds = Path(cfg.sounds_dir) if cfg.sounds_dir else SOUNDS / VOICE_FOLDERS.get(lang, lang)
    transcripts = (
        Path(cfg.transcripts)
        if cfg.transcripts
        else DOCS / f"asterisk-core-sounds-{lang}" / f"core-sounds-{lang}.txt.gz"
    )
    for path, package in (
        (sounds, f"asterisk-core-sounds-{lang}-wav"),
        (transcripts, f"asterisk-core-sounds-{lang}"),
    ):
        if not path.exists():
            raise UserError(f"asterisk: {path} not found (apt-get install {package})")
    speaker, accent = voice(sounds, lang)
    for key, raw in sorted(read_transcripts(transcripts).items()):
        if cfg.part != "all" and part_of(key, cfg.guard_fraction) != cfg.part:
            continue
        uid = "asterisk-" + key.replace("/", "-")
        text = speech_text(raw)
        if not text or text.strip(".") == "":
            yield Reject(uid, f"not speech: {raw[:60]!r}", "asterisk")
            continue
        wav = sounds / f"{key}.wav"
        if not wav.is_file():
            yield Reject(uid, f"audio file missing: {wav}", "asterisk")
            continue
        yield file_candidate(uid, text, speaker, accent, "asterisk", wav)
