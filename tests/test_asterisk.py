import numpy as np
import pytest

from pipeline.config import AsteriskSource
from pipeline.errors import UserError
from pipeline.prepare.corpora import asterisk
from pipeline.prepare.corpora.base import Candidate, Limits, Reject, SourceContext, ingest


def ctx(tmp_path):
    return SourceContext(seed=0, set_name="ast", split="test", work_dir=tmp_path)


def test_transcripts_drop_tones_and_silence():
    assert asterisk.speech_text("[this is a simple beep tone]") == ""
    assert asterisk.speech_text("(10 seconds of silence)") == ""
    assert asterisk.speech_text("<beep ascending>") == ""
    assert asterisk.speech_text("at [@]") == "at"
    assert asterisk.speech_text("Please enter your  password.") == "Please enter your password."


def test_guard_and_test_parts_split_the_prompts(tmp_path):
    items = {}
    for part in ("guard", "test", "all"):
        out = list(asterisk.candidates(AsteriskSource(kind="asterisk", part=part), ctx(tmp_path)))
        items[part] = out
    ids = {p: {c.id for c in items[p] if isinstance(c, Candidate)} for p in items}
    assert ids["guard"].isdisjoint(ids["test"])
    assert ids["guard"] | ids["test"] == ids["all"]
    assert len(ids["all"]) > 500 and min(len(ids["guard"]), len(ids["test"])) > 200
    dropped = {r.id: r.reason for r in items["all"] if isinstance(r, Reject)}
    assert "asterisk-beep" in dropped and "asterisk-silence-1" in dropped
    # the packages ship one transcript without its recording: skipped, with the reason
    assert all(r.startswith(("not speech", "audio file missing")) for r in dropped.values())


def test_real_prompt_is_resampled_to_16k(tmp_path):
    cands = asterisk.candidates(AsteriskSource(kind="asterisk", part="all", limit=3), ctx(tmp_path))
    cand = next(c for c in cands if isinstance(c, Candidate))
    row = ingest(cand, tmp_path / "a.flac", Limits())
    assert row["_converted"] == ["resampled_from"]
    wave, changes = cand.load(16000)
    assert changes == {"resampled_from": 8000}
    assert np.sqrt(np.mean(wave**2)) > 0.01
    assert row["duration_s"] == len(wave) / 16000 and row["accent"] == "us"


def test_prompts_in_spanish_and_french(tmp_path):
    """Each installed language's prompts, its speaker and accent from Debian's voice folder;
    the Spanish transcripts are mostly written without diacritics, the French ones keep theirs."""
    found = {}
    for language in ("es", "fr"):
        source = AsteriskSource(kind="asterisk", part="all", language=language)
        out = list(asterisk.candidates(source, ctx(tmp_path)))
        found[language] = [c for c in out if isinstance(c, Candidate)]
        assert len(found[language]) > 150
    es, fr = found["es"][0], found["fr"][0]
    assert (es.speaker, es.accent) == ("asterisk-allison", "mx")
    assert (fr.speaker, fr.accent) == ("asterisk-june", "ca")
    accented = {
        k: sum(any(ch in c.text for ch in "áéíóúñèàç") for c in v) for k, v in found.items()
    }
    assert accented["es"] < 0.1 * len(found["es"]) and accented["fr"] > 50
    wave, changes = fr.load(16000)
    assert changes == {"resampled_from": 8000} and np.abs(wave).max() > 0.01


def test_missing_language_names_its_packages(tmp_path):
    source = AsteriskSource(kind="asterisk", language="zz")
    with pytest.raises(UserError, match="apt-get install asterisk-core-sounds-zz-wav"):
        list(asterisk.candidates(source, ctx(tmp_path)))
