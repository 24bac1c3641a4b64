"""Stage 1, prepare: corpus sets -> 16 kHz mono audio, Parquet manifests, rejects, a summary.

Output, under ``<data_dir>/prepare/``:
  manifests/<set>.parquet     one row per utterance (see pipeline.manifest)
  manifests/<set>.done.json   the set's key (a fingerprint of its inputs), its counts and the
                              building run's peak RSS; a matching key skips the set
  rejects/<set>.tsv           id, source, reason for every entry that was skipped
  audio/<set>/{clean,noisy}/  FLAC files named <id>.<spec-hash>.flac
  summary.json, summary.txt   utterances and hours per split x accent x noise x SNR

Every random choice comes from an RNG seeded by (recipe seed, set, utterance id), and every
audio file is written atomically under a name that hashes how it was made, so a killed run
resumes where it stopped and ends with the same manifests as an uninterrupted one.
"""

from __future__ import annotations

import errno
import functools
import logging
import multiprocessing
import os
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from pipeline import __version__, layout, manifest, resources
from pipeline.config import OpenSLRSource, Recipe, SetConfig
from pipeline.errors import UserError
from pipeline.fsio import file_sha256, fingerprint, read_json, write_json, write_text
from pipeline.prepare.corpora import (
    asterisk,
    augment,
    commonvoice,
    hf,
    l2arctic,
    local,
    noise,
    openslr,
    rooms,
    synth,
)
from pipeline.prepare.corpora.base import (
    Candidate,
    Limits,
    Reject,
    SourceContext,
    audio_file_name,
    ingest,
)
from pipeline.typed import to_dict

log = logging.getLogger(__name__)

SOURCES: dict[str, Callable[..., Iterable[Candidate | Reject]]] = {
    "synth": synth.candidates,
    "asterisk": asterisk.candidates,
    "local": local.candidates,
    "hf": hf.candidates,
    "openslr": openslr.candidates,
    "commonvoice": commonvoice.candidates,
    "l2arctic": l2arctic.candidates,
    "augment": augment.candidates,
}


