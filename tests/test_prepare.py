"""The prepare stage end to end on small real corpora, bad input, reruns and kills."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import manifest
from pipeline.config import SynthSource, load_recipe
from pipeline.fsio import file_sha256, read_json
from pipeline.prepare import stage as prepare
from pipeline.prepare.corpora import synth
from pipeline.prepare.corpora.base import SourceContext
from tests.factories import speak

TINY = {
    "prepare": {
        "workers": 1,
        "sets": [
            {
                "name": "pool",
                "split": "pool",
                "source": {
                    "kind": "synth",
                    "parts": [
                        {"count": 6, "voices": ["us", "caribbean"]},
                        {
                            "count": 6,
                            "voices": ["gb"],
                            "noise": {"types": ["babble", "vinyl_hiss"], "snr_db": [5, 0]},
                        },
                    ],
                },
            },
            {
                "name": "test_noisy",
                "split": "test",
                "source": {
                    "kind": "synth",
                    "text_split": "test",
                    "speaker_split": "test",
                    "parts": [{"count": 3, "voices": ["nyc"]}],
                },
                "noise": {
                    "types": ["white", "sauna"],
                    "snr_db": [10, 0],
                    "per_utterance": "each_snr",
                    "keep_clean": True,
                    "region": "test",
                },
            },
            {
                "name": "ast",
                "split": "dev",
                "source": {"kind": "asterisk", "part": "guard", "limit": 4},
            },
        ],
    }
}


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    """A local corpus with every kind of bad input beside good real speech."""
    root = tmp_path_factory.mktemp("bad_corpus")
    wave, rate = speak("Please set the thermostat to twenty degrees.")
    files = {
        "good.wav": (wave, rate, "PCM_16"),
        "stereo.wav": (np.stack([wave, 0.5 * wave], axis=1), rate, "PCM_16"),
        "nan.wav": (np.where(np.arange(len(wave)) == 100, np.nan, wave), rate, "FLOAT"),
        "empty.wav": (np.zeros(0, np.float32), rate, "PCM_16"),
        "silent.wav": (np.zeros(rate, np.float32), rate, "PCM_16"),
        "lowrate.wav": (wave[::6], 4000, "PCM_16"),
        "short.wav": (wave[: rate // 10], rate, "PCM_16"),
        "long.wav": (np.tile(wave, 20), rate, "PCM_16"),
    }
    for name, (data, sr, subtype) in files.items():
        sf.write(root / name, data, sr, subtype=subtype)
    (root / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    lines = ["id\tpath\ttext\tspeaker"]
    for name in list(files) + ["corrupt.wav"]:
        lines.append(
            f"{Path(name).stem}\t{name}\tPlease set the thermostat to twenty degrees.\tspk1"
        )
    lines += [
        "notext\tgood.wav\t \tspk1",
        "good\tstereo.wav\tA second row with the same id.\tspk1",
        "missing\tnone.wav\tNo such file.\tspk1",
    ]
    (root / "transcripts.tsv").write_text("\n".join(lines) + "\n")
    return root


def run_prepare(path, *overrides):
    return prepare.run(load_recipe(path, list(overrides)))


def test_prepare_builds_manifests_summary_and_rejects(write_recipe, bad_corpus, tmp_path, capsys):
    data = {
        **TINY,
        "prepare": {
            **TINY["prepare"],
            "sets": TINY["prepare"]["sets"]
            + [
                {
                    "name": "bad",
                    "split": "test",
                    "source": {"kind": "local", "path": str(bad_corpus)},
                }
            ],
        },
    }
    recipe_path = write_recipe(data)
    table = run_prepare(recipe_path)
    root = tmp_path / "data" / "prepare"

    pool = manifest.read(root / "manifests" / "pool.parquet")
    assert len(pool) == 12 and set(pool["split"]) == {"pool"}
    noisy = pool[pool["noise"] != "clean"]
    assert len(noisy) == 6 and set(noisy["accent"]) == {"gb"}
    assert set(noisy["noise"]) <= {"babble", "vinyl_hiss"} and set(noisy["snr_db"]) <= {5.0, 0.0}
    for path in pool["audio_path"]:
        info = sf.info(path)
        assert (info.samplerate, info.channels) == (16000, 1)

    test = manifest.read(root / "manifests" / "test_noisy.parquet")
    assert len(test) == 9  # 3 clean + 3 x 2 SNRs
    assert sorted(test["snr_db"].fillna(-1)) == [-1] * 3 + [0] * 3 + [10] * 3

    bad = manifest.read(root / "manifests" / "bad.parquet")
    assert sorted(bad["id"]) == ["good", "stereo"]
    tsv = pd.read_csv(root / "rejects" / "bad.tsv", sep="\t", dtype=str, keep_default_na=False)
    rejects = tsv.set_index("id")["reason"]
    expected = {
        "nan": "non-finite",
        "empty": "empty audio",
        "silent": "silent audio",
        "lowrate": "below the 8000 Hz minimum",
        "short": "too short",
        "long": "too long",
        "corrupt": "unreadable audio",
        "notext": "empty transcript",
        "good": "duplicate id",
        "missing": "missing",
    }
    assert set(rejects.index) == set(expected)
    for uid, reason in expected.items():
        assert reason in rejects[uid], (uid, rejects[uid])
    stamp = read_json(root / "manifests" / "bad.done.json")
    assert stamp["converted"] == {"downmixed": 1, "resampled_from": 2}
    assert stamp["peak_rss_mib"] > 50  # the building run's own record (make bench reads it)

    summary = read_json(root / "summary.json")
    assert summary["utterances"] == 12 + 9 + 4 + 2 == table["utterances"].sum()
    assert summary["rejects"]["bad"]["too long"] == 1
    assert "totals per split" in capsys.readouterr().out


def test_second_run_is_a_fast_no_op(write_recipe, tmp_path):
    recipe_path = write_recipe(TINY)
    run_prepare(recipe_path)
    out = tmp_path / "data" / "prepare" / "manifests" / "pool.parquet"
    before = out.stat().st_mtime_ns
    started = time.monotonic()
    run_prepare(recipe_path)
    assert out.stat().st_mtime_ns == before
    assert time.monotonic() - started < 5
    # a changed set is rebuilt, and its stale audio removed
    run_prepare(recipe_path, "prepare.sets.pool.source.parts.1.noise.snr_db=[20]")
    pool = manifest.read(out)
    assert set(pool["snr_db"].dropna()) == {20.0}
    files = {str(p) for p in (tmp_path / "data" / "prepare" / "audio" / "pool" / "noisy").iterdir()}
    assert files == set(pool.loc[pool["noise"] != "clean", "audio_path"])


def test_killed_run_resumes_to_identical_manifests(write_recipe, tmp_path):
    data = {
        "prepare": {
            "workers": 1,
            "sets": [
                {
                    "name": "pool",
                    "split": "pool",
                    "source": {
                        "kind": "synth",
                        "parts": [
                            {
                                "count": 150,
                                "voices": ["all"],
                                "noise": {"types": ["babble", "sauna", "pink"], "snr_db": [10, 0]},
                            }
                        ],
                    },
                }
            ],
        }
    }
    recipe_path = write_recipe(data)
    cmd = [sys.executable, "-m", "pipeline", "prepare", str(recipe_path), "-q"]
    killed_root = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["--set", f"data_dir={killed_root}"], start_new_session=True)
    audio_dir = killed_root / "prepare" / "audio" / "pool" / "clean"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(list(audio_dir.glob("*.flac"))) < 40:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_root / "prepare" / "manifests" / "pool.parquet").exists()
    subprocess.run(cmd + ["--set", f"data_dir={killed_root}"], check=True)
    fresh_root = tmp_path / "fresh"
    subprocess.run(cmd + ["--set", f"data_dir={fresh_root}"], check=True)

    def stored(root):
        return pd.read_parquet(root / "prepare" / "manifests" / "pool.parquet")

    killed, fresh = stored(killed_root), stored(fresh_root)
    pd.testing.assert_frame_equal(killed, fresh)
    for rel in fresh["audio_path"][::10]:
        a = killed_root / "prepare" / "manifests" / rel
        b = fresh_root / "prepare" / "manifests" / rel
        assert file_sha256(a) == file_sha256(b)


def test_demo_test_sentences_never_occur_in_pool_or_target_sample(tmp_path):
    recipe = load_recipe("recipes/demo.yaml")
    texts = {}
    for s in recipe.prepare.sets:
        if isinstance(s.source, SynthSource):
            ctx = SourceContext(recipe.seed, s.name, s.split, tmp_path)
            texts[s.name] = {c.text for c in synth.candidates(s.source, ctx)}
    train = texts["pool"] | texts["target"]
    assert texts["pool"].isdisjoint(texts["target"])
    for name in ("test_target", "test_clean", "test_noisy", "dev_target"):
        assert texts[name].isdisjoint(train), name
    for name in ("test_target", "test_clean", "test_noisy"):
        assert texts[name].isdisjoint(texts["dev_target"]), name


def test_edited_local_transcript_rebuilds_the_set(write_recipe, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    wave, rate = speak("Open the garage door.")
    sf.write(corpus / "a.wav", wave, rate)
    table = corpus / "transcripts.tsv"
    table.write_text("path\ttext\na.wav\tOpen the garage door.\n")
    recipe_path = write_recipe(
        {
            "prepare": {
                "sets": [
                    {
                        "name": "loc",
                        "split": "test",
                        "source": {"kind": "local", "path": str(corpus)},
                    }
                ]
            }
        }
    )
    out = tmp_path / "data" / "prepare" / "manifests" / "loc.parquet"
    run_prepare(recipe_path)
    assert manifest.read(out)["text"].tolist() == ["Open the garage door."]
    table.write_text("path\ttext\na.wav\tOpen the garage door now.\n")
    run_prepare(recipe_path)
    assert manifest.read(out)["text"].tolist() == ["Open the garage door now."]
