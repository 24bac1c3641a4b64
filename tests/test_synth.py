from dataclasses import replace

import numpy as np
import pytest

from pipeline.config import SynthPart, SynthSource
from pipeline.errors import UserError
from pipeline.prepare.corpora import synth, texts
from pipeline.prepare.corpora.base import SourceContext


def ctx(tmp_path, name="s"):
    return SourceContext(seed=0, set_name=name, split="pool", work_dir=tmp_path)


def test_every_accent_has_speakers_in_every_split():
    for voices in synth.ACCENT_VOICES.values():
        for voice in voices:
            per_split = {
                s: synth.speakers_in_split(voice, s) for s in ("train", "heldout", "dev", "test")
            }
            assert all(per_split.values()), voice
            ids = [{sp.id for sp in group} for group in per_split.values()]
            assert sum(map(len, ids)) == len(set().union(*ids)) == len(synth.speakers(voice))


def test_resolve_voices():
    assert synth.resolve_voices(("caribbean",)) == ["espeak:en-029"]
    assert synth.resolve_voices(("us", "flite:rms")) == [
        "espeak:en-us",
        "flite:rms",
        "flite:slt",
        "flite:kal16",
    ]
    assert len(synth.resolve_voices(("all",))) == 12
    with pytest.raises(UserError, match="unknown voice or accent 'martian'"):
        synth.resolve_voices(("martian",))


@pytest.mark.parametrize("voice", sorted(synth.VOICE_ACCENT))
def test_every_voice_renders_real_speech(voice):
    speaker = synth.speakers_in_split(voice, "test")[0]
    wave, _ = synth.render(tuple(speaker.command("Turn off the bedroom lights.")), 16000)
    duration = len(wave) / 16000
    assert 0.8 < duration < 4.0
    assert np.sqrt(np.mean(wave**2)) > 0.01


def test_text_starting_with_a_dash_is_spoken_not_parsed():
    speaker = synth.speakers("espeak:en-us")[0]
    wave, _ = synth.render(tuple(speaker.command("-v sounds like an option.")), 16000)
    assert len(wave) / 16000 > 1.0


def test_candidates_balance_accents_and_are_deterministic(tmp_path):
    cfg = SynthSource(
        kind="synth",
        text_split="test",
        speaker_split="test",
        parts=(
            SynthPart(count=40, voices=("us", "caribbean")),
            SynthPart(count=10, voices=("nyc",)),
        ),
    )
    first = list(synth.candidates(cfg, ctx(tmp_path)))
    again = list(synth.candidates(cfg, ctx(tmp_path)))
    assert [(c.id, c.text, c.speaker, c.spec) for c in first] == [
        (c.id, c.text, c.speaker, c.spec) for c in again
    ]
    accents = [c.accent for c in first]
    assert accents.count("us") == accents.count("caribbean") == 20 and accents.count("nyc") == 10
    assert len({c.text for c in first}) == 50
    test_speakers = {s.id for v in synth.VOICE_ACCENT for s in synth.speakers_in_split(v, "test")}
    assert {c.speaker for c in first} <= test_speakers
    other = list(synth.candidates(cfg, ctx(tmp_path, name="other")))
    assert [c.text for c in other] != [c.text for c in first]


FORTUNES = """Living your life is a task so difficult, it has never been attempted before.
%
Q:\tWhat do monsters drink?
A:\tCoke-a-Cola.  It comes in 12 ounce cans.
%
A good name is rather to be chosen than great riches.
		-- Proverbs
%
See http://example.org for more.  Short one.
%
Living your life is a task so difficult, it has never been attempted before.
"""


def test_text_sentences_keep_what_a_voice_reads_as_written():
    assert texts.sentences(FORTUNES) == [
        "Living your life is a task so difficult, it has never been attempted before.",
        "What do monsters drink?",
        "A good name is rather to be chosen than great riches.",
    ]
    plain = "One sentence on a line here.\nAnd two on the next line. Both are kept here.\n"
    assert texts.sentences(plain) == [
        "One sentence on a line here.",
        "And two on the next line.",
        "Both are kept here.",
    ]


