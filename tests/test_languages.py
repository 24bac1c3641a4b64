"""Languages: the bundled multilingual Whisper base (converted like tiny.en, checked against
CTranslate2 on real Spanish prompts), language and task tokens, text normalisation per language."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch
import transformers

from pipeline import audio, text
from pipeline.errors import UserError
from pipeline.fsio import read_json
from pipeline.models import bundled
from pipeline.models.base import TrainingLayout
from pipeline.models.whisper import Whisper
from pipeline.prepare.corpora.asterisk import read_transcripts, speech_text
from tests.factories import small_whisper

SOUNDS_ES = Path("/usr/share/asterisk/sounds/es_MX_f_Allison")
TRANSCRIPTS_ES = Path("/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz")
N_PROMPTS = 20
MAX_PROMPT_S = 10.0


# -- normalisation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "language, raw, want",
    [
        (
            "es",
            "¿Está el Niño aquí? Sí, [música] ÉL dijo: «hola».",
            "está el niño aquí sí él dijo hola",
        ),
        ("fr", "L'élève a dit : « Où est-il ? » (rires)", "l élève a dit où est il"),
        ("it", "Perché? È così — però sì!", "perché è così però sì"),
        ("ru", "Ёлка, ЗДРАВСТВУЙТЕ! Как дела?", "ёлка здравствуйте как дела"),
        ("pt", "Você está aí? Não, obrigado.", "você está aí não obrigado"),
    ],
)
def test_normaliser_keeps_diacritics_and_drops_punctuation(language, raw, want):
    assert text.normalize(raw, language) == want
    assert text.normalize(want, language) == want  # idempotent


def test_diacritics_are_one_form_and_can_be_stripped():
    composed, decomposed = "está aquí", unicodedata.normalize("NFD", "está aquí")
    assert composed != decomposed
    assert text.normalize(decomposed, "es") == text.normalize(composed, "es") == "está aquí"
    assert text.normalize("Está el niño aquí", "es", strip_diacritics=True) == "esta el nino aqui"
    # English rewrites numbers and always drops diacritics; other languages keep numbers as said
    assert text.normalize("Café at seven thirty a.m.") == "cafe at 730 am"
    assert text.normalize("dos y 2", "es") == "dos y 2"
    assert text.normalize_batch(["Sí.", "SI"], "es") == ["sí", "si"]


# -- language and task tokens -------------------------------------------------------------


@pytest.fixture(scope="session")
def base_processor():
    return bundled.processor(bundled.BASE.source_dir(), bundled.BASE)


@pytest.fixture(scope="session")
def tiny_multilingual(base_processor):
    """A 1-layer random Whisper with the base model's vocabulary and generation config."""
    model = small_whisper(bundled.BASE)
    ct2_config = read_json(bundled.BASE.source_dir() / "config.json")
    model.generation_config = bundled.generation_config(
        ct2_config, 448, bundled.BASE, base_processor.tokenizer
    )
    return model


def first_decoder_inputs(wrapper: Whisper, wave: np.ndarray) -> list[int]:
    """The decoder's input at the first generation step (the prompt it was given)."""
    seen = []

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and not seen:
            seen.append(ids[0].tolist())

    handle = wrapper.model.model.decoder.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        wrapper.transcribe([wave])
    finally:
        handle.remove()
    return seen[0]


def test_language_and_task_tokens_lead_reading_and_training(tiny_multilingual, base_processor):
    wave = np.zeros(16000, dtype=np.float32)
    for language, task in (("es", "transcribe"), ("fr", "translate")):
        reader = Whisper(tiny_multilingual, base_processor, "m", language=language, task=task)
        lang = base_processor.tokenizer.convert_tokens_to_ids(f"<|{language}|>")
        want = [bundled.BASE.sot, lang, bundled.BASE.task_ids()[task], bundled.BASE.no_timestamps]
        assert reader.prefix == want
        assert first_decoder_inputs(reader, wave) == want
        batch = reader.training_batch([wave], ["hola"], TrainingLayout("standard", 8.0, 0.3))
        assert batch["decoder_input_ids"][0, :4].tolist() == want
        assert (batch["labels"][0, :3] == -100).all() and batch["labels"][0, 3] != -100
    with pytest.raises(UserError, match="not a language of m"):
        Whisper(tiny_multilingual, base_processor, "m", language="xx")


