"""A user's own corpus on disk: a transcript table (TSV/CSV) or a Kaldi data directory.

One bad row never stops the source: it becomes a ``Reject`` with its reason. Only an input
that is unusable as a whole (no table, no ``wav.scp``, a required column missing) raises
``UserError``. Nothing in a Kaldi ``wav.scp`` is ever executed.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipeline.config import LocalSource
from pipeline.errors import UserError
from pipeline.prepare.corpora.base import (
    Candidate,
    Reject,
    SourceContext,
    check_text,
    file_candidate,
    kept,
    take,
)

SOURCE = "local"
TABLE_SUFFIXES = (".tsv", ".csv")
# accepted header names per role, first match wins (matched case-insensitively)
AUDIO_COLUMNS = ("path", "audio", "file", "audio_path")
TEXT_COLUMNS = ("text", "transcript", "sentence")
PIPED_REASON = "piped/ark wav.scp entries are not supported (nothing is executed)"
# Kaldi extended filenames: 'foo.ark:1234' (byte offset), optionally with a '[range]'
_ARK_OFFSET = re.compile(r":\d+(\[[^\]]*\])?$")

Entry = Candidate | Reject


def candidates(cfg: LocalSource, ctx: SourceContext) -> Iterator[Entry]:
    """Yield a Candidate or a Reject for each utterance of a local corpus, in a stable order.

    The order is the table's row order, or sorted utterance ids for Kaldi. ``cfg.limit``
    stops after that many Candidates; the Rejects met on the way are still yielded. A
    ``target`` set is unlabelled audio (its transcripts are never used): its table may have
    no text column, or empty cells.
    """
    root = Path(cfg.path).expanduser()
    unlabelled = ctx.split == "target"
    if cfg.format == "kaldi":
        entries = _kaldi(root, cfg)
    elif unlabelled and _bare_folder(root, cfg):
        entries = _audio_files(root, cfg)
    else:
        entries = _table(root, cfg, unlabelled)
    yield from take(entries, cfg.limit)


# ---------------------------------------------------------------- a folder of recordings


AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def _bare_folder(root: Path, cfg: LocalSource) -> bool:
    """A folder without a transcript table: a user's recordings, as they are."""
    if not root.is_dir() or cfg.transcript:
        return False
    return not any(p.suffix.lower() in TABLE_SUFFIXES for p in root.iterdir())


