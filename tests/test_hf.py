"""`datasets` corpora from local Parquet and save_to_disk folders, on real speech, offline."""

from __future__ import annotations

import shutil
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.config import HFSource, Keep
from pipeline.errors import UserError
from pipeline.prepare.corpora import hf
from pipeline.prepare.corpora.base import Candidate, Reject, SourceContext, take
from tests.factories import assert_speech, split_entries

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CLIPS = ["0880", "0930", "0890"]  # short LibriVox clips, 16 kHz mono
TEXTS = {
    "0880": "he was not an ill disposed young man",
    "0930": "he might even have been made amiable himself",
    "0890": "unless to be rather cold hearted and rather selfish is to be ill disposed",
}


def clip(key: str) -> Path:
    return LIBRIVOX / f"sense_and_sensibility_01_austen_64kb-{key}.wav"


@pytest.fixture(scope="module")
def rows() -> dict[str, list]:
    """Examples as a hub dataset stores them: encoded audio bytes plus the original name."""
    if not LIBRIVOX.is_dir():
        pytest.skip("pocketsphinx-testdata is not installed")
    return {
        "audio": [{"bytes": clip(k).read_bytes(), "path": clip(k).name} for k in CLIPS],
        "text": [TEXTS[k] for k in CLIPS],
        "spk": ["reader1", "reader1", "reader2"],
        "acc": ["en-gb", "", "en-gb"],
        "uid": [f"ss-{k}" for k in CLIPS],
    }


