"""OpenSLR archives: download (resumable, checksum-verified), extract safely, parse.

Downloading and extraction live in ``pipeline.prepare.corpora.archives``; this module knows the
published checksums and the corpus layouts.

Two layouts are understood: LibriSpeech (transcribed read speech) and MUSAN (noise, music and
babble recordings). Everything lands under the set's ``work_dir``: ``downloads/`` for the archive
and ``extracted/`` for its contents, with ``extracted.done`` holding the checksum of the archive
it came from, so a rerun neither downloads nor extracts again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.config import OpenSLRSource
from pipeline.errors import UserError
from pipeline.prepare.corpora.archives import Limits, download, extract, is_extracted
from pipeline.prepare.corpora.base import (
    Candidate,
    Reject,
    SourceContext,
    file_candidate,
    kept,
    take,
)

SOURCE = "openslr"
MUSAN_CATEGORIES = ("music", "noise", "speech")

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
KNOWN_SHA256: dict[str, str] = {
    f"{scheme}://www.openslr.org/resources/12/{name}.tar.gz": digest
    for name, digest in _LIBRISPEECH_SHA256.items()
    for scheme in ("http", "https")
}
# MUSAN (resources/17, 11 GB) has no published sha256; its md5 is the one that Kaldi-family
# recipes (wenet, PaddleSpeech, kiwano) check, on OpenSLR and its mirrors. An md5 still pins
# a known file: forging a second file with the same md5 is out of reach.
_MUSAN_MD5 = "0c472d4fc0c5141eca47ad1ffeb2a7df"
KNOWN_MD5: dict[str, str] = {
    f"{scheme}://{host}/resources/17/musan.tar.gz": _MUSAN_MD5
    for host in ("www.openslr.org", "us.openslr.org", "openslr.elda.org", "openslr.trmal.net")
    for scheme in ("http", "https")
}


def candidates(cfg: OpenSLRSource, ctx: SourceContext) -> Iterator[Candidate | Reject]:
    """Download, verify and extract ``cfg.url``, then yield its utterances sorted by id.

    ``cfg.keep`` selects speakers and utterances (a MUSAN recording's speaker is its folder).
    """
    checksum = known_checksum(cfg)
    dest = ctx.work_dir / "extracted"
    if not is_extracted(dest, checksum):  # a finished extraction needs no archive at all
        archive = download(cfg.url, ctx.work_dir / "downloads", checksum)
        limits = Limits(cfg.max_members, cfg.max_extracted_gb, cfg.max_expansion)
        extract(archive, dest, checksum, limits)
    parse = _librispeech if cfg.format == "librispeech" else _musan
    entries = parse(dest, cfg)
    entries.sort(key=lambda entry: entry.id)
    yield from take(entries, cfg.limit)


def known_checksum(cfg: OpenSLRSource) -> str:
    """The archive's checksum: the recipe's sha256, else a published one (``md5:<hex>``)."""
    if cfg.sha256:
        return cfg.sha256.strip().lower()
    if cfg.url in KNOWN_SHA256:
        return KNOWN_SHA256[cfg.url]
    if cfg.url in KNOWN_MD5:
        return f"md5:{KNOWN_MD5[cfg.url]}"
    raise UserError(f"openslr source {cfg.url}: no checksum known; set `sha256` in the recipe")


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
                if not kept(cfg.keep, utt_id, speaker, cfg.accent):
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
        utt_id = f"musan-{category}-{path.stem}"
        if kept(cfg.keep, utt_id, folder, cfg.accent):
            entries.append(_candidate(utt_id, category, folder, path, cfg.accent))
    return entries


def _candidate(utt_id: str, text: str, speaker: str, path: Path, accent: str) -> Candidate:
    return file_candidate(utt_id, text, speaker, accent, SOURCE, path)
