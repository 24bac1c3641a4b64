"""Select's output is pinned: a move of code around the data tree must not change a subset.

``tests/data/select_golden.json`` holds, for a fixed scored pool and target (the fixture
below) and the recipe's seed, every method's subset ids and rsft's log-ratios, as select
wrote them before the stages became packages. Regenerate it only for a change that is meant
to change selections: ``python -m tests.test_select_golden``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import manifest
from pipeline.config import load_recipe
from pipeline.layout import SELECTORS
from pipeline.select.generated import GENERATED
from tests.factories import ACCENTS, NOISES, fake_scored_set

GOLDEN = Path(__file__).parent / "data" / "select_golden.json"
# the selectors of a pool and a target alone: no labelled set, no generated data
METHODS = [
    m for m in SELECTORS if m not in ("labelled_target", "rsft_labelled") and m not in GENERATED
]


def scored_recipe(tmp_path: Path):
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(120)][:-100]
    target = [("caribbean", NOISES[2])] * 40
    root = tmp_path / "data"
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", target, np.random.default_rng(1))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "name": "golden",
                "data_dir": str(root),
                "select": {"budget": 50, "folds": 3, "selectors": METHODS},
            }
        )
    )
    return load_recipe(recipe)


def selections(tmp_path: Path) -> dict:
    from pipeline.select import stage as select

    recipe = scored_recipe(tmp_path)
    select.run(recipe)
    out = recipe.root / "select"
    subsets = {}
    for method in METHODS:
        frame = manifest.read(out / method / "subset.parquet")
        counts = frame["count"] if "count" in frame else pd.Series(1, index=frame.index)
        subsets[method] = sorted(f"{i}x{c}" for i, c in zip(frame["id"], counts, strict=True))
    log_w = pd.read_parquet(out / "weights.parquet").sort_values("id")
    return {"subsets": subsets, "log_w": [round(float(v), 6) for v in log_w["log_w"]]}


def test_select_output_is_unchanged(tmp_path):
    golden = json.loads(GOLDEN.read_text())
    now = selections(tmp_path)
    # the ratio is a cross-fitted logistic regression: another CPU's BLAS may differ in the
    # last bits, never by more than this
    np.testing.assert_allclose(now["log_w"], golden["log_w"], rtol=1e-4, atol=1e-4)
    for method in METHODS:
        want, got = set(golden["subsets"][method]), set(now["subsets"][method])
        if method in ("random", "full", "oracle", "wer_filter"):
            assert got == want, method  # no floating point between the seed and the draw
        else:
            # a weight within rounding of a sampling threshold may flip on another CPU
            assert len(got ^ want) <= 2, (method, sorted(got ^ want))


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(selections(Path(tmp)), indent=0) + "\n")
    sys.stdout.write(f"wrote {GOLDEN}\n")
