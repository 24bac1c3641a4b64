import numpy as np

from pipeline.config import AsteriskSource
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
