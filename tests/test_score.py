"""The score stage: shards, resume, unlabelled target, bad audio, and two processes."""

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_recipe
from pipeline.errors import UserError
from pipeline.manifest import read as manifest_read
from pipeline.manifest import write as manifest_write
from pipeline.prepare import stage as prepare
from pipeline.score import stage as score
from pipeline.select import stage as select


@pytest.fixture
def scored_recipe(write_recipe, tiny_whisper_dir):
    data = {
        "model": {"name": str(tiny_whisper_dir)},
        "score": {"shard_size": 8, "batch_size": 4, "losses": True},
        "prepare": {
            "workers": 1,
            "sets": [
                {
                    "name": "pool",
                    "split": "pool",
                    "source": {
                        "kind": "synth",
                        "parts": [{"count": 20, "voices": ["us", "caribbean"]}],
                    },
                },
                {
                    "name": "target",
                    "split": "target",
                    "source": {
                        "kind": "synth",
                        "text_split": "heldout",
                        "speaker_split": "heldout",
                        "parts": [{"count": 6, "voices": ["caribbean"]}],
                    },
                },
            ],
        },
    }
    path = write_recipe(data)
    recipe = load_recipe(path)
    prepare.run(recipe)
    return path, recipe


def read(recipe, name):
    out = recipe.root / "score" / name
    return np.load(out / "embeddings.npy"), pd.read_parquet(out / "scores.parquet")


def test_score_writes_aligned_embeddings_losses_and_hypotheses(scored_recipe):
    _, recipe = scored_recipe
    score.run(recipe)
    emb, table = read(recipe, "pool")
    pool = pd.read_parquet(recipe.root / "prepare" / "manifests" / "pool.parquet")
    assert table["id"].tolist() == pool["id"].tolist()
    assert emb.shape == (20, 2, 32) and emb.dtype == np.float16 and np.isfinite(emb).all()
    assert np.isfinite(table["loss"]).all() and (table["loss"] > 0).all()
    assert table["hypothesis"].map(type).eq(str).all() and table["wer"].notna().all()
    emb_t, target = read(recipe, "target")
    assert emb_t.shape == (6, 2, 32) and target["loss"].isna().all()  # unlabelled: no loss
    done = json.loads((recipe.root / "score" / "pool" / "done.json").read_text())
    assert done["utterances"] == 20 and done["peak_rss_mib"] > 100


def test_losses_are_left_out_unless_an_estimator_reads_them(scored_recipe):
    _, recipe = scored_recipe
    score.run(recipe)
    with_losses, _ = read(recipe, "pool")
    (recipe.root / "score").rename(recipe.root / "score-with-losses")
    plain = replace(recipe, score=replace(recipe.score, losses=None))
    assert plain.select.estimators == ("classifier",)
    score.run(plain)  # without the decoder pass
    emb, table = read(plain, "pool")
    np.testing.assert_array_equal(emb, with_losses)
    assert table["loss"].isna().all() and table["wer"].notna().all()
    needs = replace(plain, select=replace(plain.select, estimators=("classifier", "difficulty")))
    assert score.wants_losses(needs)
    with pytest.raises(UserError, match="score.losses"):
        select.run(needs)


def test_decoding_settings_rescore_only_the_sets_with_hypotheses(scored_recipe):
    _, recipe = scored_recipe
    done = recipe.root / "score" / "pool" / "done.json"
    plain = replace(recipe, score=replace(recipe.score, hypotheses=False))
    score.run(plain)
    stamp = done.stat().st_mtime_ns
    score.run(replace(plain, model=replace(plain.model, loop_repeats=3, tokens_per_s=4.0)))
    assert done.stat().st_mtime_ns == stamp  # embeddings and losses do not decode: up to date
    score.run(recipe)
    stamp = done.stat().st_mtime_ns
    score.run(replace(recipe, model=replace(recipe.model, loop_repeats=3)))
    assert done.stat().st_mtime_ns != stamp  # the pool's hypotheses are decoded again


def test_a_set_scored_with_more_is_up_to_date_for_a_run_that_asks_for_less(scored_recipe):
    _, recipe = scored_recipe
    done = recipe.root / "score" / "pool" / "done.json"
    score.run(recipe)  # hypotheses and losses
    stamp = done.stat().st_mtime_ns
    less = replace(recipe, score=replace(recipe.score, hypotheses=False, losses=False))
    score.run(less)
    assert done.stat().st_mtime_ns == stamp
    assert read(less, "pool")[1]["wer"].notna().all()  # what it holds stays
    (recipe.root / "score").rename(recipe.root / "score-full")
    score.run(less)
    stamp = done.stat().st_mtime_ns
    score.run(recipe)  # asks for more than the set holds: scored again
    assert done.stat().st_mtime_ns != stamp
    assert read(recipe, "pool")[1]["loss"].notna().all()


