"""The finetune stage on tiny random models: learning, saving, resume, NaN guard, 2 processes."""

import shutil
import subprocess
import sys

import pandas as pd
import pytest
import torch
import transformers
from safetensors.torch import load_file

from pipeline import audio, cli, finetune, manifest, validation
from pipeline.config import ModelConfig, load_recipe
from pipeline.errors import UserError
from pipeline.models import loader
from tests.factories import dummy_row, speak

TEXTS = ["turn on the lights", "what time is it", "play some music"]


def write_subset(root, name, counts=(1, 2, 1)):
    """A select-stage subset manifest over real espeak-ng speech (``count`` repeats rows)."""
    rows = []
    for i, text in enumerate(TEXTS):
        path = root / "audio" / f"u{i}.flac"
        if not path.exists():
            wave, rate = speak(text)
            audio.write_flac(path, wave, rate)
        rows.append(dummy_row(i, str(path), text=text, duration_s=audio.duration_s(path)))
    frame = manifest.to_frame(rows).assign(count=list(counts))
    manifest.write(frame, root / "select" / name / "subset.parquet", root=root)


@pytest.fixture
def ft_recipe(write_recipe, tmp_path, tiny_whisper_dir):
    """Write a recipe for the tiny Whisper (overrides on top) and the 'rsft' subset."""

    def make(model_dir=tiny_whisper_dir, **finetune_cfg):
        cfg = {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 1, **finetune_cfg}
        path = write_recipe({"model": {"name": str(model_dir)}, "finetune": cfg})
        recipe = load_recipe(path)
        write_subset(recipe.root, "rsft")
        return path, recipe

    return make


def weights(recipe, subset="rsft"):
    return load_file(recipe.root / "finetune" / subset / "model" / "model.safetensors")


def test_loss_falls_and_the_model_loads(ft_recipe):
    _, recipe = ft_recipe(steps=20, save_every=100, lr=1e-2)
    record = finetune.run(recipe)
    losses = record["losses"]
    assert record["steps"] == 20 and len(losses) == 20 and record["bad_steps"] == 0
    assert record["subset_utterances"] == 4  # one row counted twice
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    out = recipe.root / "finetune" / "rsft"
    assert (out / "model_card.md").read_text().startswith("# ")
    assert pd.read_json(out / "train_log.json", typ="series")["steps"] == 20
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert finetune.run(recipe)["losses"] == losses  # unchanged inputs: not trained again
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    model = transformers.WhisperForConditionalGeneration.from_pretrained(out / "model")
    assert model.config.d_model == 32
    wrapped = loader.load(ModelConfig(name=str(out / "model")), out)
    wave = audio.read(recipe.root / "audio" / "u0.flac")[0]
    assert isinstance(wrapped.transcribe([wave])[0], str)


@pytest.mark.parametrize("layout", ["standard", "short"])
def test_other_layouts_train(ft_recipe, layout):
    _, recipe = ft_recipe(steps=2, layout=layout, train="encoder_frozen", grad_accum=2)
    before = transformers.WhisperForConditionalGeneration.from_pretrained(recipe.model.name)
    record = finetune.run(recipe)
    assert all(x is not None for x in record["losses"])
    after = weights(recipe)
    enc = "model.encoder.layers.0.fc1.weight"
    dec = "model.decoder.layers.0.fc1.weight"
    assert torch.equal(after[enc], before.state_dict()[enc])  # frozen
    assert not torch.equal(after[dec], before.state_dict()[dec])


def test_ctc_trains_with_frozen_feature_encoder(ft_recipe, tiny_ctc_dir):
    _, recipe = ft_recipe(model_dir=tiny_ctc_dir, steps=3, train="feature_encoder_frozen")
    record = finetune.run(recipe)
    assert all(x is not None and x > 0 for x in record["losses"])
    model = transformers.Wav2Vec2ForCTC.from_pretrained(recipe.root / "finetune/rsft/model")
    assert model.config.vocab_size == 30


def test_interrupted_run_resumes_to_the_same_weights(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, save_every=2, grad_accum=2, batch_size=3)
    write_subset(recipe.root, "copy")  # same data, its own output folder
    finetune.run(recipe, "rsft")
    straight = weights(recipe, "rsft")

    saved = finetune._save_checkpoint

    def save_then_die(accelerator, checkpoints, step, losses, key):
        saved(accelerator, checkpoints, step, losses, key)
        if step == 4:
            raise KeyboardInterrupt  # as if killed right after the step-4 checkpoint

    monkeypatch.setattr(finetune, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(recipe, "copy")
    monkeypatch.undo()
    ckpt = recipe.root / "finetune" / "copy" / "checkpoints"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step-2", "step-4"]
    record = finetune.run(recipe, "copy", resume=True)
    assert record["steps"] == 6 and len(record["losses"]) == 6
    resumed = weights(recipe, "copy")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=0)


def test_nan_losses_are_skipped_then_stop_the_run(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, max_bad_steps=3)
    real, calls = finetune.compute_loss, []

    def flaky(model, batch):
        calls.append(1)
        loss = real(model, batch)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(finetune, "compute_loss", flaky)
    record = finetune.run(recipe)
    assert record["losses"][1] is None and record["bad_steps"] == 1
    assert all(torch.isfinite(t).all() for t in weights(recipe).values())

    monkeypatch.setattr(finetune, "compute_loss", lambda m, b: real(m, b) * float("inf"))
    with pytest.raises(UserError, match="NaN or infinite at 3 steps in a row"):
        finetune.run(recipe, resume=True)  # resume: no checkpoint, so it trains from step 0


