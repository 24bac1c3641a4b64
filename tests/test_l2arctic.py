"""L2-ARCTIC folders: speaker folders, prompt sets, L1 accents, missing files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.config import Keep, L2ArcticSource
from pipeline.errors import UserError
from pipeline.prepare.corpora import l2arctic
from pipeline.prepare.corpora.base import SourceContext
from tests.corpus_fixtures import ARCTIC_PROMPTS, l2arctic_folder
from tests.factories import assert_speech, split_entries


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    return l2arctic_folder(tmp_path_factory.mktemp("l2arctic"))


@pytest.fixture
def ctx(tmp_path) -> SourceContext:
    return SourceContext(seed=0, set_name="l2", split="pool", work_dir=tmp_path / "work")


def run(ctx, path, **kw):
    cfg = L2ArcticSource(kind="l2arctic", path=str(path), **kw)
    return split_entries(l2arctic.candidates(cfg, ctx))


def test_speaker_table_covers_six_l1s():
    by_l1: dict[str, list[str]] = {}
    for speaker, l1 in l2arctic.SPEAKER_L1.items():
        by_l1.setdefault(l1, []).append(speaker)
    assert {l1: len(s) for l1, s in by_l1.items()} == dict.fromkeys(
        ("arabic", "mandarin", "hindi", "korean", "spanish", "vietnamese"), 4
    )
    assert by_l1["vietnamese"] == ["HQTV", "PNV", "THV", "TLV"]


def test_every_speaker_with_l1_accent(corpus, ctx, caplog):
    with caplog.at_level("INFO"):
        cands, rejects = run(ctx, corpus)
    assert len(cands) == 24 * len(ARCTIC_PROMPTS) - 2
    assert {(r.id, r.reason) for r in rejects} == {
        ("ABA_arctic_a0002", "audio file missing: ABA/wav/arctic_a0002.wav"),
        ("BWC_arctic_b0002", "transcript missing: BWC/transcript/arctic_b0002.txt"),
    }
    assert "suitcase_corpus is not in the speaker table; skipped" in caplog.text
    first = cands[0]
    assert (first.id, first.speaker, first.accent, first.source) == (
        "ABA_arctic_a0001",
        "ABA",
        "arabic",
        "l2arctic",
    )
    assert first.text == "Author of the danger trail, Philip Steels, etc."
    assert {c.accent for c in cands if c.speaker == "PNV"} == {"vietnamese"}
    assert first.path == str((corpus / "ABA" / "wav" / "arctic_a0001.wav").resolve())
    assert_speech(first, sf.info(first.path).duration)  # 44.1 kHz, resampled


def test_prompt_sets_speakers_and_accents(corpus, ctx):
    cands, _ = run(ctx, corpus, prompts="b", keep=Keep(speakers=("TLV", "PNV")))
    assert [c.id for c in cands] == [
        "PNV_arctic_b0001",
        "PNV_arctic_b0002",
        "TLV_arctic_b0001",
        "TLV_arctic_b0002",
    ]
    cands, _ = run(ctx, corpus, prompts="a", keep=Keep(accents=("Korean",)))
    assert {c.speaker for c in cands} == {"HJK", "HKK", "YDCK", "YKWK"}
    assert {c.id.split("_", 1)[1] for c in cands} == {f"arctic_a000{i}" for i in range(1, 7)}
    cands, _ = run(ctx, corpus, prompts="a", keep=Keep(speakers=("PNV",)), limit=2)
    assert [c.id for c in cands] == ["PNV_arctic_a0001", "PNV_arctic_a0002"]


def test_bad_transcripts_and_unknown_speakers(corpus, tmp_path, ctx):
    root = tmp_path / "l2"
    for speaker in ("HQTV", "suitcase_corpus"):
        shutil.copytree(corpus / speaker, root / speaker)
    (root / "HQTV" / "transcript" / "arctic_a0001.txt").write_bytes(b"caf\xe9 au lait")
    (root / "HQTV" / "transcript" / "arctic_a0002.txt").write_text("  \n")
    (root / "HQTV" / "transcript" / "arctic_a0003.txt").write_text("Two\nlines. ")
    cands, rejects = run(ctx, root, prompts="a")
    assert [(r.id, r.reason.split(" (")[0]) for r in rejects] == [
        ("HQTV_arctic_a0001", "transcript is not UTF-8 text"),
        ("HQTV_arctic_a0002", "empty transcript"),
    ]
    assert cands[0].text == "Two lines."
    # a folder outside the table is read when named, with an unknown accent
    (root / "NEW1").mkdir()
    shutil.copytree(corpus / "HQTV" / "wav", root / "NEW1" / "wav")
    shutil.copytree(corpus / "HQTV" / "transcript", root / "NEW1" / "transcript")
    cands, _ = run(ctx, root, prompts="b", keep=Keep(speakers=("NEW1",)))
    assert {(c.speaker, c.accent) for c in cands} == {("NEW1", "unknown")}


def test_missing_folders_are_one_line_errors(corpus, tmp_path, ctx):
    with pytest.raises(UserError, match="l2arctic source.path: folder not found"):
        run(ctx, tmp_path / "absent")
    with pytest.raises(UserError, match=r"no speaker folders \(<SPEAKER>/wav"):
        run(ctx, tmp_path)
    with pytest.raises(UserError, match="keep.speakers: no folder XYZ with a wav/ folder"):
        run(ctx, corpus, keep=Keep(speakers=("ABA", "XYZ")))
