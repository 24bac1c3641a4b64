"""One user's adapter: their own unlabelled recordings adapt the shared recogniser to their
voice and room, as a small LoRA adapter saved on its own.

``rsft personalise RECIPE RECORDINGS --user NAME`` takes a personalisation recipe (e.g.
recipes/personal.yaml) and a folder of the user's recordings (any audio files; no transcripts)
and runs it for that user under ``data/<recipe name>-<user>/``: the folder becomes the target
sample (select.target), the recipe's sets named ``user_*`` (its own example user's target
and test prompts) are left out, and make demo's quick arms run: prepare, score (with the
pseudo-labels of the recordings), select, fine-tune (LoRA) and evaluate. The adapter is
``finetune/<arm>/model/adapter``; ``model.adapter`` reads the shared model with it, and
without it the model is the shared one, unchanged for every other user.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from pipeline import experiment, layout
from pipeline.config import Recipe, build_recipe, read_recipe
from pipeline.errors import RecipeError, UserError

log = logging.getLogger(__name__)

USER_SETS = "user_"  # a personalisation recipe's sets of its own example user


def personal_recipe(path: str | Path, recordings: str | Path, user: str, overrides=()) -> Recipe:
    """The recipe at ``path`` for one user whose recordings are the folder ``recordings``."""
    layout.check_name(user, "user")
    folder = Path(recordings).expanduser()
    if not folder.is_dir():
        raise UserError(f"recordings: not a folder: {folder}")
    data = copy.deepcopy(read_recipe(path))
    target = data.get("select", {}).get("target", "target")
    sets = data.get("prepare", {}).get("sets", [])
    found = [s for s in sets if s.get("name") == target]
    if not found:
        raise RecipeError(f"{path}: no set {target!r} (select.target) to take the recordings")
    found[0]["source"] = {"kind": "local", "path": str(folder.resolve())}
    found[0].pop("noise", None)  # the recordings are as the user's room made them
    data["prepare"]["sets"] = [s for s in sets if not str(s.get("name")).startswith(USER_SETS)]
    data["name"] = f"{data.get('name', 'personal')}-{user}"
    data.pop("data_dir", None)
    return build_recipe(data, overrides)


def run(path: str | Path, recordings: str | Path, user: str, overrides=()) -> dict:
    """Adapt to one user (module docstring); return the report's results."""
    recipe = personal_recipe(path, recordings, user, overrides)
    if recipe.finetune.train != "lora":
        log.warning("personalise: finetune.train is %r: no adapter is saved", recipe.finetune.train)
    results = experiment.run_all(recipe, quick=True)
    for arm in experiment.plan(recipe, quick=True):
        adapter = recipe.tree.model(arm.name(recipe)) / "adapter"
        if adapter.is_dir():
            print(f"{user}'s adapter: {adapter} (read with --set model.adapter={adapter})")
    return results
