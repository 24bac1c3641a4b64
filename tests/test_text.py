"""The text normaliser: what it unifies, what it leaves apart, and that it is fast."""

from __future__ import annotations

import random
import time

import pytest

from pipeline.text import BRITISH_TO_AMERICAN, normalize, normalize_batch

UNIFIED = [
    ("Set a timer for ten minutes.", "Set a timer for 10 minutes"),
    ("seven thirty a m", "7:30 a.m."),
    ("Wake me at seven thirty AM", "wake me at 7:30am"),
    ("nine forty five p m", "9:45 P.M."),
    ("seven oh five", "7:05"),
    ("twenty one degrees", "21 degrees"),
    ("twenty-one degrees", "21 degrees"),
    ("What's the weather", "what is the weather"),
    ("What\u2019s the weather", "what is the weather"),
    ("Turn on the TV.", "turn on the tv"),
    ("Turn on the T.V.", "turn on the tv"),
    ("six o'clock", "6 o clock"),
    ("set the volume to fifty percent", "Set the volume to 50%"),
    ("five pounds", "£5"),
    ("two and a half hours", "2.5 hours"),
    ("the twenty first of June", "the 21st of june"),
    ("I can't hear you", "I cannot hear you"),
    ("OK, play jazz", "okay play jazz"),
    ("Um, play [noise] jazz", "play jazz"),
    ("my favourite colour is grey", "my favorite color is gray"),
    ("organise the programme at the centre", "organize the program at the center"),
    ("travelling two kilometres", "traveling 2 kilometers"),
    ("Cancelled: litres of aluminium", "canceled liters of aluminum"),
]

# Different words, or forms the rules do not reach: a recogniser that writes one for the other is
# scored with an error. Kept here so that a change in behaviour is noticed.
NOT_UNIFIED = [
    ("half past seven", "7:30"),
    ("quarter to eight", "7:45"),
    ("seven o'clock", "7:00"),
    ("a hundred", "100"),
    ("all right", "alright"),
    ("send an e-mail", "send an email"),
    ("turn on the t v", "turn on the tv"),
    ("call five five five one two three four", "call 555-1234"),
    ("call mum", "call mom"),
]


@pytest.mark.parametrize(("a", "b"), UNIFIED)
def test_unified(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize(("a", "b"), NOT_UNIFIED)
def test_not_unified(a: str, b: str) -> None:
    assert normalize(a) != normalize(b)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Set a timer for ten minutes.", "set a timer for 10 minutes"),
        ("7:30 a.m.", "730 am"),
        ("Wake me at 6 o'clock", "wake me at 6 oclock"),  # not "60 clock"
        ("half past seven", "half past 7"),
        ("Play song number 1", "play song number one"),
        ("...", ""),
        ("  ", ""),
        ("naïve café", "naive cafe"),
        ("I am here", "i am here"),  # "am" away from a number is left alone
    ],
)
def test_exact_output(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_idempotent() -> None:
    texts = [a for pair in UNIFIED + NOT_UNIFIED for a in pair]
    assert [normalize(t) for t in normalize_batch(texts)] == normalize_batch(texts)


def test_spelling_mapping_is_lowercase_single_words() -> None:
    assert 50 <= len(BRITISH_TO_AMERICAN) <= 150
    for british, american in BRITISH_TO_AMERICAN.items():
        assert british == british.lower() and " " not in british
        assert normalize(british) == american


def test_batch_keeps_order() -> None:
    assert normalize_batch(["Ten", "Colour", ""]) == ["10", "color", ""]


def test_ten_thousand_sentences_are_fast() -> None:
    words = [
        "set",
        "a",
        "timer",
        "for",
        "ten",
        "minutes",
        "turn",
        "on",
        "the",
        "lights",
        "at",
        "seven",
        "thirty",
        "p",
        "m",
    ]
    rng = random.Random(0)
    # Unique sentences, and a cleared cache, so that the timing is of real work.
    texts = [f"{i} " + " ".join(rng.choices(words, k=rng.randint(3, 12))) for i in range(10_000)]
    normalize.cache_clear()
    start = time.perf_counter()
    normalize_batch(texts)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"10,000 sentences took {elapsed:.2f} s"
