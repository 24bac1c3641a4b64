"""OpenSLR archives: download (resumable, checksum-verified), extract safely, parse.

Two layouts are understood: LibriSpeech (transcribed read speech) and MUSAN (noise, music and
babble recordings). Everything lands under the set's ``work_dir``: ``downloads/`` for the archive
and ``extracted/`` for its contents, with ``extracted.done`` holding the checksum of the archive
it came from, so a rerun neither downloads nor extracts again.
"""

from __future__ import annotations

import functools
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from pipeline import audio
from pipeline.config import OpenSLRSource
from pipeline.corpora.base import Candidate, Reject, SourceContext, take
from pipeline.errors import UserError
from pipeline.fsio import file_sha256, write_text

SOURCE = "openslr"
MUSAN_CATEGORIES = ("music", "noise", "speech")
CHUNK_BYTES = 1 << 20  # 1 MiB per read while downloading
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
MAX_LINK_HOPS = 40  # symlinks followed while checking one archive path (as the kernel does)

# Published checksums, keyed by URL. LibriSpeech: torchaudio.datasets.librispeech._CHECKSUMS
# (the same digests appear in Apple's mlx-data). The https URLs serve the same files.
_LIBRISPEECH_SHA256 = {
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "train-clean-360": "146a56496217e96c14334a160df97fffedd6e0a04e66b9c5af0d40be3c792ecf",
    "train-other-500": "ddb22f27f96ec163645d53215559df6aa36515f26e01dd70798188350adcb6d2",
}
# MUSAN (resources/17) is absent: no published checksum could be confirmed, so a recipe
# using it must give `sha256` itself.
KNOWN_SHA256: dict[str, str] = {
    f"{scheme}://www.openslr.org/resources/12/{name}.tar.gz": digest
    for name, digest in _LIBRISPEECH_SHA256.items()
    for scheme in ("http", "https")
}


def candidates(cfg: OpenSLRSource, ctx: SourceContext) -> Iterator[Candidate | Reject]:
    """Download, verify and extract ``cfg.url``, then yield its utterances sorted by id."""
    sha256 = (cfg.sha256 or KNOWN_SHA256.get(cfg.url) or "").strip().lower()
    if not sha256:
        raise UserError(f"openslr source {cfg.url}: no checksum known; set `sha256` in the recipe")
    dest = ctx.work_dir / "extracted"
    if not _is_extracted(dest, sha256):  # a finished extraction needs no archive at all
        archive = download(cfg.url, ctx.work_dir / "downloads", sha256)
        extract(archive, dest, sha256)
    parse = _librispeech if cfg.format == "librispeech" else _musan
    entries = parse(dest, cfg)
    entries.sort(key=lambda entry: entry.id)
    yield from take(entries, cfg.limit)


# --- download ---------------------------------------------------------------------------------


