"""Forgetting control on tiny random models: distillation, L2-SP, LoRA, replay, a guard set."""

import shutil
from dataclasses import replace

import pytest
import torch
import transformers
from safetensors.torch import load_file

from pipeline import audio, manifest
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.finetune import forgetting
from pipeline.finetune import stage as finetune
from pipeline.finetune.batches import Collator
from pipeline.fsio import read_json
from pipeline.models import loader
from tests.factories import TEXTS, dummy_row, speak, weights


def test_kl_divergence_is_zero_for_equal_outputs_and_honours_the_mask():
    torch.manual_seed(0)
    teacher, student = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    mask = torch.ones(2, 5, dtype=torch.bool)
    assert forgetting.kl_divergence(teacher, teacher, mask).item() == pytest.approx(0, abs=1e-6)
    expected = torch.nn.functional.kl_div(
        student.log_softmax(-1), teacher.log_softmax(-1), log_target=True, reduction="none"
    ).sum(-1)
    got = forgetting.kl_divergence(teacher, student, mask)
    assert got.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    mask[1] = False  # only the first row counts
    got = forgetting.kl_divergence(teacher, student, mask)
    assert got.item() == pytest.approx(expected[0].mean().item(), rel=1e-5)


def drift(recipe, pretrained_dir):
    """Squared distance of the saved model to the pretrained weights, and the KL divergence of
    its token distribution from the pretrained one on a training batch."""
    before = transformers.WhisperForConditionalGeneration.from_pretrained(pretrained_dir)
    after = transformers.WhisperForConditionalGeneration.from_pretrained(
        recipe.root / "finetune" / "rsft" / "model"
    )
    distance = sum(
        (a - b).pow(2).sum().item()
        for a, b in zip(after.state_dict().values(), before.state_dict().values(), strict=True)
    )
    wrapped = loader.load(ModelConfig(name=str(pretrained_dir)), recipe.root)
    waves = [audio.read(recipe.root / "audio" / f"u{i}.flac")[0] for i in range(3)]
    batch = Collator(wrapped, "packed", 8.0)(list(zip(waves, TEXTS, strict=True)))
    with torch.no_grad():
        _, teacher, mask = wrapped.training_loss(before.eval(), batch)
        _, student, _ = wrapped.training_loss(after.eval(), batch)
    return distance, forgetting.kl_divergence(teacher, student, mask).item()


def test_distillation_and_l2_keep_the_model_nearer_the_pretrained_one(ft_recipe, tiny_whisper_dir):
    runs = {}
    for name, extra in {
        "plain": {},
        "l2": {"l2_weight": 10.0},
        "distill": {"distill_weight": 300.0},
    }.items():
        _, recipe = ft_recipe(steps=8, lr=1e-2, **extra)
        record = finetune.run(recipe)
        assert all(x is not None for x in record["losses"])
        runs[name] = drift(recipe, tiny_whisper_dir)
    assert runs["l2"][0] < 0.5 * runs["plain"][0], runs
    assert runs["distill"][1] < 0.5 * runs["plain"][1], runs


def test_lora_trains_adapters_and_saves_a_plain_merged_model(ft_recipe, tiny_whisper_dir):
    _, recipe = ft_recipe(steps=4, lr=1e-2, train="lora", lora_rank=2, lora_modules=["q_proj"])
    record = finetune.run(recipe)
    assert all(x is not None for x in record["losses"])
    saved = weights(recipe)
    assert not any("lora" in key for key in saved)
    before = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    start = before.state_dict()
    q = "model.decoder.layers.0.self_attn.q_proj.weight"
    k = "model.decoder.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(saved[q], start[q])  # the adapter, merged in
    assert torch.equal(saved[k], start[k])  # untouched: not a LoRA target
    with pytest.raises(UserError, match="none of \\['attn'\\] is a module"):
        finetune.run(ft_recipe(steps=1, train="lora", lora_modules=["attn"])[1])


