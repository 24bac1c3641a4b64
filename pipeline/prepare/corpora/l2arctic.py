"""L2-ARCTIC (Zhao et al., Interspeech 2018): 24 speakers of English as a second language,
four per first language (L1), each reading the 1,132 CMU ARCTIC prompts.

On disk (release v5.0, or the per-speaker downloads, unzipped into one folder):

    <root>/<SPEAKER>/wav/arctic_a0001.wav          44.1 kHz mono
    <root>/<SPEAKER>/transcript/arctic_a0001.txt   the prompt, one line
    <root>/<SPEAKER>/annotation/, textgrid/        phone labels (not read)
    <root>/suitcase_corpus/                        spontaneous speech (not read)

The manifest's accent is the speaker's L1 from the corpus's published speaker table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from pipeline.config import L2ArcticSource
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

log = logging.getLogger(__name__)

SOURCE = "l2arctic"
# speaker -> L1, the corpus's speaker table (README of release v5.0)
SPEAKER_L1 = {
    **dict.fromkeys(("ABA", "SKA", "YBAA", "ZHAA"), "arabic"),
    **dict.fromkeys(("BWC", "LXC", "NCC", "TXHC"), "mandarin"),
    **dict.fromkeys(("ASI", "RRBI", "SVBI", "TNI"), "hindi"),
    **dict.fromkeys(("HJK", "HKK", "YDCK", "YKWK"), "korean"),
    **dict.fromkeys(("EBVS", "ERMS", "MBMPS", "NJS"), "spanish"),
    **dict.fromkeys(("HQTV", "PNV", "THV", "TLV"), "vietnamese"),
}
PROMPT_PREFIX = {"a": "arctic_a", "b": "arctic_b", "all": "arctic_"}

Entry = Candidate | Reject


def candidates(cfg: L2ArcticSource, ctx: SourceContext) -> Iterator[Entry]:
    """Yield a Candidate or a Reject per (speaker, prompt), sorted by speaker then prompt."""
    del ctx  # the WAV files are read where they are
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise UserError(f"l2arctic source.path: folder not found: {root}")
    entries = (
        entry for speaker in _speakers(root, cfg) for entry in _speaker_entries(root, speaker, cfg)
    )
    yield from take(entries, cfg.limit)


def _speakers(root: Path, cfg: L2ArcticSource) -> list[str]:
    """The speaker folders to read: the table's speakers found under ``root``, or those named
    in ``keep.speakers`` (which may include a speaker the table lacks: accent 'unknown')."""
    folders = sorted(p.name for p in root.iterdir() if (p / "wav").is_dir())
    wanted = list(cfg.keep.speakers) if cfg.keep and cfg.keep.speakers else []
    if wanted:
        absent = [s for s in wanted if s not in folders]
        if absent:
            raise UserError(
                f"l2arctic source.keep.speakers: no folder {', '.join(absent)} with a wav/ "
                f"folder in {root} (found: {', '.join(folders) or 'none'})"
            )
        return sorted(wanted)
    for name in folders:
        if name not in SPEAKER_L1:
            log.info("l2arctic: %s is not in the speaker table; skipped", root / name)
    found = [name for name in folders if name in SPEAKER_L1]
    if not found:
        raise UserError(
            f"l2arctic source.path: no speaker folders (<SPEAKER>/wav, e.g. ABA/wav) in {root}"
        )
    return found


def _speaker_entries(root: Path, speaker: str, cfg: L2ArcticSource) -> Iterator[Entry]:
    accent = SPEAKER_L1.get(speaker, "unknown")
    wav_dir, text_dir = root / speaker / "wav", root / speaker / "transcript"
    prefix = PROMPT_PREFIX[cfg.prompts]
    wavs = {p.stem: p for p in wav_dir.glob(f"{prefix}*.wav")}
    texts = {p.stem: p for p in text_dir.glob(f"{prefix}*.txt")} if text_dir.is_dir() else {}
    for prompt in sorted(wavs.keys() | texts.keys()):
        utt = f"{speaker}_{prompt}"
        if not kept(cfg.keep, utt, speaker, accent):
            continue
        if prompt not in texts:
            yield Reject(utt, f"transcript missing: {speaker}/transcript/{prompt}.txt", SOURCE)
            continue
        if prompt not in wavs:
            yield Reject(utt, f"audio file missing: {speaker}/wav/{prompt}.wav", SOURCE)
            continue
        try:
            text = texts[prompt].read_text(encoding="utf-8-sig").strip()
        except UnicodeDecodeError as err:
            yield Reject(utt, f"transcript is not UTF-8 text ({err.reason})", SOURCE)
            continue
        if reason := check_text(text):
            yield Reject(utt, reason, SOURCE)
            continue
        path = wavs[prompt].resolve()
        # one line, whatever whitespace the file holds
        yield file_candidate(utt, " ".join(text.split()), speaker, accent, SOURCE, path)