@pytest.fixture(scope="module")
def parquet_file(rows, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pq") / "train.parquet"
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    ds.to_parquet(str(path))
    return path


@pytest.fixture
def ctx(tmp_path) -> SourceContext:
    return SourceContext(seed=0, set_name="hub", split="pool", work_dir=tmp_path / "work")


def run(ctx: SourceContext, dataset: Path | str, **kw) -> tuple[list[Candidate], list[Reject]]:
    return split_entries(hf.candidates(HFSource(kind="hf", dataset=str(dataset), **kw), ctx))


def test_parquet_file_with_audio_bytes(parquet_file, ctx):
    cands, rejects = run(ctx, parquet_file, split="ignored-for-one-file")
    assert not rejects
    assert [c.id for c in cands] == ["0000000", "0000001", "0000002"]  # dataset order
    assert [c.text for c in cands] == [TEXTS[k] for k in CLIPS]
    assert {(c.speaker, c.accent, c.source, c.path) for c in cands} == {
        ("unknown", "unknown", "hf", None)
    }
    assert cands[0].spec.startswith("sha256:") and cands[0].spec != cands[1].spec
    assert run(ctx, parquet_file)[0][0].spec == cands[0].spec  # stable across runs
    assert_speech(cands[0], 2.99)
    assert_speech(cands[1], 3.29)


def test_column_mapping(parquet_file, ctx):
    cands, _ = run(
        ctx,
        parquet_file,
        speaker_column="spk",
        accent_column="acc",
        id_column="uid",
        accent="en-us",
    )
    assert [(c.id, c.speaker, c.accent) for c in cands] == [
        ("ss-0880", "reader1", "en-gb"),
        ("ss-0930", "reader1", "en-us"),  # an empty accent falls back to the default
        ("ss-0890", "reader2", "en-gb"),
    ]


def test_keep_takes_accents_and_speakers_before_the_limit(parquet_file, ctx):
    mapped = dict(speaker_column="spk", accent_column="acc", id_column="uid", accent="en-us")
    cands, _ = run(ctx, parquet_file, keep=Keep(accents=("EN-GB",)), limit=1, **mapped)
    assert [c.id for c in cands] == ["ss-0880"]
    cands, _ = run(ctx, parquet_file, keep=Keep(accents=("en-gb",)), **mapped)
    assert [c.id for c in cands] == ["ss-0880", "ss-0890"]
    cands, _ = run(ctx, parquet_file, keep=Keep(accents=("en-us",)), streaming=True, **mapped)
    assert [c.id for c in cands] == ["ss-0930"]  # the default accent counts
    cands, _ = run(ctx, parquet_file, keep=Keep(speakers=("reader2",)), **mapped)
    assert [c.id for c in cands] == ["ss-0890"]


def test_streaming_with_limit_reads_lazily(parquet_file, ctx):
    cands, rejects = run(ctx, parquet_file.parent, streaming=True, limit=2, id_column="uid")
    assert [c.id for c in cands] == ["ss-0880", "ss-0930"] and not rejects
    assert_speech(cands[1], 3.29)
    # a stream builds no Arrow copy of the data
    assert not list((ctx.work_dir / "hf_cache").rglob("*.arrow"))


def test_limit_reads_nothing_after_the_last_candidate():
    def entries():
        yield Reject("a", "empty transcript", "hf")
        yield Candidate("b", "text", "s", "x", "hf", "spec", load=print)
        raise AssertionError("read past the limit")

    assert [e.id for e in take(entries(), 1)] == ["a", "b"]
    assert list(take(entries(), 0)) == []


def test_save_to_disk_splits_decoded_audio_arrays_and_paths(rows, tmp_path, ctx):
    train = datasets.Dataset.from_dict({k: rows[k] for k in ("audio", "text")})
    # saved with a decoding Audio feature, as by a user who has torchcodec
    train = train.cast_column("audio", datasets.Audio())
    wave, rate = sf.read(clip("0930"), dtype="float32")
    test = datasets.Dataset.from_dict(
        {
            "audio": [
                {"array": wave, "sampling_rate": rate},
                {"array": wave, "sampling_rate": rate},
            ],
            "text": [TEXTS["0930"], "  "],
        }
    )
    datasets.DatasetDict(train=train, test=test).save_to_disk(str(tmp_path / "saved"))

    cands, rejects = run(ctx, tmp_path / "saved", split="train")
    assert len(cands) == 3 and not rejects
    assert_speech(cands[2], 5.3)

    cands, rejects = run(ctx, tmp_path / "saved", split="test")
    assert rejects == [Reject("0000001", "empty transcript", "hf")]
    assert_speech(cands[0], 3.29)
    assert np.allclose(cands[0].load(16000)[0], wave, atol=1e-6)  # arrays kept exactly

    with pytest.raises(UserError, match=r"no split 'dev' \(splits: train, test\)"):
        run(ctx, tmp_path / "saved", split="dev")


def test_path_column_without_datasets_metadata(tmp_path, ctx):
    """Plain Parquet from pandas/pyarrow: audio as relative file paths, custom column names."""
    shutil.copy(clip("0880"), tmp_path / "a.wav")
    table = pa.table(
        {"file": ["a.wav", "gone.wav"], "sentence": [TEXTS["0880"], "x"], "who": ["r1", "r2"]}
    )
    pq.write_table(table, tmp_path / "meta.parquet")
    cands, rejects = run(
        ctx,
        tmp_path / "meta.parquet",
        audio_column="file",
        text_column="sentence",
        speaker_column="who",
    )
    assert [(c.speaker, c.path) for c in cands] == [("r1", str((tmp_path / "a.wav").resolve()))]
    assert rejects == [Reject("0000001", "audio file not found: gone.wav", "hf")]
    assert_speech(cands[0], 2.99)


def test_missing_column_names_it_and_lists_the_others(parquet_file, ctx):
    with pytest.raises(UserError, match=r"no column 'sentence' \(available: audio, text, spk"):
        run(ctx, parquet_file, text_column="sentence")


def test_missing_local_path(tmp_path, ctx):
    with pytest.raises(UserError, match="hf dataset not found"):
        run(ctx, tmp_path / "nothing.parquet")
    (tmp_path / "list.csv").write_text("path,text\n")
    with pytest.raises(UserError, match="not a save_to_disk folder or Parquet files"):
        run(ctx, tmp_path / "list.csv")


def test_unreachable_hub_id_is_one_line_user_error(monkeypatch, ctx):
    # the libraries read these switches at import time, so set the parsed flags too
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for streaming in (False, True):
        with pytest.raises(UserError) as err:
            run(ctx, "someone/no-such-speech-corpus", streaming=streaming)
        message = str(err.value)
        assert "could not be loaded (offline?)" in message and "save_to_disk" in message
        assert "\n" not in message
        assert err.value.__cause__ is None and err.value.__suppress_context__
