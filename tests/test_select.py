"""The select stage on a scored pool whose embeddings carry the accent and noise."""

import json

import numpy as np
import pandas as pd
import pytest

from pipeline import manifest
from pipeline.config import load_recipe
from pipeline.errors import UserError
from pipeline.select import stage as select
from tests.factories import ACCENTS, NOISES, fake_scored_set


@pytest.fixture
def recipe(write_recipe, tmp_path):
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(300)]
    pool = pool[:-260]  # the target condition (caribbean in white noise) is rare: 40 of 2440
    target = [("caribbean", NOISES[2])] * 60
    root = tmp_path / "data"
    # the same seed draws the same group centres first, so both sets share them
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", target, np.random.default_rng(1))
    return load_recipe(write_recipe({"select": {"budget": 60, "folds": 3}}))


def test_rsft_finds_the_target_condition_far_more_than_random(recipe):
    table = select.run(recipe).set_index("selector")
    rsft, random = table.loc["rsft"], table.loc["random"]
    assert rsft["selected"] == random["selected"] == 60
    pool_share = 40 / 2440  # what random selection holds in expectation
    assert random["target_group_share"] < 3 * pool_share
    assert rsft["target_group_share"] >= 10 * pool_share
    assert table.loc["oracle", "target_group_share"] == 1.0
    assert table.loc["full", "selected"] == 2440
    assert table.loc["importance", "selected"] == 60
    out = recipe.root / "select"
    subset = manifest.read(out / "rsft" / "subset.parquet")
    assert subset["count"].sum() == 60
    diag = json.loads((out / "rsft" / "diagnostics.json").read_text())
    assert {"acceptance_rate", "ess", "tv_accepted_target", "clipped_mass", "groups"} <= set(diag)
    assert 0.5 < diag["estimators"]["classifier"]["auc"] <= 1.0
    assert (out / "rsft" / "shares.png").stat().st_size > 1000
    assert json.loads((out / "summary.json").read_text())["peak_rss_mib"] > 50


def test_same_seed_same_subset_and_skipped_baselines(recipe, tmp_path):
    select.run(recipe)
    first = manifest.read(recipe.root / "select" / "rsft" / "subset.parquet")["id"].tolist()
    select.run(recipe)
    again = manifest.read(recipe.root / "select" / "rsft" / "subset.parquet")["id"].tolist()
    assert first == again
    scores = recipe.root / "score" / "pool" / "scores.parquet"
    table = pd.read_parquet(scores).assign(wer=np.nan)
    table.to_parquet(scores)
    summary = select.run(recipe).set_index("selector")
    assert "score.hypotheses" in summary.loc["wer_filter", "skipped"]


def test_select_needs_scores(write_recipe):
    with pytest.raises(UserError, match="not scored yet"):
        select.run(load_recipe(write_recipe({})))


def test_labelled_baselines_train_on_the_labelled_set_and_rsft_fills_the_rest(
    write_recipe, tmp_path
):
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(100)]
    root = tmp_path / "data"
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", [("caribbean", NOISES[2])] * 40, np.random.default_rng(1))
    fake_scored_set(root, "labelled", [("caribbean", NOISES[2])] * 25, np.random.default_rng(2))
    synth = {"kind": "synth", "parts": [{"count": 25, "voices": ["caribbean"]}]}
    recipe = load_recipe(
        write_recipe(
            {
                "prepare": {"sets": [{"name": "labelled", "split": "dev", "source": synth}]},
                "select": {
                    "budget": 60,
                    "folds": 3,
                    "labelled_set": "labelled",
                    "selectors": ["rsft", "random", "labelled_target", "rsft_labelled"],
                },
            }
        )
    )
    table = select.run(recipe).set_index("selector")
    out = recipe.root / "select"
    alone = manifest.read(out / "labelled_target" / "subset.parquet")
    assert sorted(alone["id"]) == [f"labelled-{i:05d}" for i in range(25)]
    both = manifest.read(out / "rsft_labelled" / "subset.parquet")
    assert len(both) == 60 and both["count"].eq(1).all()
    assert set(alone["id"]) <= set(both["id"])
    from_pool = both[~both["id"].isin(alone["id"])]
    assert len(from_pool) == 35 and from_pool["id"].str.startswith("pool-").all()
    assert table.loc["rsft_labelled", "target_group_share"] > 25 / 60
    with pytest.raises(Exception, match="labelled_set"):
        load_recipe(write_recipe({"select": {"labelled_set": "nowhere"}}))
