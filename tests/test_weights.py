"""select's weights.parquet: its columns, and the two recipes of docs/weights.md run as written
(lhotse's weighted sampler, a datasets table with PyTorch's WeightedRandomSampler)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import layout, manifest
from pipeline.select.stage import weights_frame
from tests.test_select_golden import scored_recipe

DOC = Path(__file__).parents[1] / "docs" / "weights.md"


def test_weights_frame_is_the_exact_design():
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=500) * 2
    frame = weights_frame(pd.Series([f"u{i}" for i in range(500)]), log_w, 40)
    assert frame["inclusion"].sum() == pytest.approx(40)
    assert frame["weight"].mean() == pytest.approx(1)
    order = np.argsort(log_w)
    assert (np.diff(frame["inclusion"].to_numpy()[order]) >= -1e-12).all()  # non-decreasing in w
    uncertain = frame["inclusion"] < 1
    ratio = frame["inclusion"][uncertain] / frame["weight"][uncertain]
    assert ratio.max() == pytest.approx(ratio.min())  # pi = c * w below 1
    flat = weights_frame(pd.Series(["a", "b", "c", "d"]), np.zeros(4), 3)
    assert flat["inclusion"].tolist() == [0.75] * 4
    assert flat["weight"].tolist() == [1.0] * 4


@pytest.fixture(scope="module")
def selected(tmp_path_factory):
    """A select run on a scored pool whose audio exists (each row a short tone)."""
    from pipeline.select import stage as select

    tmp = tmp_path_factory.mktemp("weights")
    recipe = scored_recipe(tmp)
    path = recipe.tree.manifest("pool")
    pool = manifest.read(path)
    audio = recipe.root / "prepare" / "audio" / "pool"
    audio.mkdir(parents=True)
    for i, row in enumerate(pool.itertuples()):
        wave = 0.1 * np.sin(np.arange(1600) * (0.05 + i * 1e-4)).astype(np.float32)
        sf.write(audio / f"{row.id}.wav", wave, 16000)
    pool["audio_path"] = [str(audio / f"{i}.wav") for i in pool["id"]]
    pool["duration_s"] = 0.1
    manifest.write(pool, path, root=recipe.root)
    select.run(recipe)
    return recipe


def test_select_writes_one_row_per_pool_utterance(selected):
    weights = pd.read_parquet(selected.tree.weights())
    pool = manifest.read(selected.tree.manifest("pool"))
    assert list(weights.columns) == ["id", "log_w", "weight", "inclusion"]
    assert sorted(weights["id"]) == sorted(pool["id"])
    assert weights["inclusion"].sum() == pytest.approx(selected.select.budget)
    chosen = manifest.read(selected.tree.subset("rsft"))["id"]
    # rsft's draw holds rows in proportion to their inclusion probability
    mean_in = weights.set_index("id").loc[chosen, "inclusion"].mean()
    assert mean_in > 3 * weights["inclusion"].mean()


def _blocks(root: Path) -> list[str]:
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(code) == 2, "docs/weights.md: one block for lhotse, one for datasets"
    return [block.replace('Path("data/demo")', f"Path({str(root)!r})") for block in code]


def _top_share(ids, weights: pd.DataFrame) -> tuple[float, float]:
    """Share of draws that hit the top tenth of rows by weight, and its expectation."""
    top = weights["weight"] >= weights["weight"].quantile(0.9)
    expected = weights["weight"][top].sum() / weights["weight"].sum()
    return float(pd.Series(list(ids)).isin(set(weights["id"][top])).mean()), float(expected)


def test_lhotse_recipe(selected):
    pytest.importorskip("lhotse")
    space: dict = {}
    exec(compile(_blocks(selected.root)[0], str(DOC), "exec"), space)
    chosen = manifest.read(selected.tree.subset("rsft"))["id"]
    assert sorted(space["rsft_cuts"].ids) == sorted(chosen)
    ids = [cut.id for batch in space["sampler"] for cut in batch]
    assert len(ids) == len(set(ids)) == 300  # without replacement
    weights = pd.read_parquet(selected.tree.weights())
    share, expected = _top_share(ids, weights)
    # successive sampling: above the top tenth's uniform share, below its share of the weight
    assert 0.2 < share < expected


def test_datasets_recipe(selected):
    space: dict = {}
    exec(compile(_blocks(selected.root)[1], str(DOC), "exec"), space)
    dataset, sampler = space["dataset"], space["sampler"]
    ids = [dataset[i]["id"] for i in sampler]
    weights = pd.read_parquet(selected.tree.weights())
    share, expected = _top_share(ids, weights)
    assert share == pytest.approx(expected, abs=0.1)
    batch = next(iter(space["loader"]))
    assert len(batch) == 16 and batch[0]["audio"].shape == (1600,)
    assert selected.tree.weights().name == layout.WEIGHTS
