"""Every recipe loads; each real-corpus recipe prepares a miniature copy of its corpus.

The miniatures (tests/corpus_fixtures.py) keep each corpus's real layout and schema; the
recipes run exactly as written except for the paths, URLs and checksums that point at them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import manifest
from pipeline.config import load_recipe
from pipeline.fsio import file_sha256
from pipeline.prepare import stage as prepare
from pipeline.prepare.corpora.base import bucket
from pipeline.prepare.corpora.l2arctic import SPEAKER_L1
from tests import corpus_fixtures as fixtures

RECIPES = sorted(Path("recipes").glob("*.yaml"))
REAL = ("librispeech_noise", "edacc", "commonvoice_accents", "l2arctic")

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads_and_names_its_sets(path):
    recipe = load_recipe(path)
    splits = {s.name: s.split for s in recipe.prepare.sets}
    assert splits.get(recipe.select.pool) == "pool"
    if recipe.select.target:
        assert splits.get(recipe.select.target) == "target"
    assert set(recipe.finetune.eval_sets) <= {n for n, s in splits.items() if s == "dev"}
    assert "test" in splits.values()


def test_the_real_corpus_recipes_are_there():
    assert set(REAL) <= {p.stem for p in RECIPES}


def prepare_recipe(name: str, tmp_path: Path, overrides: list[str]) -> dict[str, pd.DataFrame]:
    """Run the recipe's prepare stage with ``overrides``; return its manifests by set."""
    recipe = load_recipe(
        f"recipes/{name}.yaml",
        [f"data_dir={tmp_path / 'data'}", "prepare.workers=2", *overrides],  # 2 cores here
    )
    prepare.run(recipe)
    return {s.name: manifest.read(recipe.tree.manifest(s.name)) for s in recipe.prepare.sets}


def rejects(tmp_path: Path, set_name: str) -> dict[str, str]:
    table = tmp_path / "data" / "prepare" / "rejects" / f"{set_name}.tsv"
    return dict(pd.read_csv(table, sep="\t")[["id", "reason"]].itertuples(index=False))


