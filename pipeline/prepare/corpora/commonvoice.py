"""Common Voice releases as Mozilla distributes them: one folder per language.

    cv-corpus-<version>/en/
      train.tsv dev.tsv test.tsv    speaker-disjoint splits of validated.tsv
      validated.tsv other.tsv ...   every validated / not yet validated clip
      clips/common_voice_en_<n>.mp3

Each TSV row names a clip (``path``, relative to ``clips/``), its ``sentence`` and its speaker
(``client_id``, a hash). The speaker's accent is ``accents`` (newer releases: free text or
labels from a suggested list, several joined by commas) or ``accent`` (older releases: a
short code). The manifest gets one accent per clip: the first listed one that is on Common Voice's
suggested list (so "Liverpool English,England English" counts as England English), else the
first listed, else "unknown"; old codes map to today's labels, so releases agree.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from pipeline import audio
from pipeline.config import CommonVoiceSource
from pipeline.errors import UserError
from pipeline.prepare.corpora.base import Candidate, Reject, SourceContext, check_text, kept, take
from pipeline.prepare.corpora.local import read_table

SOURCE = "commonvoice"
# the codes of older releases and the labels that replaced them (Common Voice's suggested
# accent list, spelled as the release TSVs spell it)
LEGACY_ACCENTS = {
    "us": "United States English",
    "england": "England English",
    "scotland": "Scottish English",
    "wales": "Welsh English",
    "ireland": "Irish English",
    "canada": "Canadian English",
    "bermuda": "West Indies and Bermuda (Bahamas, Bermuda, Jamaica, Trinidad)",
    "australia": "Australian English",
    "newzealand": "New Zealand English",
    "southatlandtic": "South Atlantic (Falkland Islands, Saint Helena)",  # code misspelled so
    "african": "Southern African (South Africa, Zimbabwe, Namibia)",
    "indian": "India and South Asia (India, Pakistan, Sri Lanka)",
    "philippines": "Filipino",
    "hongkong": "Hong Kong English",
    "malaysia": "Malaysian English",
    "singapore": "Singaporean English",
}
SUGGESTED_ACCENTS = frozenset(LEGACY_ACCENTS.values())
_ACCENT_SEPARATOR = re.compile(r",(?![^(]*\))")  # commas outside "(India, Pakistan, ...)"

Entry = Candidate | Reject


def accent_label(raw: str) -> str:
    """The one accent a clip is grouped under (see the module docstring)."""
    listed = [part.strip() for part in _ACCENT_SEPARATOR.split(raw or "") if part.strip()]
    listed = [LEGACY_ACCENTS.get(part, part) for part in listed]
    if not listed:
        return "unknown"
    return next((part for part in listed if part in SUGGESTED_ACCENTS), listed[0])


def candidates(cfg: CommonVoiceSource, ctx: SourceContext) -> Iterator[Entry]:
    """Yield a Candidate or a Reject per row of ``<path>/<split>.tsv``, in table order."""
    del ctx  # the clips are used where they are
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise UserError(f"commonvoice source.path: folder not found: {root}")
    table = root / f"{cfg.split}.tsv"
    if not table.is_file():
        found = ", ".join(sorted(p.stem for p in root.glob("*.tsv"))) or "no .tsv files"
        raise UserError(
            f"commonvoice source.split: no {table.name} in {root} ({found}); "
            "source.path is a release's language folder, e.g. cv-corpus-17.0-2024-03-15/en"
        )
    frame = read_table(table)
    missing = [c for c in ("path", "sentence", "client_id") if c not in frame.columns]
    if missing:
        raise UserError(f"{table}: not a Common Voice table: no column {', '.join(missing)}")
    accent_col = next((c for c in ("accents", "accent") if c in frame.columns), None)
    accents = frame[accent_col] if accent_col else [""] * len(frame)
    rows = zip(frame["path"], frame["sentence"], frame["client_id"], accents, strict=True)
    yield from take(_entries(rows, root / "clips", cfg), cfg.limit)


def _entries(rows, clips: Path, cfg: CommonVoiceSource) -> Iterator[Entry]:
    seen: set[str] = set()
    labels: dict[str, str] = {}  # a few hundred distinct accent strings over a million rows
    for clip, sentence, client, raw_accent in rows:
        clip = clip.strip()
        utt = Path(clip).stem or clip
        if raw_accent not in labels:
            labels[raw_accent] = accent_label(raw_accent)
        speaker, accent = client.strip() or "unknown", labels[raw_accent]
        if not kept(cfg.keep, utt, speaker, accent):
            continue
        if utt in seen:
            yield Reject(utt, "duplicate clip", SOURCE)
            continue
        seen.add(utt)
        if reason := check_text(sentence):
            yield Reject(utt, reason, SOURCE)
            continue
        path = clips / clip
        if not clip or "/" in clip or "\\" in clip or not path.is_file():
            yield Reject(utt, f"audio file missing: clips/{clip}", SOURCE)
            continue
        stat = os.stat(path)
        yield Candidate(
            id=utt,
            text=sentence.strip(),
            speaker=speaker,
            accent=accent,
            source=SOURCE,
            spec=f"{path}:{stat.st_size}:{stat.st_mtime_ns}",
            load=partial(audio.read, str(path)),  # MP3, decoded by libsndfile
            path=str(path),
        )
