"""The README's guide to a user's own recordings runs as written, from recipe to report."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import yaml

from pipeline import experiment
from pipeline.config import load_recipe
from tests.factories import speak

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = [
    "turn on the kitchen lights",
    "what is the weather tomorrow",
    "play some jazz in the bedroom",
    "set an alarm for seven",
    "call my sister",
    "turn the heating down",
]

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")


def guide_recipe() -> dict:
    """The YAML recipe of the README's section on a user's own recordings."""
    text = README.read_text()
    section = text[text.index("## Using your own recordings") :]
    section = section[: section.index("\n## ", 1)]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S)[1])


def recordings(folder: Path, voices: list[str], per_voice: int, labelled: bool) -> None:
    """A folder of FLAC recordings and its transcript table, as a user would bring them."""
    folder.mkdir(parents=True)
    rows = ["path\ttext\tspeaker\taccent" if labelled else "path"]
    for v, voice in enumerate(voices):
        for k in range(per_voice):
            text = COMMANDS[(k + v) % len(COMMANDS)]
            wave, rate = speak(text, voice)
            name = f"{voice}-{k}.flac"
            sf.write(folder / name, wave, rate)
            rows.append(f"{name}\t{text}\t{voice}{k % 2}\t{voice}" if labelled else name)
    (folder / "transcripts.tsv").write_text("\n".join(rows) + "\n")


def test_own_recordings_go_from_recipe_to_report(tmp_path, tiny_whisper_dir):
    data = guide_recipe()
    assert data["name"] == "mine"
    folders = {}
    for spec in data["prepare"]["sets"]:
        source = spec["source"]
        assert source["kind"] == "local" and source["path"].startswith("/srv/speech/")
        folder = tmp_path / "speech" / Path(source["path"]).name
        voices = ["en-gb-scotland"] if spec["split"] in ("target", "test") else ["en-us", "en-gb"]
        if spec["name"] == "test_clean":
            voices = ["en-us"]
        count = {"test": 3, "target": 20}.get(spec["split"], 8)  # 20: select's smallest target
        recordings(folder, voices, count, spec["split"] != "target")
        source["path"] = str(folder)
        folders[spec["name"]] = folder
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data))
    # the guide's recipe as written, made small enough for a test: a tiny model, few steps
    overrides = [
        f"data_dir={tmp_path / 'data'}",
        f"model.name={tiny_whisper_dir}",
        "select.budget=6",
        "select.folds=2",
        "finetune.steps=2",
        "finetune.batch_size=3",
        "finetune.warmup_steps=1",
        "report.bootstrap=20",
    ]
    recipe = load_recipe(path, overrides)
    experiment.run_all(recipe, quick=True)
    tree = recipe.tree
    target = (tree.manifests / "target.parquet").exists()
    assert target and (tree.select / "rsft" / "subset.parquet").exists()
    assert (tree.report / "report.html").stat().st_size > 1000
    results = json.loads((tree.report / "results.json").read_text())
    systems = {row["system"] for row in results["systems"]}
    assert {"pretrained", "rsft", "random"} <= systems
    assert {row["layout"] for row in results["systems"]} == {"standard"}
    assert not results["layout_mismatch"]
    for run in ("pretrained", "rsft", "random"):
        assert (tree.evaluate(run) / "test_target" / "wer.json").exists(), run
