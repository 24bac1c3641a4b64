"""rsft personalise: a folder of one user's recordings takes the place of the example user."""

import pytest

from pipeline import personal
from pipeline.cli import main
from pipeline.errors import UserError

RECIPE = "recipes/personal.yaml"


def test_the_users_folder_becomes_the_target_and_the_example_users_sets_go(tmp_path):
    folder = tmp_path / "alice"
    folder.mkdir()
    recipe = personal.personal_recipe(RECIPE, folder, "alice", ["finetune.steps=5"])
    sets = {s.name: s for s in recipe.prepare.sets}
    assert sets["target"].source.kind == "local" and sets["target"].source.path == str(folder)
    assert sets["target"].noise is None  # the recordings are as the room made them
    assert not any(name.startswith("user_") for name in sets)
    assert {"pool", "augmented", "others_clean"} <= set(sets)
    assert recipe.name == "personal-alice" and str(recipe.root) == "data/personal-alice"
    assert recipe.finetune.train == "lora" and recipe.finetune.steps == 5
    assert recipe.select.pseudo_labels and recipe.select.augment_set == "augmented"


def test_personalise_refuses_a_bad_user_name_or_a_missing_folder(tmp_path, capsys):
    with pytest.raises(UserError, match="user '../x'"):
        personal.personal_recipe(RECIPE, tmp_path, "../x")
    with pytest.raises(SystemExit) as exit_info:
        main(["personalise", RECIPE, str(tmp_path / "absent"), "--user", "bob"])
    assert exit_info.value.code == 2
    assert "recordings: not a folder" in capsys.readouterr().err
