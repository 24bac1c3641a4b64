"""scripts/selector_layers.py: the layer/C rule set beside the metadata's verdict."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from pipeline.config import load_recipe
from pipeline.select import stage as select
from tests.factories import ACCENTS, NOISES, fake_scored_set

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "selector_layers.py"


def load_script():
    spec = importlib.util.spec_from_file_location("selector_layers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_rule_finds_the_layer_that_holds_the_condition(write_recipe, tmp_path, capsys):
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(120)]
    pool = pool[:-90]  # the recipe's target condition (caribbean in white noise): 30 rows
    target = [("caribbean", NOISES[2])] * 40
    root = tmp_path / "data"
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", target, np.random.default_rng(1))
    rng = np.random.default_rng(2)
    for name in ("pool", "target"):  # layer 1 holds the groups, layers 0 and 2 are noise
        path = root / "score" / name / "embeddings.npy"
        emb = np.load(path).astype(np.float32)
        noise = rng.normal(size=(len(emb), 2, emb.shape[1])).astype(np.float32)
        np.save(path, np.stack([noise[:, 0], emb, noise[:, 1]], axis=1).astype(np.float16))
    recipe_path = write_recipe({"select": {"folds": 3}})
    recipe = load_recipe(recipe_path)
    out = tmp_path / "layers.json"
    results = load_script().main([str(recipe_path), "--conditions", "2", "--out", str(out)])[
        "results"
    ]
    assert out.exists() and len(results) == 3
    first = results[0]
    assert first["condition"] == "the recipe's target"
    assert first["pool_share"] == 30 / len(pool)
    assert len(first["candidates"]) == 9
    for r in results:  # the log loss picks the informative layer, which concentrates the mass
        assert r["chosen"]["layer"] == 1
        assert r["chosen"]["mass_share"] > 5 * r["pool_share"]
        assert r["chosen"]["mass_share"] > 2 * r["old_default"]["mass_share"]
    # held-out conditions are noisy (accent, noise) groups, not the clean ones
    assert all("clean" not in r["condition"] for r in results[1:])
    assert "| the recipe's target |" in capsys.readouterr().out
    # on the recipe's target the script's folds are select's: the same choice, the same loss
    select.run(recipe)
    chosen = json.loads((root / "select" / "rsft" / "diagnostics.json").read_text())
    chosen = chosen["estimators"]["classifier"]
    assert (chosen["layer"], chosen["C"]) == (first["chosen"]["layer"], first["chosen"]["C"])
    assert chosen["log_loss"] == first["chosen"]["log_loss"]