def test_english_only_model_refuses_another_language(tiny_whisper_dir):
    model = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_whisper_dir)
    processor = transformers.WhisperProcessor.from_pretrained(tiny_whisper_dir)
    english = Whisper(model, processor, "tiny.en")
    assert english.prefix == [bundled.SOT, bundled.NO_TIMESTAMPS]
    for kwargs in ({"language": "es"}, {"task": "translate"}):
        with pytest.raises(UserError, match="is English-only"):
            Whisper(model, processor, "tiny.en", **kwargs)


def test_unknown_bundled_model_is_one_line(tmp_path):
    with pytest.raises(UserError, match="bundled models: bundled:whisper-tiny.en"):
        bundled.load_bundled(tmp_path, name="bundled:whisper-huge")


# -- the converted base model on real Spanish speech ---------------------------------------


def plain(words: str) -> str:
    return text.normalize(words, "es", strip_diacritics=True)  # the transcripts have none


@pytest.fixture(scope="module")
def spanish_prompts() -> list[tuple[np.ndarray, str]]:
    usable = []
    for key, raw in sorted(read_transcripts(TRANSCRIPTS_ES).items()):
        words, wav = speech_text(raw), SOUNDS_ES / f"{key}.wav"
        fits = wav.is_file() and sf.info(str(wav)).duration <= MAX_PROMPT_S
        if fits and len(words.split()) >= 3 and not re.search(r"\d", words):
            usable.append((wav, words))
    chosen = usable[:: len(usable) // N_PROMPTS][:N_PROMPTS]
    return [(audio.read(wav, 16000)[0], plain(words)) for wav, words in chosen]


@pytest.mark.slow
def test_converted_base_agrees_with_ctranslate2_on_spanish(tmp_path_factory, spanish_prompts):
    import ctranslate2  # installed with faster-whisper

    torch.manual_seed(0)
    cache = tmp_path_factory.mktemp("models")
    model, processor = bundled.load_bundled(cache, name=bundled.BASE.id)
    record = read_json(cache / bundled.BASE.cache_name / "conversion.json")
    assert record["source_sha256"] == bundled.BASE.sha256
    assert 70e6 < record["parameters"] < 80e6
    reader = Whisper(model.eval(), processor, bundled.BASE.id, language="es")
    waves = [wave for wave, _ in spanish_prompts]
    features = processor(waves, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        rows = model.generate(features, language="es", task="transcribe", max_new_tokens=120)
    ours = [[t for t in row.tolist() if t < bundled.BASE.eot] for row in rows]
    reference = ctranslate2.models.Whisper(
        str(bundled.ct2_folder(bundled.BASE, cache)), device="cpu", compute_type="float32"
    )
    results = reference.generate(
        ctranslate2.StorageView.from_array(np.ascontiguousarray(features, dtype=np.float32)),
        [reader.prefix] * len(waves),
        beam_size=1,
        max_length=124,
    )
    theirs = [r.sequences_ids[0] for r in results]
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    refs = [ref for _, ref in spanish_prompts]
    decode = processor.tokenizer.decode
    wer_ours = jiwer.wer(refs, [plain(decode(r)) for r in ours])
    wer_theirs = jiwer.wer(refs, [plain(decode(r)) for r in theirs])
    print(
        f"base on {len(refs)} es prompts: {same} same; WER {wer_ours:.3f} vs CT2 {wer_theirs:.3f}"
    )
    assert same >= 0.9 * len(refs)
    assert abs(wer_ours - wer_theirs) <= 0.01
    assert wer_ours < 0.4  # it reads Spanish: not an English model's output
    # the pipeline's own reader gives the same words as plain generate
    assert [plain(t) for t in reader.transcribe(waves[:4])] == [plain(decode(r)) for r in ours[:4]]