def run(recipe: Recipe) -> pd.DataFrame:
    """Prepare every set of the recipe; return the summary table."""
    log.info("Stage 1: prepare %d sets into %s", len(recipe.prepare.sets), recipe.tree.prepare)
    frames, rejects = [], {}
    for set_cfg in recipe.prepare.sets:
        frame, reject_count = prepare_set(recipe, set_cfg)
        frames.append(frame.assign(set=set_cfg.name))
        rejects[set_cfg.name] = reject_count
    table = manifest.summary(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()
    write_summary(recipe, table, rejects)
    return table


# Sources that read files on this machine: their files are part of the set's fingerprint,
# so an edited transcript or replaced recording rebuilds the set. The others are pinned by
# their config (grammar and voices, dataset revision, archive checksum).
FILE_SOURCES = ("local", "asterisk", "commonvoice", "l2arctic", "augment")


def set_fingerprint(recipe: Recipe, set_cfg: SetConfig, items: list | None = None) -> str:
    prep = to_dict(recipe.prepare)
    prep.pop("sets")
    prep.pop("workers")  # the number of processes does not change the result
    # nor do the archive limits (they refuse an archive or let it through unchanged)
    source = _without_limits(to_dict(set_cfg))
    prep["noise_sources"] = {k: _without_limits(v) for k, v in prep["noise_sources"].items()}
    inputs = [
        (i.id, i.reason) if isinstance(i, Reject) else (i.id, i.text, i.speaker, i.accent, i.spec)
        for i in items or []
    ]
    return fingerprint(recipe.seed, prep, source, inputs, __version__)


ARCHIVE_LIMITS = ("max_members", "max_extracted_gb", "max_expansion")


def _without_limits(cfg: dict) -> dict:
    """A set's (or noise source's) config without the archive limits, at any depth."""
    if "source" in cfg:
        return {**cfg, "source": _without_limits(cfg["source"])}
    return {k: v for k, v in cfg.items() if k not in ARCHIVE_LIMITS}


def prepare_set(recipe: Recipe, set_cfg: SetConfig) -> tuple[pd.DataFrame, dict[str, int]]:
    """Build one set's manifest, or reuse it when its fingerprint has not changed."""
    tree = recipe.tree
    out = tree.manifest(set_cfg.name)
    stamp_path = out.with_suffix(".done.json")
    prep = recipe.prepare
    ctx = SourceContext(
        recipe.seed,
        set_cfg.name,
        set_cfg.split,
        tree.sources(set_cfg.name),
        prep.sample_rate,
        tree.manifests,
    )
    source = SOURCES[set_cfg.source.kind]
    items = list(source(set_cfg.source, ctx)) if set_cfg.source.kind in FILE_SOURCES else None
    fp = set_fingerprint(recipe, set_cfg, items)
    if out.exists() and layout.is_done(stamp_path, fp):
        stamp, digest = read_json(stamp_path), file_sha256(out)
        if stamp.get("manifest_sha256", digest) == digest:
            if "manifest_sha256" not in stamp:  # a stamp from before the hash was kept
                write_json(stamp_path, {**stamp, "manifest_sha256": digest})
            log.info("set %s: up to date (%s)", set_cfg.name, out)
            return manifest.read(out), stamp["rejects"]
        log.warning("set %s: %s changed since prepare wrote it: rebuilding it", set_cfg.name, out)
    if out.exists() or stamp_path.exists():
        # the old manifest goes first: a run killed while rebuilding leaves no manifest for
        # the next stage to take for the recipe's (its audio stays, reused by name)
        stamp_path.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
        log.info("set %s: rebuilding (the recipe, its files or the code changed)", set_cfg.name)
    started = time.monotonic()
    audio_dir = tree.audio(set_cfg.name)
    limits = Limits(prep.sample_rate, prep.min_duration_s, prep.max_duration_s)

    cands, rejects = _unique(items if items is not None else source(set_cfg.source, ctx))
    jobs = [(c, audio_dir / "clean" / audio_file_name(c.id, c.spec)) for c in cands]
    clean, converted = [], Counter()
    for result in _map(
        _ingest_job,
        [(c, p, limits, set_cfg.split != "target") for c, p in jobs],
        prep.workers,
        f"{set_cfg.name}: audio",
    ):
        if isinstance(result, Reject):
            rejects.append(result)
            continue
        converted.update(result.pop("_converted", []))
        clean.append(result)

    noise_of = {c.id: c.noise or set_cfg.noise for c in cands}
    kept = {r["audio_path"] for r in clean}  # the dry audio stays, reused by name on a rerun
    room_of = {c.id: c.room or set_cfg.room for c in cands}
    if any(room_of.values()):  # reverberation first: the noise is mixed into the room's sound
        clean = _reverberant(recipe, set_cfg.name, clean, room_of, audio_dir / "room", rejects)
        noise_of = {r["id"]: noise_of[r.pop("dry_id", r["id"])] for r in clean}
    banks = noise_banks(recipe, {t for cfg in noise_of.values() if cfg for t in cfg.types})
    # babble talkers come from rows with the same noise block, in a room or dry as the row is
    groups: dict[tuple[int, bool], list[dict]] = {}
    for row in clean:
        groups.setdefault((id(noise_of[row["id"]]), "room" in row), []).append(row)
    rows, noisy_jobs = [], []
    for row in clean:
        cfg = noise_of[row["id"]]
        if cfg is None or not cfg.types or cfg.keep_clean:
            rows.append(row)
        if cfg is not None and cfg.types:
            others = groups[(id(cfg), "room" in row)]
            for job in noise.plan(
                row, cfg, prep, recipe.seed, set_cfg.name, others, audio_dir / "noisy", banks
            ):
                noisy_jobs.append((row, job))
    results = _map(
        _noisy_job,
        [(job, prep.sample_rate) for _, job in noisy_jobs],
        prep.workers,
        f"{set_cfg.name}: noise",
    )
    for (row, _), made in zip(noisy_jobs, results, strict=True):
        if isinstance(made, Reject):
            rejects.append(made)
        else:
            rows.append({**row, **made})

    frame = manifest.to_frame([{**r, "split": set_cfg.split} for r in rows])
    frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
    _write_rejects(tree.prepare / "rejects" / f"{set_cfg.name}.tsv", rejects)
    manifest.write(frame, out, root=recipe.root)
    _remove_stale(audio_dir, set(frame["audio_path"]) | {r["audio_path"] for r in clean} | kept)
    reasons = Counter(_reason_kind(r.reason) for r in rejects)
    layout.mark_done(
        stamp_path,
        fp,
        manifest_sha256=file_sha256(out),  # a manifest edited later is rebuilt, not trusted
        utterances=len(frame),
        rejects=dict(reasons),
        converted=dict(converted),
        **resources.peak_rss(),  # of the run that built the set (workers included)
    )
    log.info(
        "set %s: %d utterances (%.2f h), %d rejected%s, %.1f s",
        set_cfg.name,
        len(frame),
        frame["duration_s"].sum() / 3600,
        len(rejects),
        f" ({dict(reasons)})" if rejects else "",
        time.monotonic() - started,
    )
    if converted:
        log.info("set %s: converted on the way in: %s", set_cfg.name, dict(converted))
    return manifest.read(out), dict(reasons)


def noise_banks(recipe: Recipe, names: set[str]) -> dict[str, tuple[str, ...]]:
    """The recordings of each noise source among ``names``, fetched on first use."""
    sources = recipe.prepare.noise_sources
    banks = {}
    for name in sorted(names & sources.keys()):
        if name in recipe.prepare.noise_files:
            raise UserError(f"prepare.noise_sources.{name}: also a key of prepare.noise_files")
        banks[name] = _bank(name, sources[name], recipe.tree.noise_sources(name))
    return banks


@functools.lru_cache(maxsize=8)
def _bank(name: str, cfg: OpenSLRSource, work_dir: Path) -> tuple[str, ...]:
    ctx = SourceContext(0, f"noise_sources.{name}", "noise", work_dir)
    files = tuple(c.path for c in openslr.candidates(cfg, ctx) if isinstance(c, Candidate))
    if not files:
        raise UserError(f"prepare.noise_sources.{name}: no recordings in {cfg.url}")
    log.info("noise %s: %d recordings from %s", name, len(files), cfg.url)
    return files


def _unique(items: Iterable[Candidate | Reject]) -> tuple[list[Candidate], list[Reject]]:
    """Split a source's output; a repeated id keeps its first occurrence."""
    seen: set[str] = set()
    cands, rejects = [], []
    for item in items:
        if isinstance(item, Reject):
            rejects.append(item)
        elif any(unicodedata.category(c) in LINE_BREAKING for c in item.id):
            # a tab or newline in an id would split the manifest's consumers' tables
            rejects.append(Reject(item.id, "id holds a control character", item.source))
        elif item.id in seen:
            rejects.append(Reject(item.id, "duplicate id", item.source))
        else:
            seen.add(item.id)
            cands.append(item)
    return cands, rejects


def _ingest_job(args: tuple) -> dict | Reject:
    return ingest(*args)


def _reverberant(recipe: Recipe, set_name: str, clean, room_of, out_dir: Path, rejects) -> list:
    """Each clean row with a room as its reverberant copy (an id of its own,
    ``<id>_room<k>``); rows without one stay dry."""
    prep = recipe.prepare
    wet = [r for r in clean if room_of[r["id"]] is not None]
    jobs = [rooms.plan(r, room_of[r["id"]], prep, recipe.seed, set_name, out_dir) for r in wet]
    made = _map(_reverb_job, [(j, prep.sample_rate) for j in jobs], prep.workers, "room")
    results = dict(zip((r["id"] for r in wet), made, strict=True))
    out = []
    for row in clean:
        result = results.get(row["id"])
        if isinstance(result, Reject):
            rejects.append(result)
        elif result is None:
            out.append(row)
        else:
            out.append({**row, **result, "dry_id": row["id"]})
    return out


def _reverb_job(args: tuple) -> dict | Reject:
    job, sample_rate = args
    try:
        return rooms.make(job, sample_rate)
    except (rooms.audio.AudioError, ValueError) as err:
        return Reject(job.id, f"reverberation failed: {err}", "room")


def _noisy_job(args: tuple) -> dict | Reject:
    job, sample_rate = args
    try:
        return noise.make(job, sample_rate)
    except (noise.audio.AudioError, OSError) as err:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise  # the output cannot be written: stop, rather than reject every row
        return Reject(job.id, f"noise mixing failed: {err}", "noise")


def _map(fn: Callable, jobs: list, workers: int, desc: str) -> Iterator:
    """``fn`` over ``jobs`` in order, in ``workers`` processes, with a progress bar."""
    # disable=None: no bar when output is not a terminal (logs, CI)
    bar = dict(total=len(jobs), desc=desc, unit="utt", leave=False, mininterval=1.0, disable=None)
    if workers <= 1 or len(jobs) < 32:
        yield from tqdm(map(fn, jobs), **bar)
        return
    context = multiprocessing.get_context()
    # a forkserver's workers are the server's children, not this process's: the kernel's
    # parent-death signal then reaches them through the server, which exits with this process
    parent = os.getpid() if context.get_start_method() in ("fork", "spawn") else None
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=resources.die_with_parent,
        initargs=(parent,),
    ) as pool:
        yield from tqdm(pool.map(fn, jobs, chunksize=16), **bar)


