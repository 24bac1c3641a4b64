"""Atomic writes and content fingerprints: a killed stage never leaves a half-written file."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_parquet(path: str | Path, columns: list[str] | None = None):
    """A Parquet table, or a UserError naming the file when it is damaged or lacks one of
    ``columns`` (written by an older version). OS errors (a missing file, no permission)
    pass through as they are."""
    import pandas as pd  # fsio is imported by light modules; pandas only when read
    import pyarrow as pa

    from pipeline.errors import UserError

    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, ValueError) as err:  # ArrowInvalid: not Parquet, cut short
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise UserError(
            f"{path}: not a readable Parquet table ({first}); delete it and rerun the stage "
            "that wrote it"
        ) from None
    missing = [c for c in columns or () if c not in frame.columns]
    if missing:
        raise UserError(
            f"{path}: no column {', '.join(missing)} (written by an older version?); rerun "
            "the stage that wrote it"
        )
    return frame[list(columns)] if columns else frame


def fingerprint(*parts: Any) -> str:
    """Stable short hash of JSON-serialisable parts."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed derived from its parts, the same in every process and run."""
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)
