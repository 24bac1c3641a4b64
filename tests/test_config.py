import dataclasses
import subprocess
import sys

import pytest

from pipeline.config import LocalSource, SynthSource, apply_override, load_recipe
from pipeline.errors import RecipeError

DEMO = "recipes/demo.yaml"


def test_demo_recipe_loads_into_frozen_typed_config():
    recipe = load_recipe(DEMO)
    assert recipe.name == "demo"
    pool = recipe.prepare.sets[0]
    assert isinstance(pool.source, SynthSource)
    assert pool.source.parts[2].noise.snr_db == (20.0, 10.0, 5.0, 0.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.prepare.workers = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"prepare": {"wrokers": 2}}, "prepare.wrokers: unknown key"),
        ({"prepare": {"workers": "two"}}, "prepare.workers: expected an integer"),
        ({"prepare": {"workers": True}}, "prepare.workers: expected an integer"),
        (
            {"prepare": {"sets": [{"name": "a", "split": "pool", "source": {"kind": "nope"}}]}},
            "prepare.sets[0].source.kind: 'nope' is not one of",
        ),
        (
            {
                "prepare": {
                    "sets": [{"name": "a", "split": "train", "source": {"kind": "asterisk"}}]
                }
            },
            "prepare.sets[0].split: 'train' is not one of",
        ),
        (
            {
                "prepare": {
                    "sets": [
                        {
                            "name": "a",
                            "split": "pool",
                            "source": {"kind": "synth", "parts": [{"count": 1}]},
                        }
                    ]
                }
            },
            "prepare.sets[0].source.parts[0].voices: missing required key",
        ),
        (
            {
                "prepare": {
                    "sets": [
                        {
                            "name": "a",
                            "split": "pool",
                            "source": {"kind": "local", "path": "/no/such/dir"},
                        }
                    ]
                }
            },
            "prepare.sets[0].source.path: no such file or directory: /no/such/dir",
        ),
        ({"prepare": {"noise_regions": {"test": [0.5, 0.2]}}}, "prepare.noise_regions.test"),
    ],
)
def test_recipe_errors_name_the_key(write_recipe, data, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_recipe(write_recipe(data))


def test_missing_recipe_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_overrides_reach_any_field_by_index_or_name():
    recipe = load_recipe(
        DEMO,
        [
            "prepare.workers=1",
            "prepare.sets.pool.source.parts.0.count=7",
            "prepare.sets.3.noise.snr_db=[5]",
            "seed=3",
        ],
    )
    assert recipe.prepare.workers == 1 and recipe.seed == 3
    assert recipe.prepare.sets[0].source.parts[0].count == 7
    assert recipe.prepare.sets[3].noise.snr_db == (5.0,)
    with pytest.raises(RecipeError, match="no item named 'nope'"):
        load_recipe(DEMO, ["prepare.sets.nope.split=test"])
    with pytest.raises(RecipeError, match="prepare.workerz: unknown key"):
        load_recipe(DEMO, ["prepare.workerz=1"])


def test_override_does_not_touch_the_input():
    data = {"prepare": {"workers": 2}}
    assert apply_override(data, "prepare.workers=1") == {"prepare": {"workers": 1}}
    assert data == {"prepare": {"workers": 2}}


def test_local_source_path_must_exist(tmp_path, write_recipe):
    (tmp_path / "corpus").mkdir()
    recipe = load_recipe(
        write_recipe(
            {
                "prepare": {
                    "sets": [
                        {
                            "name": "a",
                            "split": "test",
                            "source": {"kind": "local", "path": str(tmp_path / "corpus")},
                        }
                    ]
                }
            }
        )
    )
    assert isinstance(recipe.prepare.sets[0].source, LocalSource)


def test_cli_reports_user_errors_in_one_line(write_recipe):
    path = write_recipe({"prepare": {"colour": "red"}})
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "prepare", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "rsft prepare: error: prepare.colour: unknown key (known keys: "
        "max_duration_s, min_duration_s, noise_files, noise_regions, noise_sources, "
        "sample_rate, sets, sonic_pi_dir, workers)"
    ]


def test_exponent_without_a_dot_is_a_number(write_recipe):
    # YAML 1.1 reads 5e-4 as a string; a float field takes it as the number it means
    recipe = load_recipe(write_recipe({}), ["finetune.lr=5e-4"])
    assert recipe.finetune.lr == 5e-4
    with pytest.raises(RecipeError, match="finetune.lr: expected a number"):
        load_recipe(write_recipe({}), ["finetune.lr=fast"])


def test_a_bare_no_is_the_choice_no_not_false():
    # YAML 1.1 reads `no` as false; `mixed_precision: no` means fp32
    assert load_recipe(DEMO, ["finetune.mixed_precision=no"]).finetune.mixed_precision == "no"
    with pytest.raises(RecipeError, match="mixed_precision: True is not one of"):
        load_recipe(DEMO, ["finetune.mixed_precision=yes"])
    # model.bf16: 'auto' (the default) or a yes/no
    assert load_recipe(DEMO).model.bf16 == "auto"
    assert load_recipe(DEMO, ["model.bf16=false"]).model.bf16 is False
    assert load_recipe(DEMO, ["model.bf16=no"]).model.bf16 is False
    assert load_recipe(DEMO, ["model.bf16=true"]).model.bf16 is True
    with pytest.raises(RecipeError, match="model.bf16"):
        load_recipe(DEMO, ["model.bf16=fast"])
    with pytest.raises(RecipeError, match="model.loop_repeats: 0"):
        load_recipe(DEMO, ["model.loop_repeats=1"])