def _write_rejects(path: Path, rejects: list[Reject]) -> None:
    lines = ["id\tsource\treason"] + [
        f"{tsv_field(r.id)}\t{tsv_field(r.source)}\t{' '.join(r.reason.split())}"
        for r in sorted(rejects, key=lambda r: r.id)
    ]
    write_text(path, "\n".join(lines) + "\n")


# Unicode categories that split a line or a field: controls (tab, newline, ...) and the line
# and paragraph separators. Letters, marks and format characters (a zero-width non-joiner in
# a Persian stem) are an id's own business
LINE_BREAKING = ("Cc", "Zl", "Zp")
_TSV_ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def tsv_field(value: str) -> str:
    """``value`` with backslash, tab, newline and carriage return escaped (``\\t`` ...), and
    any other control or line-separator character as ``\\xNN``/``\\uNNNN``: one reject stays
    one line of three fields whatever its id holds."""
    out = []
    for c in str(value):
        if c in _TSV_ESCAPES:
            out.append(_TSV_ESCAPES[c])
        elif unicodedata.category(c) in LINE_BREAKING:
            out.append(f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0]


def _remove_stale(audio_dir: Path, keep: set[str]) -> None:
    """Delete audio made by earlier versions of the set's config (and temp files of a kill)."""
    if not audio_dir.exists():
        return
    keep = {str(Path(p).resolve()) for p in keep}
    for path in audio_dir.rglob("*"):
        if path.is_file() and str(path.resolve()) not in keep:
            path.unlink()


