"""Common Voice release folders: TSV splits, MP3 clips, accent labels, keep rules."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.config import CommonVoiceSource, Keep
from pipeline.errors import UserError
from pipeline.prepare.corpora import commonvoice
from pipeline.prepare.corpora.base import SourceContext
from tests.corpus_fixtures import INDIA, commonvoice_release
from tests.factories import assert_speech, split_entries


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    return commonvoice_release(tmp_path_factory.mktemp("cv"), train=12, dev=24, test=6)


@pytest.fixture
def ctx(tmp_path) -> SourceContext:
    return SourceContext(seed=0, set_name="cv", split="pool", work_dir=tmp_path / "work")


def run(ctx, path, **kw):
    cfg = CommonVoiceSource(kind="commonvoice", path=str(path), **kw)
    return split_entries(commonvoice.candidates(cfg, ctx))


@pytest.mark.parametrize(
    ("raw", "label"),
    [
        (INDIA, INDIA),  # commas inside the parentheses do not split it
        ("Liverpool English,Lancashire English,England English", "England English"),
        ("German English,Non native speaker", "German English"),  # none suggested: the first
        ("United States English, Canadian English", "United States English"),
        ("indian", INDIA),  # an old release's code
        ("southatlandtic", "South Atlantic (Falkland Islands, Saint Helena)"),
        ("", "unknown"),
        (" , ", "unknown"),
    ],
)
def test_accent_label(raw, label):
    assert commonvoice.accent_label(raw) == label


def test_release_split_with_mp3_clips(release, ctx):
    cands, rejects = run(ctx, release, split="dev")
    assert not rejects and len(cands) == 24
    first = cands[0]
    assert first.id == Path(first.path).stem and first.id.startswith("common_voice_en_")
    assert first.text == "Turn on the kitchen lights."
    assert first.speaker.startswith("dev00") and len(first.speaker) == 128
    assert first.source == "commonvoice"
    assert [c.accent for c in cands[:6]] == [
        INDIA,
        "United States English",
        "England English",
        "unknown",
        "German English",
        INDIA,
    ]
    assert_speech(first, sf.info(first.path).duration)  # MP3 at 48 kHz, resampled


def test_keep_accents_and_disjoint_halves(release, ctx):
    halves = [
        run(ctx, release, split="dev", keep=Keep(accents=(INDIA.upper(),), utterance_range=r))[0]
        for r in ((0.0, 0.5), (0.5, 1.0))
    ]
    every_india = {c.id for c in run(ctx, release, split="dev")[0] if c.accent == INDIA}
    assert len(every_india) == 8
    ids = [{c.id for c in half} for half in halves]
    assert ids[0] and ids[1] and not ids[0] & ids[1] and ids[0] | ids[1] == every_india
    assert {c.accent for half in halves for c in half} == {INDIA}
    # the same halves on every run, whatever the seed
    again = run(
        SourceContext(9, "x", "dev", ctx.work_dir),
        release,
        split="dev",
        keep=Keep(accents=(INDIA,), utterance_range=(0.0, 0.5)),
    )[0]
    assert {c.id for c in again} == ids[0]


def test_bad_rows_are_rejected(release, tmp_path, ctx):
    en = tmp_path / "en"
    shutil.copytree(release, en)
    lines = (en / "test.tsv").read_text().splitlines()
    cells = [line.split("\t") for line in lines]
    cells[2][3] = ""  # empty sentence
    (en / "clips" / cells[3][1]).unlink()  # clip missing
    cells.append(cells[1])  # the same clip twice
    (en / "test.tsv").write_text("\n".join("\t".join(c) for c in cells) + "\n")
    cands, rejects = run(ctx, en, split="test", limit=2)
    assert len(cands) == 2
    assert [(r.id, r.reason) for r in rejects] == [
        (Path(cells[2][1]).stem, "empty transcript"),
        (Path(cells[3][1]).stem, f"audio file missing: clips/{cells[3][1]}"),
    ]
    cands, rejects = run(ctx, en, split="test")
    assert rejects[-1].reason == "duplicate clip" and len(cands) == 4


def test_old_release_columns(release, tmp_path, ctx):
    """Older releases: 'accent' holds a code, no sentence_id, sentence_domain or variant."""
    en = tmp_path / "en"
    (en / "clips").mkdir(parents=True)
    clip = next((release / "clips").iterdir())
    shutil.copy(clip, en / "clips" / clip.name)
    (en / "train.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent\tlocale\tsegment\n"
        f"abc\t{clip.name}\tHello there.\t2\t0\t\tmale\tindian\ten\t\n"
    )
    (cand,), _ = run(ctx, en)
    assert (cand.speaker, cand.accent, cand.text) == ("abc", INDIA, "Hello there.")


def test_missing_folder_split_or_columns(release, tmp_path, ctx):
    with pytest.raises(UserError, match="commonvoice source.path: folder not found"):
        run(ctx, tmp_path / "nowhere")
    with pytest.raises(
        UserError, match=r"no train2\.tsv in .* \(clip_durations, dev, test, train, validated\)"
    ):
        run(ctx, release, split="train2")
    (tmp_path / "train.tsv").write_text("path\ttext\na.mp3\thi\n")
    with pytest.raises(UserError, match="not a Common Voice table: no column sentence, client_id"):
        run(ctx, tmp_path)