def test_killed_score_redoes_only_missing_shards(scored_recipe):
    _, recipe = scored_recipe
    score.run(recipe)
    out = recipe.root / "score" / "pool"
    shards = sorted((out / "shards").glob("*.npz"))
    assert len(shards) == 3
    before = {p.name: p.stat().st_mtime_ns for p in shards}
    emb_before, _ = read(recipe, "pool")
    shards[1].unlink()
    (out / "done.json").unlink()
    score.run(recipe)
    after = {p.name: p.stat().st_mtime_ns for p in sorted((out / "shards").glob("*.npz"))}
    assert after[shards[0].name] == before[shards[0].name]
    assert after[shards[1].name] != before[shards[1].name]
    np.testing.assert_array_equal(read(recipe, "pool")[0], emb_before)


def test_unreadable_audio_is_counted_not_fatal(scored_recipe):
    _, recipe = scored_recipe
    pool = pd.read_parquet(recipe.root / "prepare" / "manifests" / "pool.parquet")
    (recipe.root / "prepare" / "manifests" / pool["audio_path"].iloc[3]).write_bytes(b"junk")
    score.run(recipe)
    emb, table = read(recipe, "pool")
    assert table["unreadable"].tolist() == [i == 3 for i in range(20)]
    assert np.isnan(emb[3].astype(np.float32)).all() and np.isfinite(emb[4]).all()


def test_a_shard_with_no_readable_row_keeps_the_shape(scored_recipe):
    _, recipe = scored_recipe
    pool = pd.read_parquet(recipe.root / "prepare" / "manifests" / "pool.parquet")
    for i in range(8, 16):  # the whole second shard of 8
        (recipe.root / "prepare" / "manifests" / pool["audio_path"].iloc[i]).write_bytes(b"x")
    score.run(recipe)
    emb, table = read(recipe, "pool")
    assert emb.shape == (20, 2, 32) and table["unreadable"].sum() == 8
    assert np.isnan(emb[8:16].astype(np.float32)).all()
    assert np.isfinite(emb[:8]).all() and np.isfinite(emb[16:]).all()


@pytest.mark.slow
def test_two_processes_give_the_single_process_result(scored_recipe, tmp_path):
    path, recipe = scored_recipe
    score.run(recipe)
    single, single_table = read(recipe, "pool")
    other = tmp_path / "two"
    # `launch --cpu --num_processes 2` starts one process in accelerate 1.15; --multi_gpu starts
    # two through torchrun, and score puts them on gloo when there is no GPU
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
    ]
    cmd = [*launch, "-m", "pipeline", "score", str(path), "--set", f"data_dir={other}"]
    other.mkdir()  # the same prepared manifests and audio (paths inside are relative)
    subprocess.run(["cp", "-r", str(recipe.root / "prepare"), str(other)], check=True)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on 2 process(es)" in done.stderr
    two = np.load(other / "score" / "pool" / "embeddings.npy")
    np.testing.assert_allclose(two.astype(np.float32), single.astype(np.float32), atol=2e-3)
    table = pd.read_parquet(other / "score" / "pool" / "scores.parquet")
    assert table["id"].tolist() == single_table["id"].tolist()


def test_scores_and_selection_ignore_row_order_and_batch_neighbours(
    write_recipe, tiny_whisper_dir, tmp_path
):
    """The pool scored again with its rows permuted, another batch size and other shards:
    every utterance keeps its embedding and loss, and select draws the same subsets."""
    synth = {"kind": "synth", "parts": [{"count": 30, "voices": ["us", "caribbean"]}]}
    target = {"kind": "synth", "text_split": "heldout", "speaker_split": "heldout"}
    target["parts"] = [{"count": 20, "voices": ["caribbean"]}]
    data = {
        "model": {"name": str(tiny_whisper_dir)},
        "score": {"shard_size": 8, "batch_size": 4, "losses": True, "hypotheses": False},
        "select": {"budget": 5, "selectors": ["rsft", "random"], "folds": 2},
        "prepare": {
            "workers": 1,
            "sets": [
                {"name": "pool", "split": "pool", "source": synth},
                {"name": "target", "split": "target", "source": target},
            ],
        },
    }
    small = load_recipe(write_recipe(data))
    prepare.run(small)
    score.run(small)
    select.run(small)
    other = replace(
        small,
        data_dir=str(tmp_path / "permuted"),
        score=replace(small.score, batch_size=3, shard_size=5),
    )
    other.root.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(small.root / "prepare"), str(other.root)], check=True)
    path = other.root / "prepare" / "manifests" / "pool.parquet"
    frame = manifest_read(path)
    frame = frame.sample(frac=1.0, random_state=7).reset_index(drop=True)
    manifest_write(frame, path, root=other.root)
    score.run(other)
    select.run(other)
    for name in ("pool", "target"):
        emb_a, table_a = read(small, name)
        emb_b, table_b = read(other, name)
        at = pd.Index(table_b["id"]).get_indexer(table_a["id"])
        assert (at >= 0).all()
        np.testing.assert_allclose(
            emb_b[at].astype(np.float32), emb_a.astype(np.float32), rtol=0, atol=2e-3
        )
        np.testing.assert_allclose(
            table_b["loss"].to_numpy()[at], table_a["loss"], atol=1e-3, equal_nan=True
        )
    for method in ("rsft", "random"):
        ids = [
            sorted(pd.read_parquet(r / "select" / method / "subset.parquet")["id"])
            for r in (small.root, other.root)
        ]
        assert ids[0] == ids[1] and len(ids[0]) == 5
