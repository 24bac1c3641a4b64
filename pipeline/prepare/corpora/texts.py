"""Sentences from a plain-text file, for synthesised speech outside the command grammar.

A text file holds prose: one or more sentences per line, or fortune-style entries separated
by lines of ``%`` (Debian's ``fortunes-min``: ``/usr/share/games/fortunes``). Entries are
joined into single lines, split at sentence ends, and a sentence is kept when a speech
synthesiser reads it the way it is written: 4 to 20 words of letters (of any alphabet: Debian's
``fortunes-es`` and others) and plain punctuation, Spanish ¿ ¡ and « » included (no digits,
which a voice reads out while Whisper writes them as figures, no symbols, URLs or markup).
Quiz labels (``Q:``, ``A:``) and trailing attributions (``-- Author``) are dropped.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from pipeline.errors import UserError
from pipeline.fsio import stable_seed

MIN_WORDS, MAX_WORDS = 4, 20
# [^\W\d_] is a letter of any alphabet
_KEEP = re.compile(r"(?:[¿¡«] ?)?[^\W\d_](?:[^\W\d_]|[ ,.'!?;:¿¡«»-])*[.!?]»?")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_LABEL = re.compile(r"^[QA]:\s+")
_ATTRIBUTION = re.compile(r"\s+--\s*[^-].*$")


def read_text(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def entries(text: str) -> list[str]:
    """Fortune-style entries (``%`` lines separate them), else one entry per line."""
    lines = text.splitlines()
    if any(line.strip() == "%" for line in lines):
        blocks, block = [], []
        for line in lines:
            if line.strip() == "%":
                blocks.append(" ".join(block))
                block = []
            else:
                block.append(line)
        blocks.append(" ".join(block))
    else:
        blocks = lines
    return [" ".join(b.split()) for b in blocks if b.strip()]


def sentences(text: str) -> list[str]:
    """The distinct speakable sentences of ``text``, in the order they first appear."""
    kept: dict[str, None] = {}
    for entry in entries(text):
        entry = _ATTRIBUTION.sub("", entry)
        for s in _SENTENCE_END.split(entry):
            s = _LABEL.sub("", s.strip())
            if MIN_WORDS <= len(s.split()) <= MAX_WORDS and _KEEP.fullmatch(s):
                kept.setdefault(s, None)
    return list(kept)


# each sentence's share, by a stable hash of its text: the grammar's partition for prose
SPLIT_SHARES = (("train", 0.7), ("heldout", 0.1), ("dev", 0.1), ("test", 0.1))


def in_split(found: list[str], split: str) -> list[str]:
    """The sentences of ``found`` whose hash bucket falls in ``split``'s share (in order)."""
    lo = 0.0
    for name, share in SPLIT_SHARES:
        if name == split:
            break
        lo += share
    else:
        raise UserError(f"text split {split!r}: not one of {[n for n, _ in SPLIT_SHARES]}")
    hi = lo + share
    return [s for s in found if lo <= stable_seed("text split", s) / 16**15 < hi]


def file_sentences(paths: tuple[str, ...], where: str) -> list[str]:
    """Every speakable sentence of the listed files (a folder: its files, sorted)."""
    found: dict[str, None] = {}
    for name in paths:
        path = Path(name)
        if not path.exists():
            hint = " (apt-get install fortunes-<language>)" if "fortunes" in str(path) else ""
            raise UserError(f"{where}: no text file or folder at {path}{hint}")
        files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if file.suffix == ".dat":  # fortune's index files
                continue
            for s in sentences(read_text(file)):
                found.setdefault(s, None)
    if not found:
        raise UserError(f"{where}: no sentence of {MIN_WORDS}-{MAX_WORDS} plain words in {paths}")
    return list(found)
