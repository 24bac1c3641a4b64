import collections
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.prepare.corpora import grammar

PARTS = ("train", "dev", "test")  # template/value parts; 'heldout' uses the train part
SPEAKABLE = re.compile(r"[A-Z][A-Za-z']*(,? [A-Za-z']+)*[.?]")


def everything(split: str) -> list[tuple[str, str]]:
    return grammar.sample(split, grammar.count(split), np.random.default_rng(0))


@pytest.fixture(scope="module")
def pairs() -> dict[str, list[tuple[str, str]]]:
    return {split: everything(split) for split in grammar.SPLITS}


@pytest.fixture(scope="module")
def texts(pairs) -> dict[str, set[str]]:
    return {split: {text for _, text in found} for split, found in pairs.items()}


def template_pattern(template: str) -> re.Pattern:
    """Matches what the template can say with ANY value of its lists, capturing the values."""
    pieces = re.split(r"(\{[a-z_]+\d*\})", template)
    out = []
    for piece in pieces:
        if piece.startswith("{"):
            (name,) = grammar.slot_lists(piece)
            values = sorted(grammar.SLOTS[name], key=len, reverse=True)
            out.append("(" + "|".join(map(re.escape, values)) + ")")
        else:
            out.append(re.escape(piece))
    return re.compile("".join(out))


@pytest.fixture(scope="module")
def parsers() -> dict[str, list[tuple[str, str, re.Pattern]]]:
    """first word -> (intent, template, pattern) of every template that starts with it"""
    by_first_word = collections.defaultdict(list)
    for intent, templates in grammar.TEMPLATES.items():
        for template in templates:
            first = template.split()[0]
            by_first_word[first].append((intent, template, template_pattern(template)))
    return by_first_word


def test_intents_templates_and_slot_lists():
    assert len(grammar.INTENTS) >= 15
    assert tuple(grammar.TEMPLATES) == grammar.INTENTS
    used = set()
    for intent, templates in grammar.TEMPLATES.items():
        assert 6 <= len(templates) <= 12, intent
        assert len(set(templates)) == len(templates), intent
        for template in templates:
            assert template[0].isupper() and template[-1] in ".?", template
            used.update(grammar.slot_lists(template))
    assert used == set(grammar.SLOTS)
    for name, values in grammar.SLOTS.items():
        assert len(values) >= 10, name
    # every value belongs to one list only, so its part (train/dev/test) is unambiguous
    every = collections.Counter(v.lower() for values in grammar.SLOTS.values() for v in values)
    assert [v for v, n in every.items() if n > 1] == []


def test_articles_agree_with_values():
    for templates in grammar.TEMPLATES.values():
        for template in templates:
            for article, name in re.findall(r"\b(a|an) \{([a-z_]+?)\d*\}", template):
                for value in grammar.SLOTS[name]:
                    assert (value[0].lower() in "aeiou") == (article == "an"), (template, value)


@pytest.mark.parametrize(
    "groups", [grammar.TEMPLATES.values(), grammar.SLOTS.values()], ids=["templates", "values"]
)
def test_partition_is_about_70_10_20_and_never_empty(groups):
    for items in groups:
        parts = grammar.partition(items)
        assert sorted(sum(parts.values(), ())) == sorted(items)
        assert all(parts[name] for name in PARTS), items
        assert len(parts["train"]) >= len(parts["test"]) >= len(parts["dev"])
        assert 0.5 <= len(parts["train"]) / len(items) <= 0.8, items


def test_sizes(pairs):
    assert grammar.count("train") > 20_000
    for split in ("heldout", "dev", "test"):
        assert grammar.count(split) >= 2_000, split
    held = grammar.count("heldout") / (grammar.count("heldout") + grammar.count("train"))
    assert 0.04 < held < 0.06
    for split, found in pairs.items():
        assert len(found) == len({text for _, text in found}) == grammar.count(split)
        assert {intent for intent, _ in found} == set(grammar.INTENTS), split


def test_splits_are_disjoint(texts):
    for a, b in [(a, b) for i, a in enumerate(grammar.SPLITS) for b in grammar.SPLITS[i + 1 :]]:
        assert not texts[a] & texts[b], (a, b)


