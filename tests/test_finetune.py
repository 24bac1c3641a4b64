"""The finetune stage on tiny random models: learning, saving, resume, NaN guard, 2 processes."""

import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pandas as pd
import pytest
import torch
import transformers

from pipeline import audio, cli, manifest
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.finetune import checkpoints, validation
from pipeline.finetune import stage as finetune
from pipeline.models import loader
from pipeline.models.whisper import Whisper
from tests.factories import TEXTS, dummy_row, weights, write_subset


def test_loss_falls_and_the_model_loads(ft_recipe):
    _, recipe = ft_recipe(steps=20, save_every=100, lr=1e-2)
    record = finetune.run(recipe)
    losses = record["losses"]
    assert record["steps"] == 20 and len(losses) == 20 and record["bad_steps"] == 0
    assert record["subset_utterances"] == 4  # one row counted twice
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    out = recipe.root / "finetune" / "rsft"
    card = (out / "model_card.md").read_text()
    assert card.startswith("# ") and f"peak memory {record['peak_rss_mib']:,.0f} MiB" in card
    assert record["peak_rss_mib"] > 100  # torch and the model alone take more than that
    assert pd.read_json(out / "train_log.json", typ="series")["steps"] == 20
    stamp = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert finetune.run(recipe)["losses"] == losses  # unchanged inputs: not trained again
    decoding = replace(recipe, model=replace(recipe.model, loop_repeats=3, tokens_per_s=4.0))
    finetune.run(decoding)  # decoding settings alone: no dev set is decoded, nothing to redo
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    model = transformers.WhisperForConditionalGeneration.from_pretrained(out / "model")
    assert model.config.d_model == 32
    wrapped = loader.load(ModelConfig(name=str(out / "model")), out)
    wave = audio.read(recipe.root / "audio" / "u0.flac")[0]
    assert isinstance(wrapped.transcribe([wave])[0], str)


ENC = "model.encoder.layers.0.fc1.weight"
DEC_LM = [
    "model.decoder.layers.0.fc1.weight",
    "model.decoder.layers.0.self_attn.q_proj.weight",
    "model.decoder.embed_tokens.weight",
]
CROSS = "model.decoder.layers.0.encoder_attn.q_proj.weight"
PARTS = {  # what trains and what stays as it was, per finetune.train
    "encoder_frozen": ([DEC_LM[0], CROSS], [ENC]),
    "decoder_frozen": ([ENC], [*DEC_LM, CROSS]),
    "decoder_lm_frozen": ([ENC, CROSS], DEC_LM),
}


@pytest.mark.parametrize(
    "layout, train",
    [("standard", "encoder_frozen"), ("short", "decoder_frozen"), ("packed", "decoder_lm_frozen")],
)
def test_other_layouts_train(ft_recipe, layout, train):
    _, recipe = ft_recipe(steps=2, layout=layout, train=train, grad_accum=2)
    before = transformers.WhisperForConditionalGeneration.from_pretrained(recipe.model.name)
    record = finetune.run(recipe)
    assert all(x is not None for x in record["losses"])
    after, start = weights(recipe), before.state_dict()
    trained, frozen = PARTS[train]
    card = (recipe.root / "finetune" / "rsft" / "model_card.md").read_text()
    held = "forgetting control: the decoder" in card  # what trains is named as the control
    assert held == (train in ("decoder_frozen", "decoder_lm_frozen"))
    assert all(torch.equal(after[k], start[k]) for k in frozen)
    assert not any(torch.equal(after[k], start[k]) for k in trained)


def test_ctc_trains_with_frozen_feature_encoder(ft_recipe, tiny_ctc_dir):
    _, recipe = ft_recipe(model_dir=tiny_ctc_dir, steps=3, train="feature_encoder_frozen")
    record = finetune.run(recipe)
    assert all(x is not None and x > 0 for x in record["losses"])
    model = transformers.Wav2Vec2ForCTC.from_pretrained(recipe.root / "finetune/rsft/model")
    assert model.config.vocab_size == 30
    wrapped = loader.load(ModelConfig(name=str(tiny_ctc_dir)), tiny_ctc_dir)
    for train in ("decoder_only", "decoder_frozen", "decoder_lm_frozen"):
        with pytest.raises(UserError, match="needs Whisper"):
            wrapped.freeze(model, train)


def test_killed_run_resumes_to_the_same_weights(ft_recipe):
    path, recipe = ft_recipe(steps=40, save_every=5, grad_accum=2, batch_size=3)
    write_subset(recipe.root, "copy")  # same data, its own output folder
    finetune.run(recipe, "rsft")
    straight = weights(recipe, "rsft")

    out = recipe.root / "finetune" / "copy"
    cmd = [sys.executable, "-m", "pipeline", "finetune", str(path), "--subset", "copy", "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "step-5" / "progress.json").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train_log.json").exists()  # killed mid-run
    record = finetune.run(recipe, "copy", resume=True)
    assert record["steps"] == 40 and len(record["losses"]) == 40
    resumed = weights(recipe, "copy")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-5, rtol=0)


