"""Local corpora: transcript tables and Kaldi data directories, on real speech."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf

from pipeline.config import LocalSource
from pipeline.errors import UserError
from pipeline.prepare.corpora import local
from pipeline.prepare.corpora.base import Candidate, Reject, SourceContext
from tests.factories import assert_speech, split_entries

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
SENTENCES = {
    "lights": "turn on the kitchen lights",
    "timer": "set a timer for ten minutes",
    "weather": "what is the weather tomorrow",
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """Short real speech from espeak-ng (22.05 kHz WAV), one file per sentence."""
    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed")
    folder = tmp_path_factory.mktemp("espeak")
    files = {}
    for name, text in SENTENCES.items():
        files[name] = folder / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(files[name]), text], check=True)
    return files


@pytest.fixture
def ctx(tmp_path) -> SourceContext:
    return SourceContext(seed=0, set_name="mine", split="pool", work_dir=tmp_path / "work")


def run(ctx: SourceContext, path: Path, **kw) -> tuple[list[Candidate], list[Reject]]:
    return split_entries(local.candidates(LocalSource(kind="local", path=str(path), **kw), ctx))


def test_tsv_table_with_relative_paths_and_a_missing_file(tmp_path, speech, ctx):
    corpus = tmp_path / "corpus"
    (corpus / "audio").mkdir(parents=True)
    shutil.copy(speech["lights"], corpus / "audio" / "lights.wav")
    shutil.copy(speech["timer"], corpus / "audio" / "timer.wav")
    (corpus / "transcripts.tsv").write_text(
        "path\ttext\tspeaker\taccent\n"
        "audio/lights.wav\tturn on the kitchen lights\tann\ten-029\n"
        'audio/timer.wav\tset a "timer"\tbob\t\n'  # quotes are text; no accent -> default
        "audio/gone.wav\tthis file is missing\tann\ten-029\n"
        f"{LIBRIVOX / 'sense_and_sensibility_01_austen_64kb-0880.wav'}\the was not\tlib\tus\n"
    )
    cands, rejects = run(ctx, corpus, accent="en-gb")
    assert [c.id for c in cands] == ["lights", "timer", "sense_and_sensibility_01_austen_64kb-0880"]
    lights, timer, libri = cands
    assert (lights.text, lights.speaker, lights.accent, lights.source) == (
        "turn on the kitchen lights",
        "ann",
        "en-029",
        "local",
    )
    assert timer.text == 'set a "timer"' and timer.accent == "en-gb"
    assert lights.path == str((corpus / "audio" / "lights.wav").resolve())
    assert lights.spec.startswith(f"{lights.path}:")
    assert [(r.id, r.reason) for r in rejects] == [("gone", "audio file missing: audio/gone.wav")]
    assert_speech(lights, sf.info(speech["lights"]).duration)
    assert_speech(libri, 2.99)


def test_csv_table_is_the_path_itself_with_ids_and_limit(tmp_path, speech, ctx):
    table = tmp_path / "meta" / "list.csv"
    table.parent.mkdir()
    # '..' paths and quoted commas are the user's business and must work
    table.write_text(
        "ID,File,Sentence\n"
        'u2,../timer.wav,"set a timer, please"\n'
        "u1,../lights.wav,turn on the kitchen lights\n"
        "u3,../weather.wav,   \n"
    )
    for name in ("lights", "timer"):
        shutil.copy(speech[name], tmp_path / f"{name}.wav")
    cands, rejects = run(ctx, table)
    assert [c.id for c in cands] == ["u2", "u1"]  # table order
    assert cands[0].text == "set a timer, please" and cands[0].speaker == "unknown"
    assert [(r.id, r.reason) for r in rejects] == [("u3", "empty transcript")]
    cands, rejects = run(ctx, table, limit=1)
    assert [c.id for c in cands] == ["u2"] and not rejects


def test_spec_changes_when_the_file_changes(tmp_path, speech, ctx):
    shutil.copy(speech["lights"], tmp_path / "a.wav")
    (tmp_path / "t.tsv").write_text("audio\ttranscript\na.wav\thello\n")
    before = run(ctx, tmp_path)[0][0].spec
    assert run(ctx, tmp_path)[0][0].spec == before
    shutil.copy(speech["weather"], tmp_path / "a.wav")
    assert run(ctx, tmp_path)[0][0].spec != before


def test_shared_stems_get_path_ids_and_duplicate_ids_are_rejected(tmp_path, speech, ctx):
    for spk in ("s1", "s2"):
        (tmp_path / spk).mkdir()
        shutil.copy(speech["lights"], tmp_path / spk / "001.wav")
    (tmp_path / "t.tsv").write_text("path\ttext\ns1/001.wav\ta\n./s2/../s2/001.wav\tb\n")
    assert [c.id for c in run(ctx, tmp_path)[0]] == ["s1_001", "s2_s2_001"]
    (tmp_path / "t.tsv").write_text("id\tpath\ttext\nx\ts1/001.wav\ta\nx\ts2/001.wav\tb\n")
    cands, rejects = run(ctx, tmp_path)
    assert [c.id for c in cands] == ["x"]
    assert rejects == [Reject("x", "duplicate id: first on line 2", "local")]


def test_a_folder_of_recordings_without_transcripts_is_an_unlabelled_target(tmp_path, speech):
    user = tmp_path / "alice"
    (user / "monday").mkdir(parents=True)
    shutil.copy(speech["lights"], user / "monday" / "req1.wav")
    shutil.copy(speech["timer"], user / "req1.wav")  # the same stem: ids keep the folders
    (user / "notes.txt").write_text("not audio")
    target = SourceContext(seed=0, set_name="mine", split="target", work_dir=tmp_path / "w")
    cands, rejects = run(target, user)
    assert not rejects and [c.id for c in cands] == ["monday_req1", "req1"]
    assert all(c.text == "" and c.path.endswith(".wav") for c in cands)
    pool = SourceContext(seed=0, set_name="mine", split="pool", work_dir=tmp_path / "w")
    with pytest.raises(UserError, match="exactly one .tsv or .csv"):  # labelled sets need text
        run(pool, user)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no transcript table and no audio file"):
        run(target, tmp_path / "empty")


def test_table_errors_name_the_file_and_column(tmp_path, ctx):
    (tmp_path / "t.tsv").write_text("path\twords\na.wav\thello\n")
    with pytest.raises(UserError, match=r"t\.tsv: missing column text or transcript"):
        run(ctx, tmp_path)
    (tmp_path / "u.csv").write_text("path,text\n")
    with pytest.raises(UserError, match="exactly one .tsv or .csv"):
        run(ctx, tmp_path)
    with pytest.raises(UserError, match="transcript table not found"):
        run(ctx, tmp_path, transcript="nope.tsv")
    with pytest.raises(UserError, match="not found"):
        run(ctx, tmp_path / "absent")


@pytest.fixture
def kaldi_dir(tmp_path, speech) -> Path:
    """A Kaldi data dir with every kind of entry: plain, piped, ark, and orphans."""
    data = tmp_path / "s5" / "data" / "train"
    data.mkdir(parents=True)
    marker = tmp_path / "EXECUTED"
    shutil.copy(speech["timer"], tmp_path / "s5" / "timer.wav")  # relative to the recipe root
    (data / "wav.scp").write_text(
        f"spkA-lights {speech['lights']}\n"
        f"spkA-piped touch {marker} && cat {speech['weather']} |\n"
        "spkB-ark /data/feats.ark:1234\n"
        "spkB-timer timer.wav\n"
        f"spkB-notext {speech['weather']}\n"
        f"spkD-dup {speech['weather']}\n"
        f"spkD-dup {speech['timer']}\n"
    )
    (data / "text").write_text(
        "spkA-lights TURN ON THE KITCHEN LIGHTS\n"
        "spkA-piped WHAT IS THE WEATHER TOMORROW\n"
        "spkB-ark HELLO\n"
        "spkB-timer SET A TIMER FOR TEN MINUTES\n"
        "spkC-nowav ORPHAN TRANSCRIPT\n"
        "spkD-dup WHICH ONE\n"
    )
    (data / "utt2spk").write_text(
        "spkA-lights spkA\nspkA-piped spkA\nspkB-ark spkB\nspkB-timer spkB\n"
    )
    (data / "utt2accent").write_text("spkA-lights en-029\nspkA-piped en-029\n")
    return data


def test_kaldi_dir(kaldi_dir, speech, ctx):
    cands, rejects = run(ctx, kaldi_dir, format="kaldi", accent="en-us")
    assert [(c.id, c.speaker, c.accent) for c in cands] == [
        ("spkA-lights", "spkA", "en-029"),
        ("spkB-timer", "spkB", "en-us"),
    ]
    assert cands[0].text == "TURN ON THE KITCHEN LIGHTS"
    assert dict((r.id, r.reason) for r in rejects) == {
        "spkA-piped": local.PIPED_REASON,
        "spkB-ark": local.PIPED_REASON,
        "spkB-notext": "in wav.scp but not in text",
        "spkC-nowav": "in text but not in wav.scp",
        "spkD-dup": "duplicate utterance id in wav.scp or text",
    }
    assert not (kaldi_dir.parents[2] / "EXECUTED").exists()  # the pipe never ran
    assert_speech(cands[1], sf.info(speech["timer"]).duration)
    # sorted utterance ids; the limit counts Candidates and stops right after the last one
    limited = LocalSource(kind="local", path=str(kaldi_dir), format="kaldi", limit=2)
    assert [e.id for e in local.candidates(limited, ctx)] == [
        "spkA-lights",
        "spkA-piped",
        "spkB-ark",
        "spkB-notext",
        "spkB-timer",
    ]


def test_kaldi_dir_missing_files(tmp_path, ctx):
    (tmp_path / "text").write_text("a hello\n")
    with pytest.raises(UserError, match="missing wav.scp"):
        run(ctx, tmp_path, format="kaldi")
    (tmp_path / "wav.scp").write_text("a /x.wav\n")
    (tmp_path / "segments").write_text("a rec 0 1\n")
    with pytest.raises(UserError, match="segments"):
        run(ctx, tmp_path, format="kaldi")