def download(url: str, dest_dir: Path, sha256: str) -> Path:
    """Fetch ``url`` into ``dest_dir`` unless a verified copy is there; return the file.

    A ``.part`` file left by an interrupted run is continued with an HTTP Range request.
    Raises UserError if the bytes do not match ``sha256`` (the download is deleted).
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(urllib.parse.unquote(parsed.path)).name
    if parsed.scheme not in ("http", "https", "file") or not name:
        raise UserError(f"openslr url must be http, https or file and name a file: {url}")
    final = dest_dir / name
    if final.exists():
        if file_sha256(final) == sha256:
            return final
        final.unlink()  # stale or corrupt: fetch again
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    for _attempt in range(2):
        resumed = _fetch(url, part)
        got = file_sha256(part)
        if got == sha256:
            os.replace(part, final)
            return final
        part.unlink()
        if not resumed:  # a resumed file may have been a bad prefix: try once from zero
            break
    raise UserError(f"checksum mismatch for {url}: expected sha256 {sha256}, got {got}")


def _fetch(url: str, part: Path) -> bool:
    """Append the rest of ``url`` to ``part``; return whether an earlier prefix was kept."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "rsft"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the checksum decides
            return True
        raise UserError(f"download failed: {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"download failed: {url}: {reason}") from None
    with response:
        if offset and getattr(response, "status", None) != 206:
            offset = 0  # the server (or a file: URL) ignored the range: start over
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        # disable=None: no bar when stderr is not a terminal (logs, CI)
        bar = tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.stem, disable=None
        )
        try:
            with bar, open(part, "ab" if offset else "wb") as fh:
                while block := response.read(CHUNK_BYTES):
                    fh.write(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as err:
            raise UserError(f"download interrupted: {url}: {err}; rerun to resume") from None
    return offset > 0


# --- safe extraction --------------------------------------------------------------------------


def _is_extracted(dest: Path, sha256: str) -> bool:
    stamp = _stamp(dest)
    return dest.is_dir() and stamp.exists() and stamp.read_text().strip() == sha256


def _stamp(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done")


def extract(archive: Path, dest: Path, sha256: str) -> Path:
    """Extract a tar (plain, gz, bz2, xz) or zip archive to ``dest`` after checking every member.

    Raises UserError, writing nothing, if any member is absolute, escapes ``dest`` (via ``..``
    or through a link), is a link pointing outside, or is a device or fifo. The archive goes to
    a temporary folder that is renamed to ``dest`` once complete, then ``dest.done`` records
    ``sha256``; a later call with the same checksum does nothing.
    """
    if _is_extracted(dest, sha256):
        return dest
    try:
        with _open_archive(archive) as handle:
            if isinstance(handle, tarfile.TarFile):
                _check_tar(handle, archive.name)
                # the data filter is a second guard, where this Python has it
                options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            else:
                for info in handle.infolist():
                    _check_member(info.filename, {}, archive.name)
                options = {}
            tmp = _fresh_tmp(dest)
            try:
                handle.extractall(tmp, **options)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise UserError(f"cannot extract {archive}: {err}") from None
    # the stamp goes first and comes back last, so any interruption means "extract again"
    _stamp(dest).unlink(missing_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    write_text(_stamp(dest), sha256 + "\n")
    return dest


def _open_archive(archive: Path) -> tarfile.TarFile | zipfile.ZipFile:
    if tarfile.is_tarfile(archive):
        return tarfile.open(archive, "r:*")
    if zipfile.is_zipfile(archive):
        return zipfile.ZipFile(archive)
    raise UserError(f"{archive}: not a tar or zip archive")


def _fresh_tmp(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))


def _check_tar(tar: tarfile.TarFile, archive_name: str) -> None:
    members = tar.getmembers()
    links = {_key(m.name): m.linkname for m in members if m.issym()}
    for member in members:
        if member.ischr() or member.isblk() or member.isfifo():
            _refuse(archive_name, member.name, "is a device or fifo")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            _refuse(archive_name, member.name, "has an unsupported type")
        # resolving a symlink's own path follows it, so this also checks where it points
        _check_member(member.name, links, archive_name)
        if member.islnk():  # hard-link targets are named from the archive root
            _check_member(member.linkname, links, archive_name, member.name)


def _check_member(path: str, links: dict[str, str], archive_name: str, member: str = "") -> None:
    """Refuse ``path`` unless it stays inside the destination; ``member`` names its owner."""
    prefix = f"links to {path!r}, which " if member else ""
    if path.startswith(("/", "\\")) or (path[1:2] == ":" and path[:1].isalpha()):
        _refuse(archive_name, member or path, prefix + "is an absolute path")
    if _resolve(path, links) is None:
        _refuse(archive_name, member or path, prefix + "leads outside the destination")


def _resolve(name: str, links: dict[str, str]) -> list[str] | None:
    """Where ``name`` lands inside the archive's tree, following its symlinks; None if outside.

    Done on path components rather than with ``os.path.normpath``: ``a/link/..`` leaves the
    tree when ``link`` points upwards, although it looks harmless as text.
    """
    pending = name.replace("\\", "/").split("/")
    out: list[str] = []
    hops = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            hops += 1
            if hops > MAX_LINK_HOPS or target.startswith("/"):
                return None
            out.pop()  # the link's target is relative to the folder holding the link
            pending = target.split("/") + pending
    return out


def _key(name: str) -> str:
    return "/".join(part for part in name.split("/") if part not in ("", "."))


def _refuse(archive_name: str, member: str, why: str) -> None:
    raise UserError(f"unsafe archive {archive_name}: member {member!r} {why}; nothing extracted")


# --- layouts ----------------------------------------------------------------------------------


def _librispeech(root: Path, cfg: OpenSLRSource) -> list[Candidate | Reject]:
    base = root / "LibriSpeech"
    subsets = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not subsets:
        raise UserError(f"{cfg.url}: no LibriSpeech/<subset>/ folders in the archive")
    if cfg.subset is not None:
        if cfg.subset not in subsets:
            raise UserError(f"{cfg.url}: subset {cfg.subset!r} not in archive (has {subsets})")
        subsets = [cfg.subset]
    entries: list[Candidate | Reject] = []
    for subset in subsets:
        # <subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt
        for trans in sorted((base / subset).glob("*/*/*.trans.txt")):
            speaker = trans.parent.parent.name
            for line in trans.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                if "/" in utt_id or "\\" in utt_id or utt_id.startswith("."):
                    entries.append(Reject(utt_id, "malformed utterance id", SOURCE))
                    continue
                flac = trans.parent / f"{utt_id}.flac"
                if flac.is_file():
                    entries.append(_candidate(utt_id, text, speaker, flac, cfg.accent))
                else:
                    entries.append(Reject(utt_id, f"audio file missing: {flac}", SOURCE))
    return entries


def musan_files(root: Path, category: str | None = None) -> list[Path]:
    """The MUSAN recordings under ``root`` (the ``musan`` folder or its parent), sorted.

    ``category`` ('music', 'noise' or 'speech') restricts to one; non-audio files are skipped.
    """
    if (root / "musan").is_dir():
        root = root / "musan"
    if category is not None and category not in MUSAN_CATEGORIES:
        raise UserError(f"MUSAN category must be one of {MUSAN_CATEGORIES}, not {category!r}")
    files: list[Path] = []
    for name in [category] if category else MUSAN_CATEGORIES:
        files += [p for p in (root / name).glob("*/*") if p.suffix.lower() == ".wav"]
    return sorted(files)


def _musan(root: Path, cfg: OpenSLRSource) -> list[Candidate | Reject]:
    files = musan_files(root, cfg.subset)
    if not files:
        raise UserError(f"{cfg.url}: no musan/<category>/<folder>/*.wav files in the archive")
    # noise recordings carry no transcript: the category stands in for the text
    entries: list[Candidate | Reject] = []
    for path in files:
        category, folder = path.parent.parent.name, path.parent.name
        entries.append(
            _candidate(f"musan-{category}-{path.stem}", category, folder, path, cfg.accent)
        )
    return entries


def _candidate(utt_id: str, text: str, speaker: str, path: Path, accent: str) -> Candidate:
    stat = path.stat()
    return Candidate(
        id=utt_id,
        text=text,
        speaker=speaker,
        accent=accent,
        source=SOURCE,
        spec=f"{path}:{stat.st_size}:{stat.st_mtime_ns}",
        load=functools.partial(audio.read, str(path)),  # picklable for worker processes
        path=str(path),
    )
