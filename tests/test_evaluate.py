"""The evaluate stage and compare, on prepared real prompts, with a tiny model and the real one."""

import json
from dataclasses import replace

import pandas as pd
import pytest

from pipeline import audio, cli, evaluate, prepare
from pipeline.config import ModelConfig, load_recipe
from pipeline.errors import UserError
from pipeline.models import loader
from pipeline.models.whisper import Whisper

RECIPE = {
    "prepare": {
        "workers": 1,
        "sets": [
            {
                "name": "ast",
                "split": "test",
                "source": {"kind": "asterisk", "part": "test", "limit": 8},
            },
            {
                "name": "cmd",
                "split": "test",
                "source": {
                    "kind": "synth",
                    "text_split": "test",
                    "speaker_split": "test",
                    "parts": [{"count": 4, "voices": ["us", "caribbean"]}],
                },
                "noise": {"types": ["white"], "snr_db": [10], "keep_clean": True, "region": "test"},
            },
        ],
    },
    "evaluate": {"bootstrap": 200},
}


@pytest.fixture
def prepared(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "MODELS_DIR", tmp_path / "models")
    path = write_recipe(RECIPE)
    recipe = load_recipe(path)
    prepare.run(recipe)
    return recipe


def test_evaluate_writes_tables_skips_bad_audio_and_reuses_results(
    prepared, tiny_whisper_dir, monkeypatch
):
    cmd = pd.read_parquet(prepared.root / "prepare" / "manifests" / "cmd.parquet")
    victim = prepared.root / "prepare" / "manifests" / cmd["audio_path"].iloc[0]
    victim.write_bytes(b"not audio any more")
    table = evaluate.run(prepared, str(tiny_whisper_dir), "tiny")
    assert set(table["set"]) == {"ast", "cmd"}
    out = prepared.root / "evaluate" / "tiny"
    result = json.loads((out / "cmd" / "wer.json").read_text())
    assert list(result["rejects"]) == [cmd["id"].iloc[0]]
    assert result["utterances"] == len(cmd) - 1
    groups = pd.DataFrame(result["groups"])
    assert set(groups["noise"]) == {"clean", "white"} and groups["utterances"].sum() == len(cmd) - 1
    assert {"model_fingerprint", "recipe", "code_version", "real_time_factor"} <= set(result)
    assert result["peak_rss_mib"] > 100  # torch and the model are resident
    recognitions = pd.read_csv(out / "ast" / "recognitions.tsv", sep="\t")
    assert list(recognitions.columns[:3]) == ["id", "reference", "hypothesis"]
    assert (out / "ast" / "errors.txt").read_text().startswith("===")
    stamp = (out / "ast" / "wer.json").stat().st_mtime_ns
    evaluate.run(prepared, str(tiny_whisper_dir), "tiny")
    assert (out / "ast" / "wer.json").stat().st_mtime_ns == stamp  # unchanged: not decoded again
    # the gap between packed commands does not shape a standard window: not decoded again
    wider = replace(prepared, model=replace(prepared.model, pack_gap_s=0.4))
    evaluate.run(wider, str(tiny_whisper_dir), "tiny")
    assert (out / "ast" / "wer.json").stat().st_mtime_ns == stamp
    monkeypatch.setattr(Whisper, "decoding_revision", Whisper.decoding_revision + 1)
    evaluate.run(prepared, str(tiny_whisper_dir), "tiny")  # decoding changed: decoded again
    assert (out / "ast" / "wer.json").stat().st_mtime_ns != stamp


def test_real_model_baseline_on_real_prompts(prepared):
    only_prompts = replace(prepared, evaluate=replace(prepared.evaluate, sets=("ast",)))
    table = evaluate.run(only_prompts)
    wer = table.set_index("set").loc["ast", "wer"]
    assert wer < 0.15  # tiny.en on clean real telephone prompts
    run = prepared.root / "evaluate" / "pretrained"
    same = evaluate.compare(run, run, n_boot=200)
    assert same["delta"].tolist() == [0.0] and same["p_value"].tolist() == [1.0]


