"""A `datasets` corpus: a hub id, a ``save_to_disk`` folder, or Parquet files.

Audio is never decoded by `datasets` (its decoder needs torchcodec and FFmpeg): Audio
columns are cast to ``Audio(decode=False)`` and each example's encoded bytes (or file) are
read by ``pipeline.audio``. Columns holding ``{array, sampling_rate}`` dicts or plain file
paths work too. Streaming datasets are read lazily and ``limit`` stops the stream early.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import soundfile as sf

from pipeline import audio
from pipeline.config import HFSource
from pipeline.errors import UserError
from pipeline.prepare.corpora.base import Candidate, Reject, SourceContext, check_text, kept, take

SOURCE = "hf"
# files `save_to_disk` writes: one Dataset, or a DatasetDict of splits
SAVED_MARKERS = ("state.json", "dataset_dict.json")
REMOTE_PREFIXES = ("hf://", "http://", "https://", "s3://", "gs://", "zip://")

Entry = Candidate | Reject


def candidates(cfg: HFSource, ctx: SourceContext) -> Iterator[Entry]:
    """Yield a Candidate or a Reject for each example, in dataset order.

    ``cfg.keep`` drops the examples the set does not take (before they count); ``cfg.limit``
    stops after that many Candidates (the Rejects met on the way are still yielded); nothing
    after them is read, which is what makes a limited stream cheap.
    """
    ds, base = load(cfg, ctx)
    columns = _columns(ds)
    wanted = [cfg.audio_column, cfg.text_column]
    wanted += [c for c in (cfg.speaker_column, cfg.accent_column, cfg.id_column) if c]
    if columns is not None:
        for name in wanted:
            if name not in columns:
                raise UserError(
                    f"hf dataset {cfg.dataset}: no column {name!r} "
                    f"(available: {', '.join(columns)})"
                )
    ds = _undecoded(ds, cfg.audio_column)
    examples = ds.select_columns(list(dict.fromkeys(wanted)))
    yield from take(_entries(examples, cfg, base), cfg.limit)


def _entries(examples: Iterable[dict], cfg: HFSource, base: Path | None) -> Iterator[Entry]:
    seen: set[str] = set()
    for index, example in enumerate(examples):
        utt = _text(example.get(cfg.id_column)) if cfg.id_column else ""
        utt = utt or f"{index:07d}"
        speaker = _text(example.get(cfg.speaker_column)) if cfg.speaker_column else ""
        accent = _text(example.get(cfg.accent_column)) if cfg.accent_column else ""
        speaker, accent = speaker or "unknown", accent or cfg.accent
        if not kept(cfg.keep, utt, speaker, accent):
            continue
        if utt in seen:
            yield Reject(utt, "duplicate id", SOURCE)
            continue
        seen.add(utt)
        yield _entry(utt, example, cfg, base, speaker, accent)


def load(cfg: HFSource, ctx: SourceContext) -> tuple[Any, Path | None]:
    """Open the dataset split; also return the local folder relative audio paths start from.

    Raises UserError with one line when the dataset cannot be opened.
    """
    where = Path(cfg.dataset).expanduser()
    if where.is_dir() and any((where / name).is_file() for name in SAVED_MARKERS):
        return _from_disk(where, cfg), where
    parquet_file = where.is_file() and where.suffix.lower() == ".parquet"
    if parquet_file or (where.is_dir() and any(where.rglob("*.parquet"))):
        return _from_parquet(where, cfg, ctx), where if where.is_dir() else where.parent
    if where.exists():
        raise UserError(
            f"hf dataset {where}: not a save_to_disk folder or Parquet files "
            "(for audio files with a transcript table, use a 'local' source)"
        )
    if cfg.dataset.startswith(("/", ".", "~")) or cfg.dataset.endswith(".parquet"):
        raise UserError(f"hf dataset not found: {where}")
    return _from_hub(cfg), None


def _from_disk(where: Path, cfg: HFSource) -> Any:
    try:
        ds = datasets.load_from_disk(str(where))
    except (OSError, ValueError) as err:
        raise UserError(f"hf dataset {where}: cannot load: {_first_line(err)}") from None
    if isinstance(ds, datasets.DatasetDict):
        if cfg.split not in ds:
            raise UserError(f"hf dataset {where}: no split {cfg.split!r} (splits: {', '.join(ds)})")
        ds = ds[cfg.split]
    # saved to disk means random access: streaming only changes how it is iterated
    return ds.to_iterable_dataset() if cfg.streaming else ds


def _from_parquet(where: Path, cfg: HFSource, ctx: SourceContext) -> Any:
    # one file is the split by itself; a folder is split by file names like the hub does
    # ('train-0000.parquet', 'data/test/...'), everything being 'train' when none match
    where_kw = {"data_files": str(where)} if where.is_file() else {"data_dir": str(where)}
    try:
        return datasets.load_dataset(
            "parquet",
            split="train" if where.is_file() else cfg.split,
            streaming=cfg.streaming,
            # the Arrow copy belongs to the set's disposable work folder
            cache_dir=str(ctx.work_dir / "hf_cache"),
            **where_kw,
        )
    except (OSError, ValueError) as err:
        raise UserError(f"hf dataset {where}: cannot load: {_first_line(err)}") from None


def _from_hub(cfg: HFSource) -> Any:
    try:
        # datasets >= 4 runs no loading scripts, so no remote code can run here
        return datasets.load_dataset(
            cfg.dataset,
            cfg.config_name,
            split=cfg.split,
            streaming=cfg.streaming,
            revision=cfg.revision,
        )
    except ValueError as err:  # an unknown split or config
        raise UserError(f"hf dataset {cfg.dataset}: {_first_line(err)}") from None
    except OSError as err:  # not found, offline (ConnectionError), or no access
        raise UserError(
            f"hf dataset {cfg.dataset} could not be loaded (offline?): {_first_line(err)}; "
            "point source.dataset at a local save_to_disk folder or Parquet file instead"
        ) from None


def _columns(ds: Any) -> list[str] | None:
    """Column names, or None for a stream whose schema is only known once read."""
    return list(ds.features) if ds.features is not None else None


def _undecoded(ds: Any, column: str) -> Any:
    if ds.features is not None and isinstance(ds.features[column], datasets.Audio):
        return ds.cast_column(column, datasets.Audio(decode=False))
    return ds


def _entry(
    utt: str, example: dict, cfg: HFSource, base: Path | None, speaker: str, accent: str
) -> Entry:
    if cfg.audio_column not in example:  # only possible for a schema-less stream
        return Reject(utt, f"no column {cfg.audio_column!r} in this example", SOURCE)
    text = example.get(cfg.text_column)
    if reason := check_text(text):
        return Reject(utt, reason, SOURCE)
    found = _audio(example[cfg.audio_column], base)
    if isinstance(found, str):
        return Reject(utt, found, SOURCE)
    spec, load, path = found
    return Candidate(
        id=utt,
        text=str(text).strip(),
        speaker=speaker,
        accent=accent,
        source=SOURCE,
        spec=spec,
        load=load,
        path=path,
    )


def _audio(value: Any, base: Path | None) -> tuple[str, partial, str | None] | str:
    """(spec, load, path) for one audio value, or the reason it cannot be used."""
    if isinstance(value, dict) and value.get("bytes"):
        return _from_bytes(bytes(value["bytes"]))
    if isinstance(value, dict) and value.get("array") is not None:
        rate = value.get("sampling_rate")
        if not rate:
            return "audio array without sampling_rate"
        wave = np.asarray(value["array"], dtype=np.float32)
        buffer = io.BytesIO()
        # float WAV keeps the samples exactly as given
        sf.write(buffer, wave, int(rate), format="WAV", subtype="FLOAT")
        return _from_bytes(buffer.getvalue())
    path = value.get("path") if isinstance(value, dict) else value
    if isinstance(path, str) and path:
        return _from_path(path, base)
    return "no audio in this example"


def _from_bytes(raw: bytes) -> tuple[str, partial, None]:
    spec = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    return spec, partial(audio.read, raw), None


def _from_path(given: str, base: Path | None) -> tuple[str, partial, str] | str:
    if given.startswith(REMOTE_PREFIXES) or "::" in given:
        return f"remote audio file not supported (download the dataset first): {given}"
    path = Path(given).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    path = path.resolve()
    if not path.is_file():
        return f"audio file not found: {given}"
    stat = os.stat(path)
    return f"{path}:{stat.st_size}:{stat.st_mtime_ns}", partial(audio.read, str(path)), str(path)


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__
