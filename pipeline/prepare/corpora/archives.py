"""Archives from the web: resumable, checksum-verified downloads and safe extraction.

A download continues a ``.part`` file left by an interrupted run (HTTP Range) and is kept only
if its checksum matches. Extraction checks every member first (no absolute paths, no ``..``
escapes, no links leading outside, no devices) and renames a finished temporary folder into
place, with ``<dest>.done`` recording the archive's checksum so a rerun does nothing.
"""

from __future__ import annotations

import copy
import hashlib
import http.client
import os
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from pipeline.errors import UserError
from pipeline.fsio import file_sha256, write_text

CHUNK_BYTES = 1 << 20  # 1 MiB per read while downloading
TIMEOUT_S = 60.0  # per socket operation, not for the whole download
MAX_LINK_HOPS = 40  # symlinks followed while checking one archive path (as the kernel does)


@dataclass(frozen=True)
class Limits:
    """What one archive may expand to, checked from its headers before anything is written.

    The defaults admit every LibriSpeech part (train-other-500: about 155,000 members, 32 GB
    from 30 GB) and MUSAN (about 2,000 members, 12 GB from 11 GB) and refuse a compression
    bomb (a 515 KB member declaring 512 MB expands 1,000 times).
    """

    members: int = 1_000_000
    gigabytes: float = 200.0  # the members' declared sizes, summed
    expansion: float = 50.0  # declared size over the archive's size on disk


# --- download ---------------------------------------------------------------------------------


def download(url: str, dest_dir: Path, checksum: str) -> Path:
    """Fetch ``url`` into ``dest_dir`` unless a verified copy is there; return the file.

    A ``.part`` file left by an interrupted run is continued with an HTTP Range request.
    Raises UserError if the bytes do not match ``checksum`` (a sha256 hex digest, or
    ``md5:<hex>`` for archives published with an md5 only); the download is deleted.
    """
    parsed = urllib.parse.urlparse(url)
    name = Path(urllib.parse.unquote(parsed.path)).name
    if parsed.scheme not in ("http", "https", "file") or not name:
        raise UserError(f"openslr url must be http, https or file and name a file: {url}")
    final = dest_dir / name
    if final.exists():
        if _digest(final, checksum) == checksum:
            return final
        final.unlink()  # stale or corrupt: fetch again
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    for _attempt in range(2):
        resumed = _fetch(url, part)
        got = _digest(part, checksum)
        if got == checksum:
            os.replace(part, final)
            return final
        part.unlink()
        if not resumed:  # a resumed file may have been a bad prefix: try once from zero
            break
    algorithm, want = (
        checksum.split(":", 1) if checksum.startswith("md5:") else ("sha256", checksum)
    )
    raise UserError(
        f"checksum mismatch for {url}: expected {algorithm} {want}, got {got.split(':')[-1]}"
    )


def _digest(path: Path, like: str) -> str:
    """``path``'s digest, in the form of the checksum ``like`` (sha256 hex or ``md5:<hex>``)."""
    if not like.startswith("md5:"):
        return file_sha256(path)
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            digest.update(block)
    return f"md5:{digest.hexdigest()}"


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


def is_extracted(dest: Path, checksum: str) -> bool:
    """Whether ``dest`` holds a finished extraction of the archive with ``checksum``."""
    stamp = _stamp(dest)
    return dest.is_dir() and stamp.exists() and stamp.read_text().strip() == checksum


def _stamp(dest: Path) -> Path:
    return dest.with_name(dest.name + ".done")