def write_summary(recipe: Recipe, table: pd.DataFrame, rejects: dict[str, dict[str, int]]) -> None:
    root = recipe.tree.prepare
    text = format_summary(table, rejects)
    write_text(root / "summary.txt", text + "\n")
    write_json(
        root / "summary.json",
        {
            "recipe": recipe.name,
            "groups": table.to_dict(orient="records"),
            "rejects": rejects,
            "utterances": int(table["utterances"].sum()) if len(table) else 0,
            "hours": float(table["hours"].sum()) if len(table) else 0.0,
        },
    )
    print(text)


def format_summary(table: pd.DataFrame, rejects: dict[str, dict[str, int]]) -> str:
    if table.empty:
        return "no utterances"
    shown = table.assign(hours=table["hours"].map(lambda h: f"{h:.3f}"))
    totals = table.groupby("split")[["utterances", "hours"]].sum()
    lines = [shown.to_string(index=False), "", "totals per split:"]
    lines += [
        f"  {split:8s} {int(r.utterances):7d} utterances {r.hours:8.3f} h"
        for split, r in totals.iterrows()
    ]
    bad = {k: v for k, v in rejects.items() if v}
    lines.append("rejects: " + (", ".join(f"{k} {v}" for k, v in bad.items()) if bad else "none"))
    return "\n".join(lines)