def test_candidates_from_text_files(tmp_path):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "a").write_text(FORTUNES)
    (folder / "a.dat").write_bytes(b"\x00\x01 binary index")
    colours = ("red", "blue", "green", "grey", "pink", "brown", "black", "white", "gold", "tan")
    lines = [f"The {w} cat sat on the {v} mat today." for w in colours for v in colours]
    (tmp_path / "b.txt").write_text("\n".join(lines))
    cfg = SynthSource(
        kind="synth",
        texts=(str(folder), str(tmp_path / "b.txt")),
        parts=(SynthPart(count=6, voices=("us", "gb")),),
    )
    first = list(synth.candidates(cfg, ctx(tmp_path)))
    assert len({c.text for c in first}) == 6
    assert {c.extra["intent"] for c in first} == {"text"}
    assert [c.text for c in synth.candidates(cfg, ctx(tmp_path))] == [c.text for c in first]
    assert {c.accent for c in first} == {"us", "gb"}
    # text_split deals the sentences into disjoint shares, as the grammar's splits are
    every = texts.file_sentences(cfg.texts, "t")
    shares = {split: texts.in_split(every, split) for split in ("train", "heldout", "dev", "test")}
    assert sum(len(v) for v in shares.values()) == len(every) == 103
    assert len(set().union(*shares.values())) == len(every)
    assert 55 <= len(shares["train"]) <= 85 and all(len(v) >= 3 for v in shares.values())
    assert {c.text for c in first} <= set(shares["train"])
    test_cfg = replace(cfg, text_split="test", parts=(SynthPart(3, ("us",)),))
    assert {c.text for c in synth.candidates(test_cfg, ctx(tmp_path))} <= set(shares["test"])
    n = len(shares["test"])
    too_many = replace(test_cfg, parts=(SynthPart(n + 1, ("us",)),))
    with pytest.raises(UserError, match=f"hold {n} usable sentences in the 'test' share"):
        list(synth.candidates(too_many, ctx(tmp_path)))
    missing = SynthSource(kind="synth", texts=("/no/such/file",), parts=(SynthPart(1, ("us",)),))
    with pytest.raises(UserError, match="source.texts: no text file or folder at /no/such/file"):
        list(synth.candidates(missing, ctx(tmp_path)))


def test_spanish_voices_read_spanish_text(tmp_path):
    """Other languages' voices read text files in their language, accents and ¿¡ kept."""
    assert texts.sentences(
        "¿Dónde está la estación de tren? Cuesta 5 euros. ¡Qué día tan bonito!"
    ) == [
        "¿Dónde está la estación de tren?",
        "¡Qué día tan bonito!",
    ]
    things = ("manzana", "pera", "naranja", "piña", "uva", "cereza")
    lines = [f"El niño {v} una {t} muy rica." for v in ("come", "compra", "pide") for t in things]
    lines += [f"¿Dónde está la {t} pública?" for t in ("biblioteca", "piscina", "plaza")]
    (tmp_path / "es.txt").write_text("\n".join(lines), encoding="utf-8")
    cfg = SynthSource(
        kind="synth",
        texts=(str(tmp_path / "es.txt"),),
        parts=(SynthPart(count=2, voices=("es", "es_latam")),),
    )
    found = list(synth.candidates(cfg, ctx(tmp_path)))
    assert len({c.text for c in found}) == 2 and {c.text for c in found} <= set(lines)
    assert {c.accent for c in found} == {"es", "es_latam"}
    assert {c.extra["voice"] for c in found} == {"espeak:es", "espeak:es-419"}
    wave, _ = found[0].load(16000)
    assert len(wave) > 16000 and np.abs(wave).max() > 0.05
    grammar_only = SynthSource(kind="synth", parts=(SynthPart(count=2, voices=("es_latam",)),))
    with pytest.raises(UserError, match="voices espeak:es-419 need sentences in their language"):
        list(synth.candidates(grammar_only, ctx(tmp_path)))
    assert "espeak:es" not in synth.resolve_voices(("all",))  # 'all' is the English voices