def extract(archive: Path, dest: Path, checksum: str, limits: Limits = Limits()) -> Path:
    """Extract a tar (plain, gz, bz2, xz) or zip archive to ``dest`` after checking every member.

    Raises UserError, writing nothing, if any member is absolute, escapes ``dest`` (via ``..``
    or through a link), is named through ``..`` at all, has a backslash in a tar path or link
    target, is not a folder but names ``dest`` itself, is a link pointing outside or
    replacing another member, or is a device or fifo. Tar members are written with plain
    permissions (no group or other write) and owned by the user extracting, whatever the
    archive says; a file with a setuid or setgid bit is refused. Before anything is written,
    the members' count and declared sizes are held to ``limits`` and to the free disk space.
    The written tree is checked again (every path and link target inside the temporary
    folder, no special files) before the folder is renamed to ``dest``; then ``dest.done``
    records ``checksum``, and a later call with the same checksum does nothing.
    """
    if is_extracted(dest, checksum):
        return dest
    try:
        with _open_archive(archive) as handle:
            # exactly the members checked here are extracted, and nothing else
            if isinstance(handle, tarfile.TarFile):
                checked = _check_tar(handle, archive.name)
                sizes = [m.size for m in checked if m.isfile()]
                members = _plain_metadata(checked)
                # the data filter is a second guard, where this Python has it
                options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            else:
                members = _check_zip(handle, archive.name)
                sizes = [m.file_size for m in members if not m.is_dir()]
                options = {}
            _check_size(archive, dest, len(members), sum(sizes), limits)
            tmp = _fresh_tmp(dest)
            try:
                handle.extractall(tmp, members=members, **options)
                _audit(tmp, archive.name)  # a third guard: the tree as written
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
    write_text(_stamp(dest), checksum + "\n")
    return dest