def test_a_lora_runs_adapter_is_saved_alone_and_read_on_the_base_gives_the_same_model(
    ft_recipe, tiny_whisper_dir, speech
):
    _, recipe = ft_recipe(steps=3, lr=1e-2, train="lora", lora_rank=2, lora_modules=["q_proj"])
    finetune.run(recipe)
    model_dir = recipe.root / "finetune" / "rsft" / "model"
    adapter = model_dir / "adapter"
    size = (adapter / "adapter_model.safetensors").stat().st_size
    assert size < 0.5 * (model_dir / "model.safetensors").stat().st_size
    merged = loader.load(ModelConfig(name=str(model_dir)), recipe.tree.models)
    base = ModelConfig(name=str(tiny_whisper_dir))
    on = loader.load(replace(base, adapter=str(adapter)), recipe.tree.models)
    off = loader.load(base, recipe.tree.models)
    saved, applied = merged.model.state_dict(), on.model.state_dict()
    assert set(saved) == set(applied)
    assert all(torch.allclose(saved[k], applied[k], atol=1e-6) for k in saved)
    assert on.transcribe([speech]) == merged.transcribe([speech])
    q = "model.decoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(off.model.state_dict()[q], applied[q])  # off: the base as it was
    with pytest.raises(UserError, match="no LoRA adapter"):
        loader.load(replace(base, adapter=str(model_dir)), recipe.tree.models)


def test_lora_on_ctc_keeps_the_head_trainable(ft_recipe, tiny_ctc_dir):
    _, recipe = ft_recipe(model_dir=tiny_ctc_dir, steps=3, lr=1e-2, train="lora", lora_rank=2)
    record = finetune.run(recipe)
    assert all(x is not None and x > 0 for x in record["losses"])
    before = transformers.Wav2Vec2ForCTC.from_pretrained(tiny_ctc_dir).state_dict()
    saved = load_file(recipe.root / "finetune" / "rsft" / "model" / "model.safetensors")
    assert not torch.equal(saved["lm_head.weight"], before["lm_head.weight"])


def test_interpolate_mixes_each_parameter_once_and_keeps_a_new_head(tiny_whisper_dir, tiny_ctc_dir):
    load = transformers.WhisperForConditionalGeneration.from_pretrained
    pretrained, trained = load(tiny_whisper_dir), load(tiny_whisper_dir)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(1.0)
    assert forgetting.interpolate(trained, pretrained, 0.25) == len(list(trained.parameters()))
    start = dict(pretrained.named_parameters())
    for name, param in trained.named_parameters():
        torch.testing.assert_close(param, start[name] + 0.25)
    # the output projection is tied to the token embeddings: mixed once, not twice
    torch.testing.assert_close(trained.proj_out.weight, pretrained.proj_out.weight + 0.25)
    ctc = transformers.Wav2Vec2ForCTC.from_pretrained(tiny_ctc_dir)
    new_vocab = transformers.Wav2Vec2ForCTC.from_pretrained(tiny_ctc_dir)
    new_vocab.lm_head = torch.nn.Linear(ctc.lm_head.in_features, ctc.lm_head.out_features + 3)
    head = new_vocab.lm_head.weight.detach().clone()
    forgetting.interpolate(new_vocab, ctc, 0.5)
    assert torch.equal(new_vocab.lm_head.weight, head)  # no pretrained counterpart: as trained
    with pytest.raises(ValueError, match="outside"):
        forgetting.interpolate(trained, pretrained, 1.5)
    with pytest.raises(ValueError, match="needs is_decoder"):
        forgetting.interpolate(new_vocab, ctc, 0.5, decoder_weight=0.5)
    wrapped = loader.load(ModelConfig(name=str(tiny_ctc_dir)), tiny_ctc_dir)
    with pytest.raises(UserError, match="CTC models have no decoder"):
        forgetting.interpolate(new_vocab, ctc, 0.5, 0.5, wrapped.is_decoder)


def test_the_decoder_takes_its_own_weight_in_the_mix(tiny_whisper_dir):
    load = transformers.WhisperForConditionalGeneration.from_pretrained
    pretrained, trained = load(tiny_whisper_dir), load(tiny_whisper_dir)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(1.0)
    whisper = loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir)
    forgetting.interpolate(trained, pretrained, 0.75, 0.25, whisper.is_decoder)
    start = dict(pretrained.named_parameters())
    parts = {"encoder": 0, "decoder": 0}
    for name, param in trained.named_parameters():
        decoder = whisper.is_decoder(name)
        parts["decoder" if decoder else "encoder"] += 1
        torch.testing.assert_close(param, start[name] + (0.25 if decoder else 0.75))
    assert parts["decoder"] > 10 and parts["encoder"] > 10
    # the output projection is the decoder's embeddings: it takes the decoder's weight
    torch.testing.assert_close(trained.proj_out.weight, pretrained.proj_out.weight + 0.25)