def test_librispeech_noise(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    archives = {
        "pool": fixtures.librispeech_archive(served, "train-clean-100", 3, 3),
        "dev": fixtures.librispeech_archive(served, "dev-clean", 8, 4),
        "test": fixtures.librispeech_archive(served, "test-clean", 2, 2),
    }
    musan = fixtures.musan_archive(served)
    which = {"pool": "pool", "target": "dev", "dev_target": "dev"}
    which |= {"test_target": "test", "test_noisy": "test"}
    overrides = [f"prepare.noise_sources.musan.url={musan.as_uri()}"]
    overrides += [f"prepare.noise_sources.musan.sha256={file_sha256(musan)}"]
    for set_name, archive in which.items():
        overrides += [
            f"prepare.sets.{set_name}.source.url={archives[archive].as_uri()}",
            f"prepare.sets.{set_name}.source.sha256={file_sha256(archives[archive])}",
        ]
    sets = prepare_recipe("librispeech_noise", tmp_path, overrides)

    pool = sets["pool"]
    assert len(pool) == 18 and (pool["noise"] == "clean").sum() == 9  # each clean + one copy
    noisy = pool[pool["noise"] != "clean"]
    assert set(noisy["noise"]) <= {"musan", "babble", "white"} and len(set(noisy["noise"])) > 1
    assert set(noisy["snr_db"]) <= {20.0, 10.0, 5.0, 0.0}
    assert pool["text"].iloc[0] == "TURN ON THE KITCHEN LIGHTS" and set(pool["source"]) == {
        "openslr"
    }
    target, dev = sets["target"], sets["dev_target"]
    assert len(target) and len(dev) and set(target["split"]) == {"target"}
    for frame in (target, dev, sets["test_target"]):
        assert set(frame["noise"]) == {"musan"} and set(frame["snr_db"]) <= {5.0, 0.0}
    assert all(bucket("speaker", s) < 0.5 for s in target["speaker"])
    assert not set(target["speaker"]) & set(dev["speaker"])  # held-out speakers for dev
    test_noisy = sets["test_noisy"]
    assert len(test_noisy) == 4 * 5 and test_noisy["snr_db"].isna().sum() == 4
    assert set(test_noisy["snr_db"].dropna()) == {20.0, 10.0, 5.0, 0.0}
    assert len(sets["test_target"]) == 4 * 2
    # MUSAN came down once, into the recipe's noise_sources folder, noise part only used
    extracted = tmp_path / "data" / "noise_sources" / "musan" / "extracted" / "musan"
    assert (extracted / "noise" / "sound-bible").is_dir()
    assert np.all(test_noisy["duration_s"] > 0.5)


def test_edacc(tmp_path):
    hub_copy = fixtures.edacc_parquet(tmp_path / "edacc")
    names = ("pool", "target", "dev_target", "test_target", "test_clean")
    sets = prepare_recipe(
        "edacc", tmp_path, [f"prepare.sets.{n}.source.dataset={hub_copy}" for n in names]
    )
    targets = {"Nigerian English", "Kenyan English", "Jamaican English"}
    pool, target, dev = sets["pool"], sets["target"], sets["dev_target"]
    assert set(pool["accent"]) == set(fixtures.EDACC_ACCENTS)
    assert len(target) and set(target["accent"]) <= targets
    assert not set(pool["id"]) & set(target["id"])  # the pool never holds a target segment
    assert len(dev) and set(dev["split"]) == {"dev"} and set(dev["accent"]) <= targets
    tests = set(sets["test_clean"]["speaker"])
    speakers = [set(pool["speaker"]), set(target["speaker"]), set(dev["speaker"]), tests]
    for i, a in enumerate(speakers):  # no speaker in two sets
        assert all(not a & b for b in speakers[i + 1 :]), i
    assert all(bucket("speaker", s) < 0.2 for s in target["speaker"])
    assert set(sets["test_clean"]["accent"]) == set(fixtures.EDACC_ACCENTS)
    assert set(sets["test_target"]["accent"]) == targets
    assert set(sets["test_target"]["id"]) < set(sets["test_clean"]["id"])
    assert pool["speaker"].str.fullmatch(r"EDACC-C\d\d-[AB]").all()
    tagged = pool[pool["text"].str.startswith("<breath>")]
    assert len(tagged) and tagged["text"].str.endswith("<laugh>").all()  # kept as written
    # the IGNORE segment and the tag-only one are rejected in whichever set holds them
    reasons = (
        rejects(tmp_path, "pool") | rejects(tmp_path, "target") | rejects(tmp_path, "dev_target")
    )
    assert sorted(r.split(":")[0].split(" (")[0] for r in reasons.values()) == [
        "no words",
        "segment excluded from scoring",
    ]


def test_commonvoice_accents(tmp_path):
    en = fixtures.commonvoice_release(tmp_path / "cv", train=60, dev=24, test=12)
    names = ("pool", "target", "dev_target", "test_target", "test_clean")
    sets = prepare_recipe(
        "commonvoice_accents", tmp_path, [f"prepare.sets.{n}.source.path={en}" for n in names]
    )
    train_ids = {
        line.split("\t")[1][:-4] for line in (en / "train.tsv").read_text().splitlines()[1:]
    }
    pool = sets["pool"]
    assert 1 <= len(pool) <= 15 and set(pool["id"]) <= train_ids  # a fixed tenth of train
    target, dev = sets["target"], sets["dev_target"]
    assert len(target) and len(dev) and not set(target["id"]) & set(dev["id"])
    for frame in (target, dev, sets["test_target"]):
        assert set(frame["accent"]) == {fixtures.INDIA}
    assert set(sets["test_clean"]["accent"]) == {
        fixtures.INDIA,
        "United States English",
        "England English",
        "German English",
        "unknown",
    }
    row = sets["test_clean"].iloc[0]
    assert row["audio_path"].endswith(".flac") and row["text"].endswith(".")
    assert abs(row["duration_s"] - 1.59) < 0.05  # MP3 decoded, 16 kHz FLAC written


def test_l2arctic(tmp_path):
    root = fixtures.l2arctic_folder(tmp_path / "l2arctic")
    names = ("pool", "target", "dev_target", "test_target", "test_clean")
    sets = prepare_recipe(
        "l2arctic", tmp_path, [f"prepare.sets.{n}.source.path={root}" for n in names]
    )
    pool = sets["pool"]
    assert set(pool["speaker"]) == {
        *("ABA", "SKA", "BWC", "LXC", "ASI", "SVBI", "HJK", "HKK", "EBVS", "MBMPS", "HQTV")
    }
    assert len(pool) == 11 * 6 - 1 and pool["id"].str.contains("_arctic_a").all()
    assert rejects(tmp_path, "pool") == {
        "ABA_arctic_a0002": "audio file missing: ABA/wav/arctic_a0002.wav"
    }
    assert all(SPEAKER_L1[s] == a for s, a in zip(pool["speaker"], pool["accent"], strict=True))
    target = sets["target"]
    assert len(target) and set(target["speaker"]) == {"PNV"} and set(target["split"]) == {"target"}
    assert list(sets["dev_target"]["id"]) == ["PNV_arctic_b0001", "PNV_arctic_b0002"]
    assert set(sets["test_target"]["speaker"]) == {"THV", "TLV"}
    test = sets["test_clean"]
    assert len(test) == 12 * 2 and test["id"].str.contains("_arctic_b").all()
    assert test.groupby("accent")["speaker"].nunique().to_dict() == dict.fromkeys(
        ("arabic", "hindi", "korean", "mandarin", "spanish", "vietnamese"), 2
    )
    assert not set(test["speaker"]) & (set(pool["speaker"]) | set(target["speaker"]))
    assert test["audio_path"].str.endswith(".flac").all()  # 44.1 kHz resampled to 16 kHz


def test_spanish_latam_prepares_in_miniature(tmp_path):
    """The Spanish recipe as written, every set cut to a few utterances: Spanish text in the
    two voices, the target condition in a room and noise, real es-MX prompts clean and in
    the target condition, test rooms apart from the pool's."""
    counts = {"pool": [4, 2, 2, 2, 3], "target": [3], "dev_target": [2], "test_target": [3]}
    overrides = [
        f"prepare.sets.{name}.source.parts.{i}.count={n}"
        for name, ns in counts.items()
        for i, n in enumerate(ns)
    ]
    overrides += [f"prepare.sets.{s}.source.limit=4" for s in ("asterisk_guard", "asterisk_test")]
    overrides += ["prepare.sets.asterisk_target.source.limit=4"]
    recipe = load_recipe("recipes/spanish_latam.yaml")
    assert (recipe.model.name, recipe.model.language) == ("bundled:whisper-base", "es")
    assert recipe.evaluate.strip_diacritics
    sets = prepare_recipe("spanish_latam", tmp_path, overrides)
    pool = sets["pool"]
    assert len(pool) == 13 and set(pool["accent"]) == {"es", "es_latam"}
    assert pool["text"].str.contains(r"[áéíóúñ¿¡]").any()  # fortunes-es, accents kept
    in_target = pool["id"].str.startswith("pool-p4-")
    assert pool.loc[in_target, "room"].notna().all() and pool.loc[in_target, "rt60_s"].ge(0.5).all()
    assert set(pool.loc[in_target, "noise"]) <= {"babble", "3d_printer"}
    for name in ("target", "test_target", "asterisk_target"):
        frame = sets[name]
        assert frame["room"].notna().all() and set(frame["snr_db"]) <= {10.0, 5.0}, name
    assert set(sets["test_target"]["room"]).isdisjoint(pool["room"].dropna())
    assert set(sets["asterisk_test"]["accent"]) == {"mx"} and "room" not in sets["asterisk_test"]
    texts = {name: set(frame["text"]) for name, frame in sets.items() if name != "pool"}
    assert not set(pool["text"]) & (texts["target"] | texts["dev_target"] | texts["test_target"])


def test_portuguese_br_prepares_in_miniature(tmp_path):
    """The Portuguese recipe as written, every set cut to a few utterances: Brazilian
    Portuguese text in the two voices, the target condition in a small room and noise, test
    rooms apart from the pool's, and European Portuguese clean as the forgetting check."""
    counts = {
        "pool": [3, 2, 2, 2, 3],
        "target": [3],
        "dev_target": [2],
        "test_target": [3],
        "test_clean": [2],
    }
    overrides = [
        f"prepare.sets.{name}.source.parts.{i}.count={n}"
        for name, ns in counts.items()
        for i, n in enumerate(ns)
    ]
    recipe = load_recipe("recipes/portuguese_br.yaml")
    assert (recipe.model.name, recipe.model.language) == ("bundled:whisper-base", "pt")
    sets = prepare_recipe("portuguese_br", tmp_path, overrides)
    pool = sets["pool"]
    assert len(pool) == 12 and set(pool["accent"]) == {"pt", "pt_br"}
    assert pool["text"].str.contains(r"[ãõçáéíóúâêô]").any()  # fortunes-br, accents kept
    in_target = pool["id"].str.startswith("pool-p4-")
    assert set(pool.loc[in_target, "accent"]) == {"pt_br"}
    assert pool.loc[in_target, "room"].notna().all() and pool.loc[in_target, "rt60_s"].le(0.6).all()
    assert set(pool.loc[in_target, "noise"]) <= {"safari", "pink"}
    for name in ("target", "dev_target", "test_target"):
        frame = sets[name]
        assert frame["room"].notna().all() and set(frame["snr_db"]) <= {10.0, 5.0}, name
    assert set(sets["test_target"]["room"]).isdisjoint(pool["room"].dropna())
    assert set(sets["test_clean"]["accent"]) == {"pt"} and "room" not in sets["test_clean"]
    texts = {name: set(frame["text"]) for name, frame in sets.items() if name != "pool"}
    assert not set(pool["text"]) & (texts["target"] | texts["dev_target"] | texts["test_target"])