def test_nan_losses_are_skipped_then_stop_the_run(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, max_bad_steps=3)
    real, calls = Whisper.training_loss, []

    def flaky(self, model, batch):
        calls.append(1)
        loss, logits, mask = real(self, model, batch)
        return (loss * float("nan") if len(calls) == 2 else loss), logits, mask

    monkeypatch.setattr(Whisper, "training_loss", flaky)
    record = finetune.run(recipe)
    assert record["losses"][1] is None and record["bad_steps"] == 1
    assert all(torch.isfinite(t).all() for t in weights(recipe).values())

    def infinite(self, model, batch):
        loss, logits, mask = real(self, model, batch)
        return loss * float("inf"), logits, mask

    monkeypatch.setattr(Whisper, "training_loss", infinite)
    with pytest.raises(
        UserError, match="NaN or infinite, or no audio was readable, at 3 steps in a row"
    ):
        finetune.run(recipe, resume=True)  # resume: no checkpoint, so it trains from step 0


def test_out_of_memory_names_the_setting_to_lower(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=2, batch_seconds=20.0)

    def exhausted(self, model, batch):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Whisper, "training_loss", exhausted)
    with pytest.raises(UserError, match=r"out of GPU memory at step 1; lower finetune.batch_sec"):
        finetune.run(recipe)


def test_missing_subset_is_a_one_line_error(write_recipe, capsys):
    path = write_recipe({})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["finetune", str(path), "--subset", "random"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and "subset 'random': no manifest" in err[0]


@pytest.mark.slow
def test_two_processes_train_and_only_the_main_one_writes(ft_recipe):
    path, recipe = ft_recipe(steps=3, batch_seconds=3.0, save_every=2, eval_every=2, patience=1)
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
        "tensorboard",
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


def test_a_change_in_decoding_code_trains_a_validated_run_again(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=2, eval_every=2, eval_limit=2)
    write_dev(recipe.root)
    finetune.run(recipe)
    stamp = (recipe.root / "finetune/rsft/model/model.safetensors").stat().st_mtime_ns
    finetune.run(recipe)  # up to date
    assert (recipe.root / "finetune/rsft/model/model.safetensors").stat().st_mtime_ns == stamp
    monkeypatch.setattr(Whisper, "decoding_revision", Whisper.decoding_revision + 1)
    finetune.run(recipe)  # its dev WERs, and so its saved step, may differ now
    assert (recipe.root / "finetune/rsft/model/model.safetensors").stat().st_mtime_ns != stamp


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
    saved = checkpoints.save_checkpoint

    def save_then_die(accelerator, checkpoints, step, progress, key):
        saved(accelerator, checkpoints, step, progress, key)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        finetune.run(recipe)
    monkeypatch.setattr(checkpoints, "save_checkpoint", saved)
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


def test_guard_set_keeps_the_best_model_that_does_not_forget(ft_recipe, monkeypatch):
    _, recipe = ft_recipe(steps=6, eval_every=2, guard_set="asterisk_guard", guard_tolerance=0.05)
    write_dev(recipe.root)
    write_dev(recipe.root, "asterisk_guard")
    # (dev_target, asterisk_guard) at steps 0 (pretrained), 2, 4, 6; the guard's limit is 0.15
    seen = scripted_wers(monkeypatch, [0.9, 0.10, 0.3, 0.20, 0.5, 0.12, 0.4, 0.16])
    record = finetune.run(recipe)
    assert [row["step"] for row in record["dev_curve"]] == [0, 2, 4, 6]
    assert record["guard"] == {"set": "asterisk_guard", "limit": pytest.approx(0.15)}
    assert record["best"] == {"step": 4, "wer": 0.5}  # steps 2 and 6 forgot real speech
    for name, tensor in weights(recipe).items():
        torch.testing.assert_close(tensor, seen[4][name], atol=0, rtol=0)
    card = (recipe.root / "finetune" / "rsft" / "model_card.md").read_text()
    assert "among evaluations with asterisk_guard WER at most 15.0%" in card


def test_padding_and_throughput_are_logged_with_tensorboard_events(ft_recipe):
    _, recipe = ft_recipe(steps=2, batch_size=3)
    packed = finetune.run(recipe)
    assert list((recipe.root / "finetune" / "rsft" / "tensorboard").rglob("events.out.*"))
    standard = finetune.run(ft_recipe(steps=2, batch_size=3, layout="standard")[1])
    # one epoch, batches of 3 + 1 commands of 1-2 s: one 30 s window per batch when packed,
    # one per command when not
    speech_s = packed["speech_seconds"]
    assert speech_s == pytest.approx(standard["speech_seconds"], rel=1e-6)
    assert packed["padding_fraction"] == pytest.approx(1 - speech_s / 60)
    assert standard["padding_fraction"] == pytest.approx(1 - speech_s / 120)
    assert packed["train_seconds"] > 0


def test_a_subset_with_no_readable_audio_stops_with_a_clear_error(ft_recipe):
    _, recipe = ft_recipe(steps=6, max_bad_steps=2)
    for path in (recipe.root / "audio").glob("*.flac"):
        path.write_bytes(b"not audio")
    with pytest.raises(UserError, match="no audio was readable, at 2 steps in a row"):
        finetune.run(recipe)


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(finetune, "cpu_has_bf16", lambda native=native: native)
        assert finetune.precision("auto") == expected
    assert finetune.precision("fp16") == "fp16"  # an explicit setting is kept as it is
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert finetune.precision("auto") == "fp16" and finetune.precision("auto", cpu=True) == "no"