def _check_size(archive: Path, dest: Path, count: int, size: int, limits: Limits) -> None:
    """Refuse, before writing, an archive over ``limits`` or larger than the free space."""
    gb = size / 1e9
    if count > limits.members:
        raise UserError(
            f"cannot extract {archive}: {count:,} members, over the limit of {limits.members:,}"
            " (source.max_members)"
        )
    if gb > limits.gigabytes:
        raise UserError(
            f"cannot extract {archive}: it expands to {gb:.1f} GB, over the limit of "
            f"{limits.gigabytes:g} GB (source.max_extracted_gb)"
        )
    ratio = size / max(archive.stat().st_size, 1)
    if ratio > limits.expansion:
        raise UserError(
            f"cannot extract {archive}: it expands {ratio:.0f} times its size, over the limit "
            f"of {limits.expansion:g} (source.max_expansion; a compression bomb?)"
        )
    existing = next(p for p in (dest.parent, *dest.parent.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if size > free:
        raise UserError(
            f"cannot extract {archive}: it needs {gb:.1f} GB, {existing} has "
            f"{free / 1e9:.1f} GB free; free space or set data_dir to a larger disk"
        )


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


def _check_zip(archive: zipfile.ZipFile, archive_name: str) -> list[zipfile.ZipInfo]:
    """Every entry, checked: inside the destination and not a symlink (zipfile would write a
    link as a file holding its target, so a link in a corpus archive is refused)."""
    members = archive.infolist()
    for info in members:
        _check_member(info.filename, {}, archive_name)
        _check_no_dotdot(info.filename, archive_name)
        if not _key(info.filename) and not info.is_dir():
            _refuse(archive_name, info.filename, "names the destination folder itself")
        if stat.S_ISLNK(info.external_attr >> 16):
            _refuse(archive_name, info.filename, "is a symbolic link")
    return members


def _check_tar(tar: tarfile.TarFile, archive_name: str) -> list[tarfile.TarInfo]:
    """Every member, checked (see ``extract``); the list to extract."""
    members = tar.getmembers()
    links = {_key(m.name): m.linkname for m in members if m.issym()}
    names = Counter(_key(m.name) for m in members)
    # every path extracted so far, with the folders above it. A symlink may not replace one
    # of them, nor be replaced later: then the tree at each moment of the extraction holds
    # each link exactly as ``links`` has it (else a path checked through a link's target
    # could be extracted through a real folder of the same name, or the other way round)
    seen: set[str] = set()
    files: set[str] = set()  # regular files extracted so far: what a hard link may name
    for member in members:
        key = _key(member.name)
        # tarfile writes a backslash as a character of the name, while these checks read it
        # as a separator (as Windows would): a symlink 'a\b' -> '../x' sits in the root on
        # disk but was checked from inside 'a'. Corpus archives never use one in a path
        linked = member.issym() or member.islnk()
        if "\\" in member.name or (linked and "\\" in member.linkname):
            _refuse(archive_name, member.name, "has a backslash in its path or link")
        if not key and not member.isdir():
            _refuse(archive_name, member.name, "names the destination folder itself")
        if member.issym() and (key in seen or names[key] > 1):
            _refuse(archive_name, member.name, "is a link that replaces another member")
        parts = key.split("/")
        seen.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        if member.issym():  # where the link points, checked on its own as well
            if _is_absolute(member.linkname):
                _refuse(
                    archive_name, member.name, f"links to {member.linkname!r}, an absolute path"
                )
            parent = _key(member.name).rpartition("/")[0]
            target = f"{parent}/{member.linkname}" if parent else member.linkname
            _check_member(target, links, archive_name, member.name)
        if member.ischr() or member.isblk() or member.isfifo():
            _refuse(archive_name, member.name, "is a device or fifo")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            _refuse(archive_name, member.name, "has an unsupported type")
        if member.isfile() and member.mode & (stat.S_ISUID | stat.S_ISGID):
            # a setgid folder is common on group-shared servers (its bit is cleared below);
            # a setuid or setgid program has no place in a corpus
            _refuse(archive_name, member.name, "is a file with a setuid or setgid bit")
        # resolving a symlink's own path follows it, so this also checks where it points
        _check_member(member.name, links, archive_name)
        _check_no_dotdot(member.name, archive_name)
        if member.islnk():  # hard-link targets are named from the archive root
            _check_member(member.linkname, links, archive_name, member.name)
            # where the target is not an earlier regular file (a symlink, say), tarfile copies
            # the target member to the hard link's place: a symlink would then point from there
            if _key(member.linkname) not in files or ".." in member.linkname.split("/"):
                why = f"is a hard link to {member.linkname!r}, not to an earlier regular file"
                _refuse(archive_name, member.name, why)
        if member.isfile():
            files.add(key)
    return members


def _plain_metadata(members: list[tarfile.TarInfo]) -> list[tarfile.TarInfo]:
    """Copies of the checked members with plain permissions, owned by whoever extracts: as
    root, tarfile would otherwise give files the archive's owners and sticky bits."""
    plain = []
    for member in members:
        member = copy.copy(member)
        member.mode &= 0o755
        member.uid, member.gid = os.getuid(), os.getgid()
        member.uname = member.gname = ""
        plain.append(member)
    return plain


def _audit(root: Path, archive_name: str) -> None:
    """Refuse the written tree unless every path in it, followed through its links, stays
    inside ``root`` and is a folder, regular file or link."""
    base = os.path.realpath(root)
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            member = os.path.relpath(path, root)
            real = os.path.realpath(path)
            if os.path.commonpath([base, real]) != base:
                _refuse(archive_name, member, "was written leading outside the destination")
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                _refuse(archive_name, member, "was written as a special file")


def _check_member(path: str, links: dict[str, str], archive_name: str, member: str = "") -> None:
    """Refuse ``path`` unless it stays inside the destination; ``member`` names its owner."""
    prefix = f"links to {path!r}, which " if member else ""
    if _is_absolute(path):
        _refuse(archive_name, member or path, prefix + "is an absolute path")
    if _resolve(path, links) is None:
        _refuse(archive_name, member or path, prefix + "leads outside the destination")


def _check_no_dotdot(name: str, archive_name: str) -> None:
    """Refuse a member named through '..', even one that stays inside: 'z/../b' is extracted
    as 'b', but the checks key links and extracted paths by name, so such a link would be
    invisible to them (a link 'a' to 'b/..' would then pass as the destination itself while
    'b' points at the destination and 'a' above it). Corpus archives never name members so."""
    if ".." in name.replace("\\", "/").split("/"):
        _refuse(archive_name, name, "is named through '..'")


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or (path[1:2] == ":" and path[:1].isalpha())


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
            if hops > MAX_LINK_HOPS or _is_absolute(target):
                return None
            out.pop()  # the link's target is relative to the folder holding the link
            pending = target.replace("\\", "/").split("/") + pending
    return out


def _key(name: str) -> str:
    """A member's path as ``_resolve`` walks it: backslashes as separators (as a Windows
    extraction would read them), no empty or '.' parts."""
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def _refuse(archive_name: str, member: str, why: str) -> None:
    raise UserError(f"unsafe archive {archive_name}: member {member!r} {why}; nothing extracted")
