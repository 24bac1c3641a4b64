"""The evaluate stage and compare, on prepared real prompts, with a tiny model and the real one."""

import json
from dataclasses import replace

import jiwer
import numpy as np
import pandas as pd
import pytest

from pipeline import audio, cli, manifest, text
from pipeline.audio import SAMPLE_RATE
from pipeline.config import ModelConfig, load_recipe
from pipeline.errors import UserError
from pipeline.evaluate import stage as evaluate
from pipeline.evaluate.compare import changes, compare
from pipeline.models import loader
from pipeline.models.whisper import Whisper
from pipeline.prepare import stage as prepare
from tests.factories import dummy_row

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
    assert result["language"] == "en"
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
    # reading one set alone does not read it again: the other sets are not in its key
    alone = replace(prepared, evaluate=replace(prepared.evaluate, sets=("ast",)))
    evaluate.run(alone, str(tiny_whisper_dir), "tiny")
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
    same = compare(run, run, n_boot=200)
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
    model = loader.load(ModelConfig(name=str(tiny_whisper_dir)), prepared.tree.models)
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
    compared = compare(out, prepared.root / "evaluate" / "pretrained", n_boot=200)
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
    changed = changes(a, b, "set", top=5)
    assert changed["id"].tolist() == ["u3", "u1", "u2"]  # worst loss first, then gains
    assert changed["delta"].tolist() == [3, 1, -1]
    printed = capsys.readouterr().out
    assert "errors 1 (A) -> 4 (B); 2 worse in B, 1 better" in printed
    assert "B   the town" in printed and "u4" not in printed
    with pytest.raises(UserError, match="no .*utterances.parquet"):
        changes(a, b, "missing")
    cli.main(["compare", str(a), str(b), "--bootstrap", "50", "--changes", "set", "--top", "1"])
    printed = capsys.readouterr().out
    assert "+3 u3" in printed and "-1 u2" in printed and "u1" not in printed  # one each way


# Two groups (accent) of three commands; with 14 s of silence between packed utterances, two
# of these fit a 30 s window, so each group reads as one window of two and one window of one
PACKED_TEXTS = {
    "us": ["Turn on the lights.", "What time is it?", "Play some music"],
    "caribbean": ["Set a timer for ten minutes", "Call mum", "Stop!"],
}
PACK_GAP_S = 14.0


@pytest.fixture
def scripted_packing(tmp_path, tiny_whisper_dir, write_recipe, monkeypatch):
    """Read six commands in packed windows as the evaluate stage does, each window's
    transcript written by ``script(its members' raw references, joined)``: the real packing
    and cutting around a scripted ``transcribe_joined``. Returns a reader of a script, which
    gives (wer.json content, [(window's member ids, its transcript)], utterances.parquet).

    The audio is noise of a distinct length per utterance (the transcripts are scripted, so
    the sound does not matter): a window's members are known by the lengths of its spans."""
    rows, by_samples, rng = [], {}, np.random.default_rng(0)
    said = [(accent, line) for accent, lines in PACKED_TEXTS.items() for line in lines]
    for i, (accent, line) in enumerate(said):
        wave = 0.01 * rng.standard_normal(int((1 + 0.1 * i) * SAMPLE_RATE)).astype(np.float32)
        path = tmp_path / "audio" / f"u{i}.flac"
        audio.write_flac(path, wave)
        duration_s = len(wave) / SAMPLE_RATE
        rows.append(dummy_row(i, str(path), text=line, accent=accent, duration_s=duration_s))
        by_samples[len(wave)] = rows[-1]
    frame = manifest.to_frame(rows)
    cfg = ModelConfig(name=str(tiny_whisper_dir), layout="packed", pack_gap_s=PACK_GAP_S)
    model = loader.load(cfg, tmp_path / "models")
    recipe = load_recipe(write_recipe({"evaluate": {"bootstrap": 50}}))

    def read(script):
        windows = []

        def transcribe_joined(packed):
            transcripts = []
            for window in packed:
                lengths = [round((end - start) * SAMPLE_RATE) for start, end in window.spans]
                members = [by_samples[n] for n in lengths]
                transcripts.append(script(" ".join(row["text"] for row in members)))
                windows.append(([row["id"] for row in members], transcripts[-1]))
            return transcripts

        monkeypatch.setattr(model, "transcribe_joined", transcribe_joined)
        out = tmp_path / "evaluate" / "set"
        result = evaluate.evaluate_set(model, 2, frame, recipe, out)  # two windows a batch
        return result, windows, pd.read_parquet(out / "utterances.parquet").set_index("id")

    return read


def garble(said: str) -> str:
    """A transcript with every kind of error: a word inserted before the first, every fourth
    word deleted, every fourth substituted, words inserted after others, one at the end."""
    out = ["Um,"]
    for k, word in enumerate(said.split()):
        if k % 4 == 1:
            continue
        out += ["X" if k % 4 == 2 else word] + (["again"] if k % 4 == 3 else [])
    return " ".join(out + ["Thanks!"])


def test_packed_pieces_give_back_each_windows_transcript(scripted_packing):
    result, windows, per = scripted_packing(garble)
    # every utterance is read in exactly one window, and the stage's windows are the plan's
    ids = [i for members, _ in windows for i in members]
    assert sorted(ids) == sorted(per.index) and len(ids) == len(set(ids)) == 6
    assert sorted(len(members) for members, _ in windows) == [1, 1, 2, 2]
    for members, transcript in windows:
        pieces = " ".join(per.loc[members, "hypothesis_norm"]).split()
        assert pieces == text.normalize(transcript).split()  # nothing lost, moved or doubled
    assert result["utterances"] == 6 and not result["rejects"]


def test_packed_transcript_of_the_references_gives_each_utterance_its_own(scripted_packing):
    result, windows, per = scripted_packing(lambda said: said)
    # each utterance's piece is its own reference, word for word
    assert per["hypothesis_norm"].tolist() == text.normalize_batch(per["text"])
    assert per["errors"].sum() == 0 and result["wer"] == 0
    assert any(len(members) == 2 for members, _ in windows)  # a window was cut


def test_packed_group_wer_is_the_joined_transcripts_wer(scripted_packing):
    """Long-form scoring: a group's WER from the pieces is that of each window's transcript
    against its references joined, errors and reference words summed over the windows."""
    result, windows, per = scripted_packing(garble)
    errors, words = {}, {}
    for members, transcript in windows:
        (group,) = set(per.loc[members, "accent"])
        refs = " ".join(text.normalize(per.loc[i, "text"]) for i in members)
        joined = jiwer.process_words(refs, text.normalize(transcript))
        found = joined.substitutions + joined.deletions + joined.insertions
        errors[group] = errors.get(group, 0) + found
        words[group] = words.get(group, 0) + len(refs.split())
    groups = pd.DataFrame(result["groups"]).set_index("accent")
    assert sorted(groups.index) == sorted(PACKED_TEXTS)
    for group in PACKED_TEXTS:
        assert groups.loc[group, "errors"] == errors[group] > 0
        assert groups.loc[group, "ref_words"] == words[group]
        assert groups.loc[group, "wer"] == pytest.approx(errors[group] / words[group])
    assert result["wer"] == pytest.approx(sum(errors.values()) / sum(words.values()))
