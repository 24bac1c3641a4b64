"""OpenSLR source: download over a local HTTP server, safe extraction, LibriSpeech and MUSAN."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import stat
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from pipeline.config import Keep, OpenSLRSource
from pipeline.errors import UserError
from pipeline.fsio import file_sha256
from pipeline.prepare.corpora import archives, openslr
from pipeline.prepare.corpora.base import Candidate, Limits, Reject, SourceContext, ingest

RATE = 16000
# <subset>, <speaker>, <chapter>, espeak voice, [(utterance number, text, has audio)]
LIBRISPEECH = [
    (
        "dev-clean",
        "19",
        "198",
        "en-us",
        [
            (0, "TURN ON THE KITCHEN LIGHTS", True),
            (1, "SET A TIMER FOR TEN MINUTES", True),
            (2, "WHAT IS THE WEATHER TOMORROW", False),
        ],
    ),
    (
        "dev-clean",
        "84",
        "121123",
        "en-gb",
        [(0, "PLAY SOME QUIET MUSIC", True), (1, "CALL MY SISTER PLEASE", True)],
    ),
    ("test-clean", "61", "70968", "en-gb-scotland", [(0, "OPEN THE FRONT DOOR", True)]),
]


# --- fixtures: real speech, archives, an HTTP server with Range support -----------------------


def _speech(text: str, voice: str) -> np.ndarray:
    """Real speech at 16 kHz: espeak-ng writes WAV at its own rate to stdout."""
    cmd = ["espeak-ng", "-v", voice, "--stdout", text.lower()]
    wav = subprocess.run(cmd, check=True, capture_output=True, timeout=30).stdout
    wave, rate = sf.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(wave, rate, RATE)


def _tar_gz(src: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return out


def _librispeech_tree(root: Path) -> None:
    base = root / "LibriSpeech"
    base.mkdir(parents=True)
    (base / "README.TXT").write_text("miniature LibriSpeech for tests\n")
    for subset, speaker, chapter, voice, utts in LIBRISPEECH:
        folder = base / subset / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for number, text, has_audio in utts:
            utt_id = f"{speaker}-{chapter}-{number:04d}"
            lines.append(f"{utt_id} {text}\n")
            if has_audio:
                sf.write(folder / f"{utt_id}.flac", _speech(text, voice), RATE, subtype="PCM_16")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))


def _musan_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    base = root / "musan"
    for category, folder, count in [
        ("noise", "free-sound", 2),
        ("noise", "sound-bible", 1),
        ("music", "fma", 1),
        ("speech", "librivox", 1),
    ]:
        (base / category / folder).mkdir(parents=True)
        (base / category / folder / "ANNOTATIONS").write_text("file annotations\n")
        (base / category / folder / "LICENSE").write_text("license text\n")
        for i in range(count):
            path = base / category / folder / f"{category}-{folder}-{i:04d}.wav"
            if category == "speech":
                wave = _speech("reading aloud from a book", "en-us")
            else:
                wave = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
            sf.write(path, wave, RATE, subtype="PCM_16")
    (base / "README").write_text("miniature MUSAN for tests\n")


class _RangeServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.honour_range = True  # False acts like a server that ignores Range (answers 200)


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    server: _RangeServer

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        wanted = self.headers.get("Range")
        self.server.requests.append((self.path, wanted))
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        start = int(match[1]) if match and self.server.honour_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args: object) -> None:
        pass  # keep test output clean


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is needed for the speech fixtures")
    root = tmp_path_factory.mktemp("served")
    build = tmp_path_factory.mktemp("build")
    _librispeech_tree(build / "ls")
    _tar_gz(build / "ls", root / "librispeech-mini.tar.gz")
    _musan_tree(build / "musan")
    _tar_gz(build / "musan", root / "musan-mini.tar.gz")
    return root


@pytest.fixture(scope="module")
def _server(served: Path):
    server = _RangeServer(served)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def server(_server: _RangeServer) -> _RangeServer:
    _server.requests.clear()
    _server.honour_range = True
    return _server


def _url(server: _RangeServer, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{name}"


def _ctx(work_dir: Path) -> SourceContext:
    return SourceContext(seed=0, set_name="pool", split="pool", work_dir=work_dir)


def _cfg(url: str, served: Path, fmt: str = "librispeech", **kw) -> OpenSLRSource:
    name = url.rsplit("/", 1)[-1]
    kw.setdefault("sha256", file_sha256(served / name))
    return OpenSLRSource(kind="openslr", url=url, format=fmt, **kw)


# --- LibriSpeech and MUSAN parsing ------------------------------------------------------------


def test_librispeech_candidates(server, served, tmp_path):
    url = _url(server, "librispeech-mini.tar.gz")
    out = list(openslr.candidates(_cfg(url, served, accent="us"), _ctx(tmp_path / "work")))
    assert [e.id for e in out] == sorted(e.id for e in out)
    cands = {e.id: e for e in out if isinstance(e, Candidate)}
    rejects = [e for e in out if isinstance(e, Reject)]
    assert sorted(cands) == [
        "19-198-0000",
        "19-198-0001",
        "61-70968-0000",
        "84-121123-0000",
        "84-121123-0001",
    ]
    assert [(r.id, r.source) for r in rejects] == [("19-198-0002", "openslr")]
    assert rejects[0].reason.startswith("audio file missing: ")
    first = cands["19-198-0000"]
    assert (first.text, first.speaker, first.accent, first.source) == (
        "TURN ON THE KITCHEN LIGHTS",
        "19",
        "us",
        "openslr",
    )
    assert cands["84-121123-0001"].speaker == "84"
    stat = Path(first.path).stat()
    assert first.spec == f"{first.path}:{stat.st_size}:{stat.st_mtime_ns}"
    wave, changes = pickle.loads(pickle.dumps(first.load))(RATE)  # workers get it pickled
    assert wave.dtype == np.float32 and changes == {}
    assert 0.5 < len(wave) / RATE < 5 and np.abs(wave).max() > 0.05  # speech, not silence
    row = ingest(first, tmp_path / "out.flac", Limits())
    assert row["audio_path"] == str(Path(first.path).resolve())  # 16 kHz FLAC used in place


def test_librispeech_subset_and_limit(server, served, tmp_path):
    url = _url(server, "librispeech-mini.tar.gz")
    cfg = _cfg(url, served, subset="test-clean")
    assert [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))] == ["61-70968-0000"]
    cfg = _cfg(url, served, subset="dev-clean", limit=2)
    assert [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))] == ["19-198-0000", "19-198-0001"]
    with pytest.raises(UserError, match="train-clean-100"):
        list(openslr.candidates(_cfg(url, served, subset="train-clean-100"), _ctx(tmp_path)))


def test_musan_candidates_and_files(server, served, tmp_path):
    url = _url(server, "musan-mini.tar.gz")
    out = list(openslr.candidates(_cfg(url, served, "musan", accent="none"), _ctx(tmp_path)))
    assert [e.id for e in out] == [
        "musan-music-music-fma-0000",
        "musan-noise-noise-free-sound-0000",
        "musan-noise-noise-free-sound-0001",
        "musan-noise-noise-sound-bible-0000",
        "musan-speech-speech-librivox-0000",
    ]
    noise = out[1]
    assert (noise.text, noise.speaker, noise.accent) == ("noise", "free-sound", "none")
    assert noise.load(RATE)[0].shape == (RATE,)
    cfg = _cfg(url, served, "musan", subset="noise")
    assert {e.text for e in openslr.candidates(cfg, _ctx(tmp_path))} == {"noise"}
    bank = openslr.musan_files(tmp_path / "extracted", "noise")
    assert [f"{p.parent.name}/{p.stem}" for p in bank] == [
        "free-sound/noise-free-sound-0000",
        "free-sound/noise-free-sound-0001",
        "sound-bible/noise-sound-bible-0000",
    ]
    assert len(openslr.musan_files(tmp_path / "extracted" / "musan")) == 5  # no ANNOTATIONS
    with pytest.raises(UserError, match="category"):
        openslr.musan_files(tmp_path / "extracted", "birds")


def test_file_url(served, tmp_path):
    archive = served / "musan-mini.tar.gz"
    cfg = _cfg(archive.as_uri(), served, "musan", subset="music")
    assert [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))] == ["musan-music-music-fma-0000"]


def test_keep_selects_speakers_before_the_limit(server, served, tmp_path):
    url = _url(server, "librispeech-mini.tar.gz")
    cfg = _cfg(url, served, keep=Keep(speakers=("19", "61")), limit=2)
    out = list(openslr.candidates(cfg, _ctx(tmp_path)))
    # speaker 19's missing recording is still reported; speaker 84 is not this set's
    assert [(e.id, type(e).__name__) for e in out] == [
        ("19-198-0000", "Candidate"),
        ("19-198-0001", "Candidate"),
    ]
    cfg = _cfg(url, served, keep=Keep(speakers=("19",)))
    assert [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))] == [
        "19-198-0000",
        "19-198-0001",
        "19-198-0002",
    ]


def test_known_md5_for_archives_published_without_sha256(server, served, tmp_path, monkeypatch):
    musan = "https://www.openslr.org/resources/17/musan.tar.gz"
    assert openslr.KNOWN_MD5[musan] == "0c472d4fc0c5141eca47ad1ffeb2a7df"
    url = _url(server, "musan-mini.tar.gz")
    md5 = hashlib.md5((served / "musan-mini.tar.gz").read_bytes()).hexdigest()
    monkeypatch.setitem(openslr.KNOWN_MD5, url, md5)
    cfg = _cfg(url, served, "musan", sha256=None, subset="noise")
    assert len(list(openslr.candidates(cfg, _ctx(tmp_path / "a")))) == 3
    assert (tmp_path / "a" / "extracted.done").read_text().strip() == f"md5:{md5}"
    monkeypatch.setitem(openslr.KNOWN_MD5, url, "0" * 32)
    with pytest.raises(UserError, match=f"expected md5 {'0' * 32}, got {md5}$"):
        list(openslr.candidates(cfg, _ctx(tmp_path / "b")))
    assert list((tmp_path / "b" / "downloads").iterdir()) == []


# --- download: checksums, reruns, resume ------------------------------------------------------


def test_rerun_neither_downloads_nor_extracts(server, served, tmp_path):
    cfg = _cfg(_url(server, "musan-mini.tar.gz"), served, "musan")
    first = [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))]
    assert len(server.requests) == 1
    (tmp_path / "downloads" / "musan-mini.tar.gz").unlink()  # not needed once extracted
    assert [e.id for e in openslr.candidates(cfg, _ctx(tmp_path))] == first
    assert len(server.requests) == 1
    archive = openslr.download(cfg.url, tmp_path / "dl", cfg.sha256)
    openslr.download(cfg.url, tmp_path / "dl", cfg.sha256)  # verified copy: no request
    assert len(server.requests) == 2 and file_sha256(archive) == cfg.sha256


def test_checksum_mismatch_deletes_download(server, served, tmp_path):
    url = _url(server, "musan-mini.tar.gz")
    with pytest.raises(UserError) as err:
        list(openslr.candidates(_cfg(url, served, "musan", sha256="0" * 64), _ctx(tmp_path)))
    got = file_sha256(served / "musan-mini.tar.gz")
    assert f"expected sha256 {'0' * 64}, got {got}" in str(err.value)
    assert list((tmp_path / "downloads").iterdir()) == []
    assert not (tmp_path / "extracted").exists()


def test_checksum_required_or_known(server, served, tmp_path, monkeypatch):
    url = _url(server, "musan-mini.tar.gz")
    with pytest.raises(UserError, match="`sha256`"):
        list(openslr.candidates(_cfg(url, served, "musan", sha256=None), _ctx(tmp_path)))
    assert server.requests == []
    monkeypatch.setitem(openslr.KNOWN_SHA256, url, file_sha256(served / "musan-mini.tar.gz"))
    assert len(list(openslr.candidates(_cfg(url, served, "musan", sha256=None), _ctx(tmp_path))))


def test_resume_with_range_request(server, served, tmp_path):
    data = (served / "librispeech-mini.tar.gz").read_bytes()
    part = tmp_path / "librispeech-mini.tar.gz.part"
    part.write_bytes(data[: len(data) // 2])
    url, sha = _url(server, "librispeech-mini.tar.gz"), file_sha256(served / part.stem)
    final = openslr.download(url, tmp_path, sha)
    assert server.requests == [("/librispeech-mini.tar.gz", f"bytes={len(data) // 2}-")]
    assert file_sha256(final) == sha and not part.exists()


def test_restart_when_range_ignored_or_prefix_bad(server, served, tmp_path):
    url, sha = _url(server, "musan-mini.tar.gz"), file_sha256(served / "musan-mini.tar.gz")
    name, path = "musan-mini.tar.gz.part", "/musan-mini.tar.gz"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"junk" * 100)
    server.honour_range = False  # answers 200 with the whole file: written from zero
    assert file_sha256(openslr.download(url, tmp_path / "a", sha)) == sha
    assert server.requests == [(path, "bytes=400-")]
    server.honour_range = True  # a wrong prefix fails the checksum: retried once from zero
    server.requests.clear()
    assert file_sha256(openslr.download(url, tmp_path / "b", sha)) == sha
    assert server.requests == [(path, "bytes=400-"), (path, None)]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["musan-mini.tar.gz"]


def test_interrupted_extraction_is_redone(server, served, tmp_path):
    (tmp_path / ".extracted-killed").mkdir()  # temp folder of a killed run
    (tmp_path / "extracted").mkdir()  # a folder without the stamp is not trusted
    (tmp_path / "extracted" / "junk").write_text("x")
    cfg = _cfg(_url(server, "musan-mini.tar.gz"), served, "musan")
    assert len(list(openslr.candidates(cfg, _ctx(tmp_path)))) == 5
    assert not (tmp_path / "extracted" / "junk").exists()
    assert not (tmp_path / ".extracted-killed").exists()
    assert (tmp_path / "extracted.done").read_text().strip() == cfg.sha256


# --- unsafe archives --------------------------------------------------------------------------


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes = b"evil"):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def _evil_tar(path: Path, members: list) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [_member("good/harmless.txt", data=b"fine"), *members]:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


# each case: (offending member, members after a harmless one); {out} is a folder outside
UNSAFE = {
    "traversal": ("../../evil.txt", [("../../evil.txt",)]),
    "absolute": ("{out}/abs-evil.txt", [("{out}/abs-evil.txt",)]),
    "symlink absolute": ("link", [("link", tarfile.SYMTYPE, "{out}"), ("link/evil.txt",)]),
    "symlink relative": ("link", [("link", tarfile.SYMTYPE, "../../out"), ("link/evil.txt",)]),
    # 'up' points inside, yet a/b/up/../../.. climbs out: only caught by following links
    "symlink chain": (
        "a/b/up/../../../out/evil.txt",
        [("a/b/up", tarfile.SYMTYPE, ".."), ("a/b/up/../../../out/evil.txt",)],
    ),
    # the file comes first and the link that it goes through only later in the archive
    "symlink declared later": (
        "late/evil.txt",
        [("late/evil.txt",), ("late", tarfile.SYMTYPE, "../../out")],
    ),
    # 'b' is a real folder when the link 'b' comes: the link cannot replace it, so
    # b/../../out would climb out of a real folder, not out of the link's target c/d
    "symlink over a folder": (
        "b",
        [("b/y",), ("b", tarfile.SYMTYPE, "c/d"), ("b/../../out/evil.txt",)],
    ),
    "symlink declared twice": (
        "twice",
        [("twice", tarfile.SYMTYPE, "good"), ("twice", tarfile.SYMTYPE, "good/..")],
    ),
    # 'z/../b' is extracted as 'b', a link to the destination itself; checked under its
    # written name, it hid that 'a' -> 'b/..' points above the destination
    "symlink named through '..'": (
        "z/../b",
        [
            ("z", tarfile.DIRTYPE),
            ("z/../b", tarfile.SYMTYPE, "."),
            ("a", tarfile.SYMTYPE, "b/.."),
            ("a/evil.txt",),
        ],
    ),
    # a hard link to a symlink is written as a copy of the symlink at its own place, where
    # the same relative target points elsewhere
    "hardlink to a symlink": (
        "h",
        [("a/b/s", tarfile.SYMTYPE, "../../out"), ("h", tarfile.LNKTYPE, "a/b/s"), ("h/evil.txt",)],
    ),
    "hardlink absolute": ("hl", [("hl", tarfile.LNKTYPE, "{out}/victim.txt"), ("hl",)]),
    "hardlink relative": ("hl", [("hl", tarfile.LNKTYPE, "../../out/victim.txt"), ("hl",)]),
    # a backslash in a link's name must not hide the link from the checks
    "symlink named with a backslash": ("x\\up", [("x\\up", tarfile.SYMTYPE, "../../out")]),
    "symlink to a backslash path": ("bs", [("bs", tarfile.SYMTYPE, "..\\..\\out")]),
    # on disk 'a\\b' is one name in the root, so its '../out' points above the destination
    "file through a backslash-named symlink": (
        "a\\b",
        [("a\\b", tarfile.SYMTYPE, "../out"), ("a\\b/evil.txt",)],
    ),
    "symlink named as the destination": (".", [(".", tarfile.SYMTYPE, "sub"), ("x.txt",)]),
    "fifo": ("pipe", [("pipe", tarfile.FIFOTYPE)]),
    "device": ("null", [("null", tarfile.CHRTYPE)]),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_tar_refused(case, tmp_path):
    out = tmp_path / "out"  # what an attacker aims at, beside the work folder
    out.mkdir()
    (out / "victim.txt").write_text("precious")
    offender, specs = UNSAFE[case]
    members = [
        _member(*(s.format(out=out) if isinstance(s, str) else s for s in spec)) for spec in specs
    ]
    archive = _evil_tar(tmp_path / "evil.tar.gz", members)
    dest = tmp_path / "work" / "extracted"
    with pytest.raises(UserError) as err:
        openslr.extract(archive, dest, "sha")
    message = str(err.value)
    assert repr(offender.format(out=out)) in message and "\n" not in message
    assert sorted(p.name for p in out.iterdir()) == ["victim.txt"]
    assert (out / "victim.txt").read_text() == "precious"
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "work").exists()  # nothing written at all


@pytest.mark.parametrize("case", list(UNSAFE))
def test_every_unsafe_member_is_caught_by_our_checks_alone(case, tmp_path):
    # without tarfile's data filter (older Pythons), these checks are the only guard
    offender, specs = UNSAFE[case]
    members = [
        _member(*(s.format(out=tmp_path) if isinstance(s, str) else s for s in spec))
        for spec in specs
    ]
    archive = _evil_tar(tmp_path / "evil.tar.gz", members)
    with tarfile.open(archive) as tar, pytest.raises(UserError, match="unsafe archive"):
        archives._check_tar(tar, "evil.tar.gz")


@pytest.mark.parametrize(
    "name, why",
    [
        ("../../evil.txt", "leads outside"),
        ("/abs-evil.txt", "absolute path"),
        ("..\\..\\evil.txt", "leads outside"),  # a backslash is a separator on Windows
        ("C:/evil.txt", "absolute path"),
        ("link", "symbolic link"),
        ("a/../b.txt", "named through '..'"),
    ],
)
def test_unsafe_zip_refused(tmp_path, name, why):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/harmless.txt", "fine")
        info = zipfile.ZipInfo(name)
        if name == "link":  # a symlink entry (Unix mode in the external attributes)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "../../out" if name == "link" else "evil")
    with pytest.raises(UserError, match=re.escape(repr(name)) + ".*" + why):
        openslr.extract(archive, tmp_path / "work" / "extracted", "sha")
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work").exists()


def test_safe_zip_and_inside_links_extracted(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("musan/noise/x/a.txt", "fine")
    dest = openslr.extract(archive, tmp_path / "zip", "sha")
    assert (dest / "musan" / "noise" / "x" / "a.txt").read_text() == "fine"
    alias = _member("good/alias", tarfile.SYMTYPE, "harmless.txt")
    top = _member("top", tarfile.SYMTYPE, "good/harmless.txt")  # a link at the archive's root
    tar = _evil_tar(tmp_path / "ok.tar.gz", [alias, top])
    dest = openslr.extract(tar, tmp_path / "tar", "sha")
    assert (dest / "good" / "alias").read_text() == "fine"  # a link that stays inside is kept
    assert (dest / "top").read_text() == "fine"
    hard = _member("good/hard", tarfile.LNKTYPE, "good/harmless.txt")  # to an earlier file
    dest = openslr.extract(_evil_tar(tmp_path / "hard.tar.gz", [hard]), tmp_path / "hard", "sha")
    assert (dest / "good" / "hard").read_text() == "fine"


def test_unsafe_archive_through_candidates(tmp_path):
    archive = _evil_tar(tmp_path / "evil.tar.gz", [_member("../../evil.txt")])
    cfg = OpenSLRSource(
        kind="openslr", url=archive.as_uri(), format="librispeech", sha256=file_sha256(archive)
    )
    with pytest.raises(UserError, match="unsafe archive"):
        list(openslr.candidates(cfg, _ctx(tmp_path / "work")))
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "work" / "extracted").exists()


def test_zip_symlink_refused(tmp_path):
    archive = tmp_path / "link.zip"
    link = zipfile.ZipInfo("data/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good/harmless.txt", "fine")
        zf.writestr(link, "../../../etc/passwd")
    with pytest.raises(UserError, match="'data/link' is a symbolic link"):
        openslr.extract(archive, tmp_path / "work" / "extracted", "sha")
    assert not (tmp_path / "work").exists()


def test_tar_members_get_plain_permissions_and_owner(tmp_path, monkeypatch):
    # without tarfile's data filter (older Pythons), our own copy of each member decides
    monkeypatch.delattr(tarfile, "data_filter")
    info, data = _member("good/open.sh", data=b"#!/bin/sh\n")
    info.mode, info.uid, info.gid, info.uname, info.gname = 0o1777, 4242, 4242, "mallory", "evil"
    archive = _evil_tar(tmp_path / "modes.tar.gz", [(info, data)])
    dest = openslr.extract(archive, tmp_path / "modes", "sha")
    written = (dest / "good" / "open.sh").stat()
    assert stat.S_IMODE(written.st_mode) == 0o755  # no sticky bit, no group or other write
    assert (written.st_uid, written.st_gid) == (os.getuid(), os.getgid())


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o6777])
def test_tar_file_with_setuid_or_setgid_refused(tmp_path, mode):
    info, data = _member("good/setuid.sh", data=b"#!/bin/sh\n")
    info.mode = mode
    archive = _evil_tar(tmp_path / "modes.tar.gz", [(info, data)])
    with pytest.raises(UserError, match="'good/setuid.sh' is a file with a setuid or setgid"):
        openslr.extract(archive, tmp_path / "work" / "extracted", "sha")
    assert not (tmp_path / "work").exists()


def test_tar_setgid_folder_extracted_without_the_bit(tmp_path):
    # group-shared servers mark folders setgid: a corpus packed there is fine
    folder = tarfile.TarInfo("LibriSpeech")
    folder.type, folder.mode = tarfile.DIRTYPE, 0o2775
    info, data = _member("LibriSpeech/a.txt", data=b"text")
    archive = _evil_tar(tmp_path / "shared.tar.gz", [(folder, b""), (info, data)])
    dest = openslr.extract(archive, tmp_path / "shared", "sha")
    assert stat.S_IMODE((dest / "LibriSpeech").stat().st_mode) & 0o7000 == 0
    assert (dest / "LibriSpeech" / "a.txt").read_bytes() == b"text"


def _bomb(path: Path, size: int, kind: str) -> Path:
    """An archive of one member of ``size`` zero bytes (it compresses about 1,000 times)."""
    if kind == "zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("zeros.bin", bytes(size))
        return path
    info, data = _member("zeros.bin", data=bytes(size))
    return _evil_tar(path, [(info, data)])


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_archive_expanding_past_its_limits_refused_before_writing(tmp_path, kind):
    archive = _bomb(tmp_path / f"bomb.{'zip' if kind == 'zip' else 'tar.gz'}", 8 << 20, kind)
    dest = tmp_path / "work" / "extracted"
    with pytest.raises(UserError, match=r"expands \d+ times its size.*compression bomb"):
        openslr.extract(archive, dest, "sha")
    assert not (tmp_path / "work").exists()
    with pytest.raises(UserError, match="expands to 0.0 GB, over the limit of 0.001 GB"):
        openslr.extract(archive, dest, "sha", archives.Limits(gigabytes=0.001, expansion=1e9))
    many = archives.Limits(members=0, expansion=1e9)
    with pytest.raises(UserError, match=r"\d members, over the limit of 0"):
        openslr.extract(archive, dest, "sha", many)
    assert not (tmp_path / "work").exists()
    roomy = archives.Limits(expansion=1e9)
    assert (openslr.extract(archive, dest, "sha", roomy) / "zeros.bin").stat().st_size == 8 << 20


def test_archive_larger_than_the_free_space_refused(tmp_path, monkeypatch):
    archive = _bomb(tmp_path / "big.tar.gz", 1 << 20, "tar")
    usage = archives.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(archives.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(UserError, match=r"needs 0.0 GB, \S+ has 0.0 GB free; free space"):
        openslr.extract(
            archive, tmp_path / "work" / "extracted", "sha", archives.Limits(expansion=1e9)
        )
    assert not (tmp_path / "work").exists()  # refused before any folder was made


def test_recipe_limits_reach_the_extraction(tmp_path):
    archive = _bomb(tmp_path / "bomb.tar.gz", 8 << 20, "tar")
    url = archive.resolve().as_uri()
    digest = archives.file_sha256(archive)
    cfg = OpenSLRSource(kind="openslr", url=url, format="musan", sha256=digest, max_expansion=1e9)
    ctx = SourceContext(0, "noise", "noise", tmp_path / "work")
    with pytest.raises(UserError, match="no musan/"):  # admitted, extracted, then parsed
        list(openslr.candidates(cfg, ctx))
    assert (tmp_path / "work" / "extracted" / "zeros.bin").is_file()
    strict = OpenSLRSource(kind="openslr", url=url, format="musan", sha256=digest)
    with pytest.raises(UserError, match="compression bomb"):
        list(openslr.candidates(strict, SourceContext(0, "noise", "noise", tmp_path / "w2")))


def test_the_written_tree_is_audited_too(tmp_path, monkeypatch):
    # were a member to slip past the member checks (and no data filter ran), the tree as
    # written is still refused before it becomes the destination
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.delattr(tarfile, "data_filter")
    monkeypatch.setattr(archives, "_check_tar", lambda tar, name: tar.getmembers())
    archive = _evil_tar(tmp_path / "evil.tar.gz", [_member("up", tarfile.SYMTYPE, str(out))])
    with pytest.raises(UserError, match="'up' was written leading outside the destination"):
        openslr.extract(archive, tmp_path / "work" / "extracted", "sha")
    assert not (tmp_path / "work" / "extracted").exists()
    assert not list((tmp_path / "work").glob(".extracted-*"))


def test_zip_file_entry_naming_the_destination_refused(tmp_path):
    archive = tmp_path / "dot.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(zipfile.ZipInfo("."), "evil")
    with pytest.raises(UserError, match="names the destination folder itself"):
        openslr.extract(archive, tmp_path / "work" / "extracted", "sha")
