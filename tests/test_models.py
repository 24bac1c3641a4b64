"""The SpeechModel interface on tiny randomly initialised Whisper and wav2vec2 models."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models import loader
from pipeline.models.base import length_batches
from pipeline.models.whisper import LoopStop, assign_segments, collapse_loops


def waves(speech, n=3):
    """Real speech of different lengths."""
    return [speech[: len(speech) * (k + 1) // n] for k in range(n)]


@pytest.mark.parametrize("layout", ["standard", "short", "packed"])
def test_whisper_layouts_transcribe_embed_and_score(tiny_whisper_dir, speech, layout):
    model = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), layout=layout, context_s=2.0), tiny_whisper_dir
    )
    batch = waves(speech)
    texts = model.transcribe(batch)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    emb = model.embed(batch)
    # one pooled vector per encoder layer: the blocks' input and the (one) block's output
    assert emb.shape == (3, 2, 32) and np.isfinite(emb).all()
    if layout == "standard":  # the last is the final state the decoder reads, pooled
        feats = model.features(batch, 30.0)  # the same batch: the same matrix shapes
        with torch.inference_mode():
            final = model.model.get_encoder()(feats).last_hidden_state[0]
        frames = int(np.ceil(len(batch[0]) / 16000 * 50))
        # float sums in another order differ by ~1e-4; another layer differs by far more
        np.testing.assert_allclose(emb[0, -1], final[:frames].mean(0), rtol=1e-3, atol=1e-4)
        assert not np.allclose(emb[0, 0], emb[0, -1])
    losses = model.loss(batch, ["Turn on the lights.", "Hello.", "Turn on the kitchen lights."])
    assert losses.shape == (3,) and (losses > 0).all()


def test_bf16_inference_follows_the_machine_and_keeps_the_numbers(
    tiny_whisper_dir, speech, monkeypatch
):
    from pipeline import resources

    for native in (True, False):  # 'auto': bf16 only where the CPU computes it natively
        monkeypatch.setattr(resources, "cpu_has_bf16", lambda native=native: native)
        assert loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir).bf16 is native
    # an explicit setting is kept whatever the machine
    explicit = ModelConfig(name=str(tiny_whisper_dir), layout="packed", bf16=True)
    half = loader.load(explicit, tiny_whisper_dir)
    assert half.bf16 is True and loader.with_layout(half, "standard").bf16 is True
    full = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), layout="packed", bf16=False), tiny_whisper_dir
    )
    batch, texts = waves(speech), ["Turn on the lights.", "Hello.", "Turn on the kitchen lights."]
    emb, losses = half.analyse(batch, texts)
    assert emb.dtype == np.float32 and losses.dtype == np.float32
    emb32, losses32 = full.analyse(batch, texts)
    np.testing.assert_allclose(losses, losses32, rtol=0.05)  # bf16 keeps 8 bits of mantissa
    cosine = (emb * emb32).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(emb32, axis=1)
    assert (cosine > 0.99).all()
    assert all(isinstance(t, str) for t in half.transcribe(batch))


def test_whisper_loss_and_embedding_do_not_depend_on_the_batch(tiny_whisper_dir, speech):
    model = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), layout="short", context_s=8.0), tiny_whisper_dir
    )
    batch = waves(speech)
    texts = ["One.", "Turn on the kitchen lights please.", "Two words."]
    together = model.loss(batch, texts)
    alone = np.array([model.loss([w], [t])[0] for w, t in zip(batch, texts, strict=True)])
    np.testing.assert_allclose(together, alone, rtol=1e-4)
    np.testing.assert_allclose(
        model.embed(batch)[0], model.embed(batch[:1])[0], rtol=1e-4, atol=1e-5
    )


def test_short_context_slices_positions_and_restores_them(tiny_whisper_dir, speech):
    model = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), layout="short", context_s=4.0), tiny_whisper_dir
    )
    encoder = model.model.get_encoder()
    with model.context(4.0):
        assert encoder.embed_positions.num_embeddings == 200
        assert model.model.config.max_source_positions == 200
        out = encoder(model.features([speech], 4.0)).last_hidden_state
        assert out.shape[1] == 200
    assert encoder.embed_positions.num_embeddings == 1500
    long = np.tile(speech, 3)  # longer than the context: falls back to 30 s
    assert model._groups([speech[:16000], long]) == [(4.0, [0]), (30.0, [1])]


def test_packing_and_segment_assignment(tiny_whisper_dir, speech):
    model = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), layout="packed", pack_gap_s=1.0), tiny_whisper_dir
    )
    batch = [speech] * 12  # about 2 s each: a window holds 10
    windows = model.pack(batch)
    assert [len(w.members) for w in windows] == [10, 2]
    first = windows[0]
    assert first.spans[1][0] == pytest.approx(first.spans[0][1] + 1.0)
    assert len(first.wave) / 16000 == pytest.approx(first.spans[-1][1])
    # first fit (training): the longest first, each in the first window with room
    sizes = [20, 12, 9, 8, 6, 1]  # seconds of audio; 56 s fill two windows exactly at gap 0
    batch = [np.zeros(16000 * n, dtype=np.float32) for n in sizes]
    in_order = model.pack(batch, gap_s=0.0)
    assert [w.members for w in in_order] == [[0], [1, 2, 3], [4, 5]]
    fitted = model.pack(batch, gap_s=0.0, first_fit=True)
    assert [w.members for w in fitted] == [[0, 2, 5], [1, 3, 4]]
    assert [len(w.wave) for w in fitted] == [16000 * 30, 16000 * 26]
    with_gaps = model.pack(batch, gap_s=0.5, first_fit=True)
    assert [w.members for w in with_gaps] == [[0, 2], [1, 3, 4, 5]]
    assert with_gaps[0].spans == [(0.0, 20.0), (20.5, 29.5)]
    spans = [(0.0, 1.0), (2.0, 3.5), (4.5, 6.0)]
    # timestamps that run 1.5 s late are still assigned in order
    assert assign_segments([2.0, 4.2, 4.6, 6.7], spans) == [0, 1, 1, 2]
    assert assign_segments([], spans) == []


def test_ctc_model_transcribes_embeds_and_scores(tiny_ctc_dir, speech):
    model = loader.load(ModelConfig(name=str(tiny_ctc_dir)), tiny_ctc_dir)
    batch = waves(speech)
    assert len(model.transcribe(batch)) == 3
    assert model.targets("it's ok") == model.targets("IT'S  OK")
    texts = ["turn on", "the lights", "please turn on the kitchen lights"]
    together = model.loss(batch, texts)
    alone = np.array([model.loss([w], [t])[0] for w, t in zip(batch, texts, strict=True)])
    np.testing.assert_allclose(together, alone, rtol=1e-3)
    emb = model.embed(batch)
    layers = model.model.config.num_hidden_layers + 1
    assert emb.shape == (3, layers, model.model.config.hidden_size)
    np.testing.assert_allclose(emb[0], model.embed(batch[:1])[0], rtol=1e-3, atol=1e-4)


def test_fingerprint_follows_the_weights(tiny_whisper_dir):
    a = loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir)
    b = loader.load(ModelConfig(name=str(tiny_whisper_dir)), tiny_whisper_dir)
    assert a.fingerprint() == b.fingerprint()
    with torch.no_grad():
        b.model.proj_out.weight[0, 0] += 1.0
    assert a.fingerprint() != b.fingerprint()


def test_unreachable_models_give_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="offline.*bundled:whisper-tiny.en"):
        loader.load(ModelConfig(name="openai/whisper-small"), tmp_path)
    with pytest.raises(UserError, match="model folder not found"):
        loader.load(ModelConfig(name="./no/such/model"), tmp_path)
    with pytest.raises(UserError, match="unknown bundled model"):
        loader.load(ModelConfig(name="bundled:whisper-huge"), tmp_path)


def test_length_batches_group_similar_lengths():
    batches = list(length_batches([1.0, 5.0, 2.0, 4.0, 3.0], 2))
    assert batches == [[1, 3], [4, 2], [0]]


def test_repetition_loops_are_found_stopped_and_cut_to_one_copy():
    eot = 50256
    looped = [1, 2, 7, 8, 9, 7, 8, 9, 7, 8, 9, 7, 8, 9, eot, eot]
    assert collapse_loops(looped, 3) == [1, 2, 7, 8, 9, eot, eot]
    assert collapse_loops([1, 5, 5, 5, 5], 4) == [1, 5]  # a one-token loop
    assert collapse_loops([1, 5, 5, 5], 4) == [1, 5, 5, 5]  # three copies are not four
    assert collapse_loops([3, 1, 2, 1, 2], 3) == [3, 1, 2, 1, 2]  # two copies: speech can repeat
    # inside a packed window: the loop is cut and the words after it are kept
    window = [4, 6, 6, 6, 6, 6, 3, 1, 2, 1, 2, 1, 2, 1, 2, 9, eot]
    assert collapse_loops(window, 4) == [4, 6, 3, 1, 2, 9, eot]
    assert collapse_loops([], 4) == []
    # generation: rows stop one by one, once the loop is complete (the prompt is not looked at)
    stop = LoopStop(3, prompt_len=2)
    rows = torch.tensor(
        [[9, 9, 4, 6, 4, 6, 4, 6], [9, 9, 4, 6, 4, 6, 1, 2], [9, 9, 9, 3, 3, 3, 5, 5]]
    )
    assert stop(rows, None).tolist() == [True, False, False]
    assert stop(torch.tensor([[9, 9, 3, 3, 3]]), None).tolist() == [True]


def test_loop_stopping_decodes_with_the_tiny_model(tiny_whisper_dir, speech, monkeypatch):
    plain = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), bf16=False, loop_repeats=0), tiny_whisper_dir
    )
    cut = loader.load(
        ModelConfig(name=str(tiny_whisper_dir), bf16=False, loop_repeats=2), tiny_whisper_dir
    )
    assert cut.loop_repeats == 2 and loader.with_layout(cut, "packed").loop_repeats == 2
    batch = waves(speech)
    # a random tiny model loops at once: with loops cut, no transcript is longer
    for a, b in zip(plain.transcribe(batch), cut.transcribe(batch), strict=True):
        assert len(b) <= len(a)
    # one utterance per window: generation stops at a loop; a packed window decodes on (the
    # utterances after a loop still follow) and its loops are cut afterwards
    stopped, generate = [], cut.model.generate
    monkeypatch.setattr(
        cut.model,
        "generate",
        lambda **kw: stopped.append("stopping_criteria" in kw) or generate(**kw),
    )
    cut.transcribe(batch)
    packed = loader.with_layout(cut, "packed")
    packed.transcribe_joined(packed.pack(batch))
    assert stopped[0] and stopped[-1] is False


def test_decode_step_attention_matches_sdpa_and_converts_cross_attention_once():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from pipeline.models import whisper

    torch.manual_seed(0)
    module = torch.nn.Module().train(False)
    query = torch.randn(3, 2, 1, 8)
    key, value = torch.randn(3, 2, 20, 8), torch.randn(3, 2, 20, 8)
    keep = torch.rand(3, 1, 1, 20) > 0.3
    keep[..., 0] = True
    additive = torch.zeros(3, 1, 1, 20).masked_fill(~keep, float("-inf"))
    copies = whisper._Fp32Copies({id(module)})
    token = whisper._STEP_COPIES.set(copies)
    try:
        for mask in (None, keep, additive):
            ours, _ = whisper.decode_step_attention(module, query, key, value, mask)
            theirs, _ = sdpa_attention_forward(module, query, key, value, mask, is_causal=False)
            assert ours.shape == theirs.shape == (3, 1, 2, 8)
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        # the cross-attention keys are converted once and reused while the tensor is the same
        kept = copies.copies[id(key)][1]
        whisper.decode_step_attention(module, query.bfloat16(), key, value, None)
        assert copies.copies[id(key)][1] is kept
        # bf16 inputs: an fp32 result rounded once, close to fp32 attention
        half, _ = whisper.decode_step_attention(
            module, query.bfloat16(), key.bfloat16(), value.bfloat16(), keep
        )
        assert half.dtype == torch.bfloat16
        torch.testing.assert_close(half.float(), theirs, rtol=0.05, atol=0.05)
    finally:
        whisper._STEP_COPIES.reset(token)


@pytest.mark.parametrize("bf16", [False, True])
def test_greedy_steps_attend_in_fp32_and_decoder_weights_are_put_back(
    tiny_whisper_dir, speech, monkeypatch, bf16
):
    import contextlib

    from pipeline.models import whisper

    cfg = ModelConfig(name=str(tiny_whisper_dir), bf16=bf16, loop_repeats=0)
    ours = loader.load(cfg, tiny_whisper_dir)
    assert ours.decode_attention == "fp32"
    assert loader.with_layout(ours, "packed").decode_attention == "fp32"
    calls, step = [], whisper.decode_step_attention

    def counted(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return step(module, query, *args, **kwargs)

    mapping = whisper.AttentionInterface._global_mapping
    monkeypatch.setitem(mapping, whisper.DECODE_ATTENTION, counted)
    seen = []
    projection = ours.model.get_output_embeddings()
    projection.register_forward_pre_hook(lambda m, args: seen.append(m.weight.dtype))
    feats = ours.features(waves(speech), 30.0)
    ids = ours._generate(feats, 12).tolist()
    # the encoder (1,500 queries) and the prompt's step (2) by SDPA, every later step here
    assert 1 in calls and max(calls) == 1500
    # bf16 weights only while generating; the output projection is tied again after
    assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}
    assert projection.weight is ours.model.get_decoder().embed_tokens.weight
    assert all(p.dtype == torch.float32 for p in ours.model.parameters())
    assert ours.model.config._attn_implementation == "sdpa"
    assert whisper._STEP_COPIES.get() is None
    # the weights' bf16 copies are autocast's own rounding: the same tokens without them
    monkeypatch.setattr(ours, "_bf16_decoder_weights", contextlib.nullcontext)
    assert ours._generate(feats, 12).tolist() == ids
    if not bf16:  # in fp32 the step's matmuls and SDPA agree to rounding: the same tokens
        ours.decode_attention = "sdpa"
        assert ours._generate(feats, 12).tolist() == ids