def test_text_is_speakable(texts):
    for split, sentences in texts.items():
        for text in sentences:
            assert SPEAKABLE.fullmatch(text), (split, text)
            words = text[:-1].replace(",", "").split()
            assert 3 <= len(words) <= 16, text
            doubled = {a for a, b in zip(words, words[1:], strict=False) if a.lower() == b.lower()}
            assert not doubled & {"the", "a", "an", "to", "and", "of", "in", "on", "at"}, text


@pytest.mark.parametrize("split", grammar.SPLITS)
def test_sentences_use_only_their_own_templates_and_values(split, pairs, parsers):
    """Parse sentences back against every template of every part: whatever template can say a
    sentence must belong to the sentence's part, and so must every value it fills in. All of
    dev, test and heldout are checked, and a sample of train."""
    part = "train" if split == "heldout" else split
    own_templates = {t for ts in grammar.TEMPLATES.values() for t in grammar.partition(ts)[part]}
    own_values = {v for vs in grammar.SLOTS.values() for v in grammar.partition(vs)[part]}
    for intent, text in pairs[split][:20_000]:
        found = 0
        for parser_intent, template, pattern in parsers[text.split()[0]]:
            match = pattern.fullmatch(text)
            if match:
                found += 1
                assert template in own_templates, (split, text, template)
                assert set(match.groups()) <= own_values, (split, text, template)
                assert parser_intent == intent, (text, parser_intent, intent)
        assert found >= 1, text


def test_sample_is_deterministic_distinct_and_balanced():
    first = grammar.sample("train", 5000, np.random.default_rng(7))
    assert first == grammar.sample("train", 5000, np.random.default_rng(7))
    assert first != grammar.sample("train", 5000, np.random.default_rng(8))
    assert len({text for _, text in first}) == 5000
    per_intent = collections.Counter(intent for intent, _ in first)
    assert set(per_intent) == set(grammar.INTENTS)
    assert max(per_intent.values()) - min(per_intent.values()) <= 1
    # intents are interleaved, not in blocks
    assert len({intent for intent, _ in first[:100]}) > len(grammar.INTENTS) // 2


def test_sample_fills_from_larger_intents_when_small_ones_run_out():
    sizes = collections.Counter(intent for intent, _ in everything("dev"))
    assert min(sizes.values()) < grammar.count("dev") // len(grammar.INTENTS)  # unbalanced
    n = grammar.count("dev") - 10
    got = collections.Counter(i for i, _ in grammar.sample("dev", n, np.random.default_rng(0)))
    assert sum(got.values()) == n
    for intent in grammar.INTENTS:
        # an intent is taken whole, or gets as many as the most any intent gets (give or take 1)
        assert got[intent] == sizes[intent] or got[intent] >= max(got.values()) - 1, intent


def test_sample_all_of_a_split_and_errors():
    everything_dev = everything("dev")
    assert len({text for _, text in everything_dev}) == grammar.count("dev")
    assert grammar.sample("dev", 0, np.random.default_rng(0)) == []
    for n in (grammar.count("dev") + 1, -1):
        with pytest.raises(ValueError, match="dev"):
            grammar.sample("dev", n, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown split"):
        grammar.sample("validation", 1, np.random.default_rng(0))


def test_sample_is_fast():
    grammar.count("train")  # the pools are listed once per process
    start = time.perf_counter()
    grammar.sample("train", 10_000, np.random.default_rng(0))
    assert time.perf_counter() - start < 1.0


def test_same_sentences_whatever_the_python_hash_seed():
    code = (
        "import numpy as np; from pipeline.prepare.corpora import grammar; "
        "print(grammar.count('test'), grammar.sample('test', 30, np.random.default_rng(3)))"
    )
    root = Path(__file__).resolve().parents[1]
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(root)},
        ).stdout
        for seed in ("1", "2")
    }
    here = f"{grammar.count('test')} {grammar.sample('test', 30, np.random.default_rng(3))}\n"
    assert outputs == {here}
