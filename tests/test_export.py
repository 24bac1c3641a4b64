"""rsft export: the model as a CTranslate2 folder that faster-whisper reads as transformers does."""

from __future__ import annotations

import json

import jiwer
import numpy as np
import pytest

from pipeline import export, text
from pipeline.cli import main
from pipeline.config import load_recipe
from pipeline.errors import UserError
from pipeline.export import model_folder
from pipeline.models import bundled
from tests.test_bundled import MAX_TOKENS, converted, hf_tokens, prompts  # noqa: F401


@pytest.mark.slow
def test_exported_model_reads_real_speech_as_transformers_does(
    write_recipe,
    prompts,  # noqa: F811
    converted,  # noqa: F811
    hf_tokens,  # noqa: F811
):
    """Same log-mel input, same prompt: CTranslate2 on the export picks the transformers
    model's greedy tokens; faster-whisper reads the export as it reads the wheel's model."""
    import ctranslate2
    from faster_whisper import WhisperModel

    path = write_recipe({"model": {"bf16": False}})
    main(["export", str(path), "pretrained", "--quantization", "float32"])
    recipe = load_recipe(path)
    out = recipe.tree.export("pretrained-ct2-float32")
    record = json.loads((out / "export.json").read_text())
    assert record["quantization"] == "float32" and record["prefix"] == [50257, 50362]
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in out.iterdir()
    }
    waves = [wave for _, wave, _ in prompts]
    features = converted[2](waves, sampling_rate=16000, return_tensors="np").input_features
    results = ctranslate2.models.Whisper(str(out), device="cpu").generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [record["prefix"]] * len(waves),
        beam_size=1,
        max_length=MAX_TOKENS,
    )
    same_tokens = sum(r.sequences_ids[0] == t for r, t in zip(results, hf_tokens, strict=True))

    def read(folder) -> list[str]:
        reader = WhisperModel(str(folder), device="cpu", compute_type="float32")
        said = []
        for wave in waves:
            segments, _ = reader.transcribe(
                wave,
                language="en",
                beam_size=1,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
                temperature=0,
            )
            said.append(text.normalize("".join(s.text for s in segments)))
        return said

    exported, wheel = read(out), read(bundled.bundled_source_dir())
    refs = [ref for _, _, ref in prompts]
    ours = [text.normalize(converted[2].tokenizer.decode(t)) for t in hf_tokens]
    same_reading = sum(a == b for a, b in zip(exported, wheel, strict=True))
    print(
        f"export: {same_tokens}/{len(refs)} token sequences as transformers; faster-whisper "
        f"{same_reading}/{len(refs)} as on the wheel's model; WER transformers "
        f"{jiwer.wer(refs, ours):.3f}, the export by faster-whisper {jiwer.wer(refs, exported):.3f}"
    )
    assert same_tokens >= 0.9 * len(refs)
    assert same_reading >= 0.9 * len(refs)


def test_export_refuses_what_it_cannot_export(write_recipe, tmp_path, capsys):
    recipe = load_recipe(write_recipe({}))
    with pytest.raises(UserError, match="no model for run 'nope'"):
        model_folder(recipe, "nope")
    assert model_folder(recipe, str(tmp_path)) == tmp_path
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "recipe.yaml"), "pretrained", "--quantization", "int3"])
    assert "--quantization 'int3': one of int8" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty and not an earlier export"):
        export.run(recipe, "pretrained", out=mine)
    assert (mine / "notes.txt").read_text() == "keep me"
