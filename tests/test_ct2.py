"""model.engine ct2: evaluate and the pseudo-labeller read Whisper through CTranslate2, as the
torch reader reads one request per 30 s window."""

from __future__ import annotations

import jiwer
import numpy as np
import pytest
import torch

from pipeline import text
from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.fsio import write_json
from pipeline.models import ct2
from pipeline.models.whisper import LoopStop, Whisper
from pipeline.report.stage import read_layout
from tests.test_bundled import converted, prompts  # noqa: F401


def torch_stop(tokens: list[int], repeats: int) -> list[int]:
    """Where the torch reader's LoopStop ends a row, found by asking it step by step."""
    stop = LoopStop(repeats, prompt_len=0)
    for end in range(1, len(tokens) + 1):
        if stop(torch.tensor([tokens[:end]]), None)[0]:
            return tokens[:end]
    return tokens


@pytest.mark.parametrize(
    "tokens",
    [
        [1, 2, 3, 4, 5],
        [1, 7, 7, 7, 7, 7, 2],
        [1, 2, 3, 2, 3, 2, 3, 2, 3, 9, 9],
        [5, *([1, 2, 3, 4, 5, 6, 7, 8] * 4), 0],
        [4, 4, 4, 1, 2, 1, 2, 1, 2, 1, 2],
    ],
)
def test_ct2_rows_stop_where_the_torch_reader_stops(tokens):
    assert ct2.loop_stop(tokens, 4) == torch_stop(tokens, 4)


def test_the_torch_engine_keeps_earlier_keys_and_ct2_enters_them():
    plain = ModelConfig().key(decodes=True)
    assert "engine" not in plain and "ct2_compute_type" not in plain
    fast = ModelConfig(engine="ct2").key(decodes=True)
    assert fast["engine"] == "ct2" and fast["ct2_compute_type"] == "int8"
    # scoring and training do not decode: the engine is not part of their keys
    assert ModelConfig(engine="ct2").key(decodes=False) == ModelConfig().key(decodes=False)


def test_report_flags_another_engine_like_another_layout(tmp_path):
    for run, engine in (("a", None), ("b", "torch"), ("c", "ct2 int8")):
        record = {"layout": "standard"} | ({"engine": engine} if engine else {})
        write_json(tmp_path / run / "test_target" / "wer.json", record)
    layouts = [read_layout(tmp_path / r, "test_target") for r in ("a", "b", "c")]
    assert layouts == ["standard", "standard", "standard (ct2 int8)"]


def test_ct2_engine_refuses_what_it_cannot_read(converted):  # noqa: F811
    _, model, processor = converted
    packed = Whisper(model, processor, "bundled:whisper-tiny.en", layout="packed")
    with pytest.raises(UserError, match="model.layout standard"):
        ct2.reader(packed, "ct2", "int8", None, "unused")
    assert ct2.reader(packed, "torch", "int8", None, "unused") is packed


@pytest.mark.slow
def test_ct2_engine_reads_real_speech_as_torch_does(converted, prompts, tmp_path):  # noqa: F811
    """Same prompts, same batches: CTranslate2 in float32 gives the torch reader's transcript
    on at least 90% of real prompts and its WER within half a point; int8 within a point.
    The conversion is cached by the weights' fingerprint; sampling is seeded per utterance."""
    _, model, processor = converted
    torch_reader = Whisper(model, processor, "bundled:whisper-tiny.en", loop_repeats=4)
    waves = [wave for _, wave, _ in prompts]
    refs = [ref for _, _, ref in prompts]

    def read(reader) -> list[str]:
        said = []
        for start in range(0, len(waves), 8):
            said += reader.transcribe(waves[start : start + 8])
        return text.normalize_batch(said)

    ours = read(torch_reader)
    wer = {"torch": jiwer.wer(refs, ours)}
    same = {}
    for compute in ("float32", "int8"):
        reader = ct2.reader(torch_reader, "ct2", compute, None, tmp_path)
        theirs = read(reader)
        wer[compute] = jiwer.wer(refs, theirs)
        same[compute] = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(f"ct2 engine on {len(refs)} real prompts: same transcripts {same}, WER {wer}")
    assert same["float32"] >= 0.9 * len(refs)
    assert abs(wer["float32"] - wer["torch"]) <= 0.005
    assert abs(wer["int8"] - wer["torch"]) <= 0.01
    folder = tmp_path / "ct2" / f"{torch_reader.fingerprint()}-int8"
    assert (folder / "export.json").is_file()
    made = (folder / "model.bin").stat().st_mtime_ns
    again = ct2.reader(torch_reader, "ct2", "int8", None, tmp_path)
    texts, scores = again.transcribe_scored(waves[:3])
    assert (folder / "model.bin").stat().st_mtime_ns == made  # read from the cache
    assert np.all(scores < 0) and len(texts) == 3
    drawn = again.sample(waves[0], 3, 1.0, seed=11)
    assert len(drawn) == 3 and len(set(drawn)) > 1  # samples, not the greedy transcript
    again.sample(waves[1], 3, 1.0, seed=12)  # what was drawn before does not matter
    assert again.sample(waves[0], 3, 1.0, seed=11) == drawn