def test_token_nll_scores_the_references_without_decoding_again(prepared, tiny_whisper_dir):
    evaluate.run(prepared, str(tiny_whisper_dir), "tiny")
    out = prepared.root / "evaluate" / "tiny"
    stamp = (out / "ast" / "wer.json").stat().st_mtime_ns
    scored = replace(prepared, evaluate=replace(prepared.evaluate, token_nll=("ast",)))
    table = evaluate.run(scored, str(tiny_whisper_dir), "tiny").set_index("set")
    assert (out / "ast" / "wer.json").stat().st_mtime_ns == stamp  # WER kept: not decoded
    assert not (out / "cmd" / "token_nll.parquet").exists()
    per = pd.read_parquet(out / "ast" / "token_nll.parquet")
    frame = pd.read_parquet(prepared.root / "prepare" / "manifests" / "ast.parquet")
    assert sorted(per["id"]) == sorted(frame["id"])
    # the same as scoring each reference alone with the model's own loss
    model = loader.load(ModelConfig(name=str(tiny_whisper_dir)), evaluate.MODELS_DIR)
    row = frame.iloc[0]
    alone = model.loss([audio.read(frame_path(prepared, row))[0]], [row["text"]])[0]
    got = per.set_index("id").loc[row["id"]]
    assert got["tokens"] == len(model.text_tokens(row["text"]))
    assert got["nll"] == pytest.approx(alone * got["tokens"], rel=1e-4)
    mean = per["nll"].sum() / per["tokens"].sum()
    assert table.loc["ast", "nll_per_token"] == pytest.approx(mean) and mean > 1.0
    nll_stamp = (out / "ast" / "token_nll.json").stat().st_mtime_ns
    evaluate.run(scored, str(tiny_whisper_dir), "tiny")
    assert (out / "ast" / "token_nll.json").stat().st_mtime_ns == nll_stamp  # kept
    # the real model predicts real prompts far better than a random one: B - A < 0
    evaluate.run(replace(scored, evaluate=replace(scored.evaluate, sets=("ast",))))
    compared = evaluate.compare(out, prepared.root / "evaluate" / "pretrained", n_boot=200)
    nll = json.loads((prepared.root / "evaluate" / "pretrained" / "compare-tiny.json").read_text())
    (row,) = nll["token_nll"]
    assert row["set"] == "ast" and row["delta"] < -1.0 and row["p_value"] < 0.05
    assert row["high"] < 0 and row["relative"] < -0.5
    assert set(compared["set"]) == {"ast"}


def frame_path(recipe, row):
    return recipe.root / "prepare" / "manifests" / row["audio_path"]


def test_missing_manifest_is_a_user_error(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe({"evaluate": {"sets": ["nothing"]}}))
    with pytest.raises(UserError, match=r"no manifest .* \(run: rsft prepare first\)"):
        evaluate.run(recipe)


def test_packed_evaluation_cuts_windows_by_their_references(prepared):
    """The real model reads 8 prompts packed into 30 s windows; each window's transcript is
    cut per utterance, and the pieces score about as well as one decode per prompt."""
    ast = replace(prepared.evaluate, sets=("ast", "cmd"))
    packed = replace(prepared, evaluate=ast, model=replace(prepared.model, layout="packed"))
    table = evaluate.run(packed, run_name="packed").set_index("set")
    per = pd.read_parquet(prepared.root / "evaluate" / "packed" / "ast" / "utterances.parquet")
    assert (per["hypothesis_norm"].str.len() > 0).all()  # every prompt got its own words
    assert table.loc["ast", "wer"] < 0.15
    result = json.loads((prepared.root / "evaluate" / "packed" / "cmd" / "wer.json").read_text())
    assert result["utterances"] == 8  # 4 clean + 4 in white noise, packed apart by group


def _run_folder(root, name, rows):
    frame = pd.DataFrame(
        rows, columns=["id", "errors", "ref_words", "reference_norm", "hypothesis_norm"]
    )
    (root / name / "set").mkdir(parents=True)
    frame.to_parquet(root / name / "set" / "utterances.parquet")
    return root / name


# id, reference, (errors, hypothesis) of run A, then of run B
MOVES = [
    ("u1", "the tone", (0, "the tone"), (1, "the town")),
    ("u2", "semicolon", (1, "simi colin"), (0, "semicolon")),
    ("u3", "press star now", (0, "press star now"), (3, "a b c")),
    ("u4", "same", (0, "same"), (0, "same")),
]


def test_changes_lists_the_utterances_that_moved_worst_first(tmp_path, capsys):
    a, b = (
        _run_folder(
            tmp_path,
            name,
            [(i, run[k][0], len(ref.split()), ref, run[k][1]) for i, ref, *run in MOVES],
        )
        for k, name in enumerate("ab")
    )
    changed = evaluate.changes(a, b, "set", top=5)
    assert changed["id"].tolist() == ["u3", "u1", "u2"]  # worst loss first, then gains
    assert changed["delta"].tolist() == [3, 1, -1]
    printed = capsys.readouterr().out
    assert "errors 1 (A) -> 4 (B); 2 worse in B, 1 better" in printed
    assert "B   the town" in printed and "u4" not in printed
    with pytest.raises(UserError, match="no .*utterances.parquet"):
        evaluate.changes(a, b, "missing")
    cli.main(["compare", str(a), str(b), "--bootstrap", "50", "--changes", "set", "--top", "1"])
    printed = capsys.readouterr().out
    assert "+3 u3" in printed and "-1 u2" in printed and "u1" not in printed  # one each way
