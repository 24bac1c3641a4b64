"""Whisper read through CTranslate2 (``model.engine: ct2``), for evaluate and pseudo-labels.

The model the stage loaded (a fine-tuned folder, LoRA adapters merged) is converted once by
CTranslate2's own converter, cached under the data tree's model folder by its weights'
fingerprint and the compute type, and decoded by CTranslate2's batched greedy search. It is
read as the torch reader reads the standard layout: each request alone in a 30 s window, the
same start tokens (language and task for a multilingual model), the same token budget per
second of audio, and a repetition loop cut where the torch reader stops it. Embeddings, losses
and training stay with torch; another layout (packed, short) is read by torch.

``convert`` is also what ``rsft export`` writes for deployment.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.fsio import write_json
from pipeline.models.base import SAMPLE_RATE
from pipeline.models.whisper import CHUNK_S, MAX_LOOP_PERIOD, Whisper, collapse_loops

log = logging.getLogger(__name__)

# what faster-whisper reads beside model.bin: the tokenizer and the log-mel settings
COPIED = ("tokenizer.json", "preprocessor_config.json")
MAX_POSITIONS = 448  # Whisper's decoder positions, start tokens included


def require():
    """The ctranslate2 module, or a one-line UserError saying how to get it."""
    try:
        import ctranslate2
    except ImportError:
        raise UserError(
            "CTranslate2 is not installed (pip install ctranslate2): it is needed by "
            "rsft export and model.engine ct2"
        ) from None
    return ctranslate2


def convert(model: Whisper, out: Path, quantization: str, record: dict) -> Path:
    """``model`` as a CTranslate2 folder at ``out`` (written beside it, then renamed into
    place, replacing an earlier one), with ``export.json`` holding ``record``."""
    converters = require().converters
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        plain = staging / "transformers"
        # a copy in full precision: the loaded model may hold bf16 weights for reading
        weights = {k: v.float() for k, v in model.model.state_dict().items()}
        model.model.save_pretrained(plain, state_dict=weights)
        model.processor.save_pretrained(plain)
        # faster-whisper reads the log-mel settings from the feature extractor's own file
        model.processor.feature_extractor.to_json_file(str(plain / "preprocessor_config.json"))
        converted = staging / "ct2"
        converters.TransformersConverter(str(plain), copy_files=list(COPIED)).convert(
            str(converted), quantization=quantization
        )
        write_json(converted / "export.json", record)
        if out.exists():  # an earlier conversion: set aside, then replaced in one rename
            out.rename(staging / "old")
        converted.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def loop_stop(tokens: Sequence[int], repeats: int) -> list[int]:
    """``tokens`` up to where the torch reader's LoopStop ends a row: the first point where
    its last tokens repeat one block of up to MAX_LOOP_PERIOD tokens ``repeats`` times."""
    for end in range(repeats, len(tokens) + 1):
        for period in range(1, MAX_LOOP_PERIOD + 1):
            span = period * repeats
            if span > end:
                break
            tail = tokens[end - span : end]
            if all(tail[i] == tail[i % period] for i in range(span)):
                return list(tokens[:end])
    return list(tokens)


class CT2Whisper:
    """A torch ``Whisper`` whose transcripts come from CTranslate2; every other attribute
    (embeddings, losses, the fingerprint, the language) is the torch model's own."""

    # raised when a change here changes transcripts (evaluate keys carry it)
    decoding_revision = 1
    layout = "standard"

    def __init__(self, whisper: Whisper, cache_dir: Path, compute_type: str, threads: int | None):
        if whisper.layout != "standard":
            raise UserError(
                f"model.engine ct2 reads one request per 30 s window (model.layout standard), "
                f"not {whisper.layout!r}"
            )
        self.torch = whisper
        self.compute_type = compute_type
        self.engine_name = f"ct2 {compute_type}"
        self.cache_dir = Path(cache_dir)
        self.threads = threads
        self._model = None  # converted and loaded on first use

    def __getattr__(self, name: str):
        return getattr(self.torch, name)

    def _engine(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        """A CTranslate2 model of the torch model's weights (converted on first use)."""
        ctranslate2 = require()
        folder = self.cache_dir / f"{self.torch.fingerprint()}-{self.compute_type}"
        if not (folder / "export.json").is_file():
            log.info("model.engine ct2: converting %s to %s", self.torch.name, folder)
            record = {"source": self.torch.name, "quantization": self.compute_type}
            convert(self.torch, folder, self.compute_type, record)
        supported = ctranslate2.get_supported_compute_types("cpu")
        if self.compute_type not in supported:
            raise UserError(
                f"model.ct2_compute_type {self.compute_type!r}: this CPU computes "
                f"{', '.join(sorted(supported))}"
            )
        return ctranslate2.models.Whisper(
            str(folder),
            device="cpu",
            compute_type=self.compute_type,
            intra_threads=self.threads or torch.get_num_threads(),
        )

    def _features(self, waves: Sequence[np.ndarray]):
        feats = self.torch.features(waves, CHUNK_S).float().cpu().numpy()
        return require().StorageView.from_array(np.ascontiguousarray(feats))

    def _max_length(self, waves: Sequence[np.ndarray]) -> int:
        longest = max(len(w) for w in waves) / SAMPLE_RATE
        return min(MAX_POSITIONS, len(self.torch.prefix) + self.torch._budget(longest))

    def _texts(self, rows: list[list[int]], stop: bool = True) -> list[str]:
        repeats = self.torch.loop_repeats
        if repeats:
            rows = [collapse_loops(loop_stop(r, repeats) if stop else r, repeats) for r in rows]
        decoded = self.torch.processor.batch_decode(rows, skip_special_tokens=True)
        return [t.strip() for t in decoded]

    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        return self.transcribe_scored(waves)[0]

    def transcribe_scored(self, waves: Sequence[np.ndarray]) -> tuple[list[str], np.ndarray]:
        """Greedy transcripts and CTranslate2's score of each: the mean log-probability of
        its generated tokens."""
        if not waves:
            return [], np.zeros(0, dtype=np.float32)
        results = self._engine().generate(
            self._features(waves),
            [self.torch.prefix] * len(waves),
            beam_size=1,
            max_length=self._max_length(waves),
            return_scores=True,
        )
        texts = self._texts([r.sequences_ids[0] for r in results])
        return texts, np.array([r.scores[0] for r in results], dtype=np.float32)

    def sample(self, wave: np.ndarray, n: int, temperature: float, seed: int) -> list[str]:
        """``n`` transcripts of one utterance drawn at ``temperature`` from the whole
        vocabulary, seeded by ``seed`` alone (the encoder runs once for all ``n``).

        CTranslate2 seeds a worker's random generator when the worker first draws, from the
        seed set then: a model loaded after the seed is set draws the same samples for the
        same seed, whatever was drawn before (a model kept across calls would not)."""
        ctranslate2 = require()
        ctranslate2.set_random_seed(seed)
        engine = self._load()
        encoded = np.array(engine.encode(self._features([wave]), to_cpu=True))
        repeated = ctranslate2.StorageView.from_array(np.repeat(encoded, n, axis=0))
        results = engine.generate(
            repeated,
            [self.torch.prefix] * n,
            beam_size=1,
            max_length=self._max_length([wave]),
            sampling_topk=0,
            sampling_temperature=temperature,
        )
        return self._texts([r.sequences_ids[0] for r in results])


def reader(model, engine: str, compute_type: str, threads: int | None, cache_dir: Path):
    """``model`` as evaluate and the pseudo-labeller read it under ``model.engine``."""
    if engine == "torch":
        return model
    if not isinstance(model, Whisper):
        raise UserError(f"model.engine {engine}: only Whisper models read through CTranslate2")
    return CT2Whisper(model, Path(cache_dir) / "ct2", compute_type, threads)