def test_missing_subset_is_a_one_line_error(write_recipe, capsys):
    path = write_recipe({})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", str(path), "--subset", "random"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "subset 'random': no manifest" in err[0]


@pytest.mark.slow
def test_two_processes_train_and_only_the_main_one_writes(ft_recipe):
    path, recipe = ft_recipe(steps=3, batch_size=2, save_every=2, eval_every=2, patience=1)
    write_dev(recipe.root)  # validation on the main process only: the other must not hang
    # accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (multi-CPU needs
    # mpirun); `--multi_gpu` starts two through torchrun, and finetune.cpu puts them on gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes"]
    cmd += ["2", "-m", "pipeline", "finetune", str(path), "--set", "finetune.cpu=true"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Stage 4: finetune") == 1
    out = recipe.root / "finetune" / "rsft"
    log = pd.read_json(out / "train_log.json", typ="series")
    assert log["processes"] == 2 and log["steps"] == 3
    assert [row["step"] for row in log["dev_curve"]] == [2, 3]
    assert (out / "checkpoints" / "step-2" / "best" / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoints",
        "model",
        "model_card.md",
        "train_log.json",
    ]
    assert (out / "checkpoints" / "step-2" / "random_states_1.pkl").exists()
    transformers.WhisperForConditionalGeneration.from_pretrained(out / "model")


def write_dev(root, name="dev_target"):
    """A prepared dev set over the subset's espeak-ng audio (write_subset first)."""
    rows = [
        dummy_row(i, str(root / "audio" / f"u{i}.flac"), text=text, split="dev")
        for i, text in enumerate(TEXTS)
    ]
    manifest.write(manifest.to_frame(rows), root / "prepare" / "manifests" / f"{name}.parquet")


def scripted_wers(monkeypatch, wers):
    """dev_wer returns ``wers`` in turn and keeps a copy of the weights it was asked about."""
    seen = []

    def fake(model, waves, texts, batch_size):
        assert not model.model.training and model.layout == "standard"
        seen.append({k: v.detach().clone() for k, v in model.model.state_dict().items()})
        return wers[len(seen) - 1]

    monkeypatch.setattr(validation, "dev_wer", fake)
    return seen


def test_dev_curve_is_logged_on_the_real_dev_set(ft_recipe, caplog):
    _, recipe = ft_recipe(steps=5, eval_every=2, eval_limit=2)
    write_dev(recipe.root)
    caplog.set_level("INFO", logger="pipeline.finetune")
    record = finetune.run(recipe)
    assert [row["step"] for row in record["dev_curve"]] == [2, 4, 5]  # and the last step
    assert all(set(row) == {"step", "dev_target"} for row in record["dev_curve"])
    assert "step 2 dev WER dev_target" in caplog.text
    card = (recipe.root / "finetune" / "rsft" / "model_card.md").read_text()
    assert f"The saved model is step {record['best']['step']} of 5" in card
    assert not (recipe.root / "finetune" / "rsft" / "best").exists()  # renamed to model/


def test_the_saved_model_is_the_best_dev_step(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, eval_every=2)
    write_dev(recipe.root)
    seen = scripted_wers(monkeypatch, [0.5, 0.2, 0.4])
    record = finetune.run(recipe)
    assert record["steps"] == 6 and record["best"] == {"step": 4, "wer": 0.2}
    assert [row["dev_target"] for row in record["dev_curve"]] == [0.5, 0.2, 0.4]
    saved = weights(recipe)
    assert not torch.equal(
        seen[1]["model.encoder.conv1.weight"], seen[2]["model.encoder.conv1.weight"]
    )
    for name, tensor in saved.items():
        torch.testing.assert_close(tensor, seen[1][name], atol=0, rtol=0)


def test_patience_stops_early_and_keeps_the_best(ft_recipe, monkeypatch, caplog):
    _, recipe = ft_recipe(steps=10, eval_every=2, patience=1)
    write_dev(recipe.root)
    seen = scripted_wers(monkeypatch, [0.3, 0.4, 0.1])
    caplog.set_level("INFO", logger="pipeline.finetune")
    record = finetune.run(recipe)
    assert record["steps"] == 4 and len(record["losses"]) == 4 and len(seen) == 2
    assert "early stop at step 4" in caplog.text
    for name, tensor in weights(recipe).items():
        torch.testing.assert_close(tensor, seen[0][name], atol=0, rtol=0)


def test_dev_curve_and_best_survive_resume(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, save_every=2, eval_every=2)
    write_dev(recipe.root)
    seen = scripted_wers(monkeypatch, [0.3, 0.4, 0.5])
    saved = finetune._save_checkpoint

    def save_then_die(accelerator, checkpoints, step, progress, key):
        saved(accelerator, checkpoints, step, progress, key)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(finetune, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(recipe)
    monkeypatch.setattr(finetune, "_save_checkpoint", saved)
    best = recipe.root / "finetune" / "rsft" / "best"
    shutil.rmtree(best)
    best.mkdir()
    (best / "stale").touch()  # as if a later best had been written before the kill
    record = finetune.run(recipe, resume=True)
    assert not (recipe.root / "finetune" / "rsft" / "model" / "stale").exists()
    assert [row["step"] for row in record["dev_curve"]] == [2, 4, 6]
    assert record["best"]["step"] == 2 and len(seen) == 3
    for name, tensor in weights(recipe).items():
        torch.testing.assert_close(tensor, seen[0][name], atol=0, rtol=0)


def test_missing_dev_set_is_a_one_line_error(ft_recipe):
    _, recipe = ft_recipe(eval_every=2, eval_sets=["dev_nowhere"])
    with pytest.raises(UserError, match="set 'dev_nowhere' has no manifest"):
        finetune.run(recipe)