def _audio_files(root: Path, cfg: LocalSource) -> Iterator[Entry]:
    """Every audio file under ``root`` (sorted), as unlabelled utterances named by path."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise UserError(
            f"{root}: no transcript table and no audio file ({', '.join(AUDIO_SUFFIXES)})"
        )
    rel = [str(p.relative_to(root)) for p in files]
    for utt, name in zip(_default_ids(rel), rel, strict=True):
        if kept(cfg.keep, utt, "unknown", cfg.accent):
            yield _file_candidate(utt, "", "unknown", cfg.accent, (root,), name)


# ---------------------------------------------------------------- transcript tables


def find_table(root: Path, transcript: str | None) -> Path:
    """The transcript table: ``root`` itself, ``root/transcript``, or the only table in ``root``."""
    if root.is_file():
        return root
    if not root.is_dir():
        raise UserError(f"local corpus not found: {root}")
    if transcript:
        table = root / transcript
        if not table.is_file():
            raise UserError(f"transcript table not found: {table}")
        return table
    tables = sorted(p for p in root.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise UserError(
            f"{root}: expected exactly one .tsv or .csv transcript table (found {found}); "
            "name it with source.transcript"
        )
    return tables[0]


def read_table(table: Path) -> pd.DataFrame:
    """A TSV (unquoted, as Common Voice writes it) or CSV table, every cell a string."""
    tsv = table.suffix.lower() != ".csv"
    try:
        return pd.read_csv(
            table,
            sep="\t" if tsv else ",",
            # TSV transcripts (Common Voice and most tools) are unquoted, and a quote
            # character inside a sentence must stay text
            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL,
            dtype=str,
            keep_default_na=False,  # a transcript 'NA' or 'null' is text, not missing
            encoding="utf-8-sig",  # tolerate the byte-order mark spreadsheets write
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise UserError(f"{table}: not a readable table: {str(err).splitlines()[0]}") from None


def _column(frame: pd.DataFrame, table: Path, names: tuple[str, ...], required: bool) -> str | None:
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    for name in names:
        if name in by_lower:
            return by_lower[name]
    if required:
        raise UserError(
            f"{table}: missing column {' or '.join(names)} "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    return None


def _table(root: Path, cfg: LocalSource, unlabelled: bool = False) -> Iterator[Entry]:
    table = find_table(root, cfg.transcript)
    frame = read_table(table)
    audio_col = _column(frame, table, AUDIO_COLUMNS, required=True)
    text_col = _column(frame, table, TEXT_COLUMNS, required=not unlabelled)
    id_col = _column(frame, table, ("id",), required=False)
    speaker_col = _column(frame, table, ("speaker",), required=False)
    accent_col = _column(frame, table, ("accent",), required=False)

    rel_paths = [str(p).strip() for p in frame[audio_col]]
    ids = [str(i).strip() for i in frame[id_col]] if id_col else _default_ids(rel_paths)
    first_row: dict[str, int] = {}
    for row, (utt, rel) in enumerate(zip(ids, rel_paths, strict=True)):
        line = row + 2  # 1-based, after the header: what an editor shows
        utt = utt or f"row{line}"
        speaker = _value(frame, speaker_col, row) or "unknown"
        accent = _value(frame, accent_col, row) or cfg.accent
        if not kept(cfg.keep, utt, speaker, accent):
            continue
        if utt in first_row:
            yield Reject(utt, f"duplicate id: first on line {first_row[utt]}", SOURCE)
            continue
        first_row[utt] = line
        text = frame[text_col].iat[row] if text_col else ""
        reason = None if unlabelled else check_text(text)
        if reason:
            yield Reject(utt, reason, SOURCE)
            continue
        yield _file_candidate(utt, text.strip(), speaker, accent, (table.parent,), rel)


def _default_ids(rel_paths: list[str]) -> list[str]:
    """File stems; where two rows share a stem, their path (so speaker folders stay apart)."""
    stems = [Path(p).stem for p in rel_paths]
    shared = {s for s in stems if s and stems.count(s) > 1}
    return [_path_id(p) if s in shared else s for s, p in zip(stems, rel_paths, strict=True)]


def _path_id(rel: str) -> str:
    parts = Path(rel).with_suffix("").parts
    return "_".join(part for part in parts if part not in ("/", "\\", ".", ".."))


def _value(frame: pd.DataFrame, column: str | None, row: int) -> str:
    return str(frame[column].iat[row]).strip() if column else ""


# ---------------------------------------------------------------- Kaldi data directories


def _kaldi(root: Path, cfg: LocalSource) -> Iterator[Entry]:
    if not root.is_dir():
        raise UserError(f"Kaldi data directory not found: {root}")
    for required in ("wav.scp", "text"):
        if not (root / required).is_file():
            raise UserError(f"Kaldi data directory {root}: missing {required}")
    if (root / "segments").exists():
        # wav.scp then lists recordings, not utterances; cutting them is not supported
        raise UserError(f"Kaldi data directory {root}: segments files are not supported")
    wavs, dupes = _kaldi_map(root / "wav.scp")
    texts, text_dupes = _kaldi_map(root / "text")
    speakers = _kaldi_map(root / "utt2spk")[0]
    accents = _kaldi_map(root / "utt2accent")[0]
    for utt in sorted(wavs.keys() | texts.keys()):
        speaker = speakers.get(utt) or "unknown"
        accent = accents.get(utt) or cfg.accent
        if not kept(cfg.keep, utt, speaker, accent):
            continue
        if utt in dupes or utt in text_dupes:
            yield Reject(utt, "duplicate utterance id in wav.scp or text", SOURCE)
        elif utt not in wavs:
            yield Reject(utt, "in text but not in wav.scp", SOURCE)
        elif utt not in texts:
            yield Reject(utt, "in wav.scp but not in text", SOURCE)
        elif _is_piped_or_ark(wavs[utt]):
            yield Reject(utt, PIPED_REASON, SOURCE)
        elif reason := check_text(texts[utt]):
            yield Reject(utt, reason, SOURCE)
        else:
            # Kaldi tools resolve relative paths from the recipe folder (the one holding
            # data/<set>), so try that after the data directory itself
            bases = (root, root.resolve().parent.parent)
            yield _file_candidate(utt, texts[utt], speaker, accent, bases, wavs[utt])


def _kaldi_map(path: Path) -> tuple[dict[str, str], set[str]]:
    """``<key> <rest of line>`` pairs of a Kaldi table, and the keys given more than once."""
    mapping: dict[str, str] = {}
    dupes: set[str] = set()
    if not path.is_file():
        return mapping, dupes
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
    for line in lines:
        parts = line.strip().split(maxsplit=1)
        if not parts:
            continue
        key, rest = parts[0], parts[1] if len(parts) > 1 else ""
        if key in mapping:
            dupes.add(key)
        mapping.setdefault(key, rest.strip())
    return mapping, dupes


def _is_piped_or_ark(entry: str) -> bool:
    return (
        entry.endswith("|")
        or entry.startswith("|")
        or entry == "-"
        or bool(_ARK_OFFSET.search(entry))
    )


# ---------------------------------------------------------------- shared


def _file_candidate(
    utt: str, text: str, speaker: str, accent: str, bases: tuple[Path, ...], rel: str
) -> Entry:
    """A Candidate for an audio file named relative to the first of ``bases`` that has it."""
    if not rel:
        return Reject(utt, "no audio path", SOURCE)
    given = Path(rel).expanduser()
    # the user's own data may live anywhere: absolute paths and '..' are allowed
    tries = [given] if given.is_absolute() else [base / given for base in bases]
    path = next((p.resolve() for p in tries if p.is_file()), None)
    if path is None:
        return Reject(utt, f"audio file missing: {rel}", SOURCE)
    return file_candidate(utt, text, speaker, accent, SOURCE, path)