def test_finetune_saves_the_interpolated_weights(ft_recipe, tiny_whisper_dir):
    _, recipe = ft_recipe(steps=4, lr=1e-2)
    finetune.run(recipe)
    trained = weights(recipe)
    _, mixed_recipe = ft_recipe(steps=4, lr=1e-2, interpolate=0.25)
    finetune.run(mixed_recipe)  # the same training (deterministic), then mixed
    mixed = weights(mixed_recipe)
    start = load_file(tiny_whisper_dir / "model.safetensors")
    assert mixed.keys() == trained.keys()
    moved = 0
    for key, value in mixed.items():
        torch.testing.assert_close(value, 0.25 * trained[key] + 0.75 * start[key])
        moved += not torch.equal(trained[key], start[key])
    assert moved > 10  # training changed the weights, so the mix is not trivially equal
    card = (mixed_recipe.root / "finetune" / "rsft" / "model_card.md").read_text()
    assert "0.25 x trained + 0.75 x pretrained" in card


def test_another_mix_is_saved_without_training_again(ft_recipe, tiny_whisper_dir, monkeypatch):
    _, recipe = ft_recipe(steps=4, lr=1e-2)
    first = finetune.run(recipe)
    trained = weights(recipe)
    start = load_file(tiny_whisper_dir / "model.safetensors")
    out = recipe.root / "finetune" / "rsft"
    is_decoder = loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir).is_decoder

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(forgetting, "Anchor", no_training)
    for w, wd in ((0.25, None), (1.0, 0.0), (1.0, None)):
        _, mixed_recipe = ft_recipe(steps=4, lr=1e-2, interpolate=w, interpolate_decoder=wd)
        record = finetune.run(mixed_recipe)
        assert record["key"] == first["key"] and record["losses"] == first["losses"]
        assert record["mix"] == {"interpolate": w, "interpolate_decoder": wd}
        assert read_json(out / "train_log.json")["mix"] == record["mix"]
        mixed = weights(mixed_recipe)
        for key, value in mixed.items():
            a = wd if wd is not None and is_decoder(key) else w
            torch.testing.assert_close(value, a * trained[key] + (1 - a) * start[key])
    assert (out / "trained").is_dir()
    # a training run saved mixed keeps its trained weights; without them it trains again
    _, recipe2 = ft_recipe(steps=3, lr=1e-2, interpolate_decoder=0.5)
    monkeypatch.undo()
    finetune.run(recipe2)
    shutil.rmtree(out / "trained")
    _, recipe3 = ft_recipe(steps=3, lr=1e-2, interpolate_decoder=0.0)
    monkeypatch.setattr(forgetting, "Anchor", no_training)
    with pytest.raises(AssertionError, match="trained again"):
        finetune.run(recipe3)


POOL_TEXTS = (
    "please call my sister when you get home tonight",
    "set an alarm for half past six tomorrow morning",
    "what will the weather be like in edinburgh on friday",
)


def write_pool(root, texts=POOL_TEXTS, name="pool"):
    """A prepared pool of sentences about three times as long as the subset's."""
    rows = []
    for i, text in enumerate(texts):
        path = root / "audio" / f"{name}{i}.flac"
        wave, rate = speak(text, "en-gb")
        audio.write_flac(path, wave, rate)
        rows.append(dummy_row(10 + i, str(path), text=text, duration_s=audio.duration_s(path)))
    manifest.write(manifest.to_frame(rows), root / "prepare" / "manifests" / f"{name}.parquet")


def test_replay_trains_on_pool_audio_too(ft_recipe):
    _, recipe = ft_recipe(steps=3, batch_size=4, replay_fraction=0.5)
    with pytest.raises(UserError, match="no manifest of replay set 'pool'"):
        finetune.run(recipe)
    write_pool(recipe.root)
    with_replay = finetune.run(recipe)
    _, plain_recipe = ft_recipe(steps=3, batch_size=4)
    plain = finetune.run(plain_recipe)
    # half of every batch is (longer) pool audio: more seconds than the subset alone gives
    assert with_replay["speech_seconds"] > 1.3 * plain["speech_seconds"]
    assert with_replay["key"] != plain["key"]


def test_replay_set_names_the_set_replayed(ft_recipe):
    _, recipe = ft_recipe(steps=3, batch_size=4, replay_fraction=0.5, replay_set="prose")
    with pytest.raises(UserError, match="no manifest of replay set 'prose'"):
        finetune.run(recipe)
    write_pool(recipe.root)
    short = ("the old clock stopped at noon", "a cold wind blew over the hill", "she sang to me")
    write_pool(recipe.root, short, name="prose")
    prose = finetune.run(recipe)
    _, pool_recipe = ft_recipe(steps=3, batch_size=4, replay_fraction=0.5)
    pool = finetune.run(pool_recipe)
    # the same draw of rows, from the shorter sentences of the named set
    assert prose["speech_seconds"] < pool["speech_seconds"]
    assert prose["key"] != pool["key"]
