"""The utterance table: one Parquet row per utterance, the contract between stages.

Audio paths are stored relative to the manifest's folder when the audio lives under the
same data root, so a data folder can be moved as a whole; ``read`` returns absolute paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from pipeline.fsio import atomic_path

COLUMNS = {
    "id": "string",
    "audio_path": "string",
    "duration_s": "float64",
    "text": "string",
    "speaker": "string",
    "accent": "string",
    "noise": "string",  # 'clean' or the noise type
    "snr_db": "float64",  # NaN for clean audio
    "split": "string",  # pool | target | dev | test
    "source": "string",  # corpus source and set, e.g. 'synth:pool'
}
CLEAN = "clean"


class ManifestError(UserError):
    pass


def to_frame(rows: list[dict]) -> pd.DataFrame:
    """A validated manifest frame from row dicts (extra keys become extra columns)."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS) if not rows else None)
    return validate(frame)


def validate(frame: pd.DataFrame, where: str = "manifest") -> pd.DataFrame:
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(f"{where}: missing columns {', '.join(missing)}")
    frame = frame.astype(COLUMNS)
    ordered = list(COLUMNS) + [c for c in frame.columns if c not in COLUMNS]
    frame = frame[ordered].reset_index(drop=True)
    for column in ("id", "audio_path", "text", "split"):
        if frame[column].isna().any():
            raise ManifestError(f"{where}: column {column} has empty values")
    dupes = frame["id"][frame["id"].duplicated()]
    if len(dupes):
        raise ManifestError(f"{where}: duplicate id {dupes.iloc[0]!r}")
    bad = frame["duration_s"].isna() | (frame["duration_s"] <= 0)
    if bad.any():
        raise ManifestError(f"{where}: non-positive duration for id {frame['id'][bad].iloc[0]!r}")
    noisy = frame["noise"] != CLEAN
    if frame["snr_db"][noisy].isna().any():
        raise ManifestError(f"{where}: noisy rows need snr_db")
    return frame


def write(frame: pd.DataFrame, path: str | Path, root: str | Path | None = None) -> None:
    """Validate and atomically write ``frame`` to ``path`` (Parquet).

    Audio under ``root`` (default: the manifest's folder) is stored relative to the manifest.
    """
    path = Path(path).resolve()
    root = Path(root).resolve() if root is not None else path.parent
    frame = validate(frame.copy(), where=str(path))
    frame["audio_path"] = [_relative(p, path.parent, root) for p in frame["audio_path"]]
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def read(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest; audio paths come back absolute."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise ManifestError(f"{path}: not a readable Parquet manifest ({err})") from None
    frame = validate(frame, where=str(path))
    base = path.resolve().parent
    frame["audio_path"] = [str((base / p).resolve()) for p in frame["audio_path"]]
    return frame


def _relative(audio_path: str, base: Path, root: Path) -> str:
    audio = Path(audio_path).resolve()
    if not audio.is_relative_to(root):  # e.g. a corpus installed system-wide
        return str(audio)
    return os.path.relpath(audio, base)


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Utterances and hours per split x accent x noise x SNR."""
    keyed = frame.assign(snr=frame["snr_db"].map(lambda v: "-" if pd.isna(v) else f"{v:g}"))
    grouped = keyed.groupby(["split", "accent", "noise", "snr"], observed=True)
    table = grouped.agg(utterances=("id", "size"), seconds=("duration_s", "sum")).reset_index()
    table["hours"] = table["seconds"] / 3600.0
    return table.drop(columns="seconds").rename(columns={"snr": "snr_db"})
