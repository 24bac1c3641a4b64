"""What every source shares: transcript checks and the keep rules that cut sets from a corpus."""

import pytest

from pipeline.config import Keep
from pipeline.prepare.corpora.base import bucket, check_text, kept


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("turn on the lights", None),
        ("<breath> turn on the lights <laugh>", None),
        ("", "empty transcript"),
        (None, "empty transcript"),
        ("IGNORE_TIME_SEGMENT_IN_SCORING", "segment excluded from scoring"),
        (" ignore_time_segment_in_scoring ", "segment excluded from scoring"),
        ("<laugh>", "no words: only non-speech tags"),
        ("<breath> [noise] <dtmf>", "no words: only non-speech tags"),
    ],
)
def test_check_text(text, reason):
    got = check_text(text)
    assert got == reason if reason is None else got.startswith(reason)


def test_keep_rules():
    assert kept(None, "u1", "s1", "us")
    assert kept(Keep(accents=("Nigerian English",)), "u1", "s1", "nigerian english")
    assert not kept(Keep(accents=("Nigerian English",)), "u1", "s1", "Kenyan English")
    assert kept(Keep(speakers=("ABA",)), "u1", "ABA", "arabic")
    assert not kept(Keep(speakers=("ABA",)), "u1", "aba", "arabic")  # speaker ids are exact


def test_ranges_split_speakers_and_utterances_into_disjoint_sets():
    speakers = [f"spk{i}" for i in range(200)]
    low = {s for s in speakers if kept(Keep(speaker_range=(0.0, 0.25)), "u", s, "a")}
    high = {s for s in speakers if kept(Keep(speaker_range=(0.25, 1.0)), "u", s, "a")}
    assert not low & high and low | high == set(speakers)
    assert 30 <= len(low) <= 70  # about a quarter: the buckets are spread evenly
    # every utterance of a speaker goes with the speaker
    assert all(kept(Keep(speaker_range=(0.0, 0.25)), f"u{i}", "spk0", "a") for i in range(20)) == (
        "spk0" in low
    )
    ids = [f"utt{i}" for i in range(200)]
    first = {u for u in ids if kept(Keep(utterance_range=(0.0, 0.5)), u, "s", "a")}
    second = {u for u in ids if kept(Keep(utterance_range=(0.5, 1.0)), u, "s", "a")}
    assert not first & second and first | second == set(ids) and 70 <= len(first) <= 130
    assert 0.0 <= bucket("utterance", "x") < 1.0 and bucket("speaker", "x") != bucket(
        "utterance", "x"
    )
