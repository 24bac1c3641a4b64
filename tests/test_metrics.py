"""Error counts, corpus rates, bootstrap intervals, group tables, and agreement with NIST sclite."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import jiwer
import numpy as np
import pytest

from pipeline import metrics
from pipeline.text import normalize


def test_hand_counted_errors() -> None:
    refs = ["the cat sat on the mat", "turn on lights", "", "a b", "x"]
    hyps = ["the cat sit on mat", "turn on the lights", "hello there", "", "x"]
    frame = metrics.utterance_errors(refs, hyps, ids=["u1", "u2", "u3", "u4", "u5"])
    assert list(frame["id"]) == ["u1", "u2", "u3", "u4", "u5"]
    assert list(frame["substitutions"]) == [1, 0, 0, 0, 0]
    assert list(frame["deletions"]) == [1, 0, 0, 2, 0]
    assert list(frame["insertions"]) == [0, 1, 2, 0, 0]
    assert list(frame["errors"]) == [2, 1, 2, 2, 0]
    # The empty reference counts 0 words, but its two inserted words are errors.
    assert list(frame["ref_words"]) == [6, 3, 0, 2, 1]
    assert metrics.wer(frame) == pytest.approx(7 / 12)


def test_char_errors_count_spaces() -> None:
    frame = metrics.utterance_errors(["the cat", "ab"], ["the bat", "ab cd"])
    assert list(frame["char_errors"]) == [1, 3]
    assert list(frame["ref_chars"]) == [7, 2]
    assert metrics.cer(frame) == pytest.approx(4 / 9)


def test_corpus_rate_is_pooled_not_mean_of_rates() -> None:
    frame = metrics.utterance_errors(["a", "a b c d e f g h i j"], ["b", "a b c d e f g h i j"])
    assert metrics.wer(frame) == pytest.approx(1 / 11)  # the mean of rates would be 0.5


def test_no_reference_words_gives_nan() -> None:
    frame = metrics.utterance_errors([""], ["hello"])
    assert frame["insertions"].item() == 1
    assert math.isnan(metrics.wer(frame)) and math.isnan(metrics.cer(frame))
    assert all(math.isnan(v) for v in metrics.bootstrap_ci([1], [0], np.random.default_rng(0)))


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        metrics.utterance_errors(["a", "b"], ["a"])


VOCAB = np.array(["set", "a", "timer", "for", "ten", "minutes", "turn", "on", "the", "lights"])


def _random_system(
    n: int, error_rate: float, seed: int, hyp_seed: int | None = None
) -> tuple[list[str], list[str]]:
    """``n`` random references (fixed by ``seed``) and a hypothesis for each with edits.

    Two systems on the same references: same ``seed``, different ``hyp_seed``.
    """
    rng = np.random.default_rng(seed)
    refs = [" ".join(rng.choice(VOCAB, size=rng.integers(2, 10))) for _ in range(n)]
    rng = np.random.default_rng(seed if hyp_seed is None else hyp_seed)
    hyps = []
    for ref in refs:
        hyp = [str(rng.choice(VOCAB)) if rng.random() < error_rate else w for w in ref.split()]
        hyps.append(" ".join(w for w in hyp if rng.random() > error_rate / 2))
    return refs, hyps


def test_agrees_with_jiwer_corpus_measures() -> None:
    refs, hyps = _random_system(300, 0.2, seed=1)
    frame = metrics.utterance_errors(refs, hyps)
    assert metrics.wer(frame) == pytest.approx(jiwer.wer(refs, hyps))
    assert metrics.cer(frame) == pytest.approx(jiwer.cer(refs, hyps))


def test_interval_contains_estimate_and_shrinks_with_data() -> None:
    frame = metrics.utterance_errors(*_random_system(200, 0.2, seed=2))
    errors, ref_words = frame["errors"].to_numpy(), frame["ref_words"].to_numpy()
    low, high = metrics.bootstrap_ci(errors, ref_words, np.random.default_rng(0))
    assert low < metrics.wer(frame) < high
    # Sixteen times the data (same error rate) should narrow the interval about four times.
    big_low, big_high = metrics.bootstrap_ci(
        np.tile(errors, 16), np.tile(ref_words, 16), np.random.default_rng(0)
    )
    assert big_low < metrics.wer(frame) < big_high
    assert 2.5 < (high - low) / (big_high - big_low) < 6
    again = metrics.bootstrap_ci(errors, ref_words, np.random.default_rng(0))
    assert again == (low, high)


def test_paired_bootstrap_detects_a_real_difference() -> None:
    refs, hyps_a = _random_system(300, 0.10, seed=3, hyp_seed=30)
    same_refs, hyps_b = _random_system(300, 0.20, seed=3, hyp_seed=31)  # more errors
    assert same_refs == refs
    a, b = metrics.utterance_errors(refs, hyps_a), metrics.utterance_errors(refs, hyps_b)
    result = metrics.paired_bootstrap(
        a["errors"], b["errors"], a["ref_words"], np.random.default_rng(0)
    )
    assert result["delta"] == pytest.approx(metrics.wer(b) - metrics.wer(a))
    assert 0 < result["low"] < result["delta"] < result["high"]
    assert result["p_value"] < 0.05


def test_paired_bootstrap_identical_and_balanced_systems() -> None:
    frame = metrics.utterance_errors(*_random_system(300, 0.2, seed=4))
    errors, ref_words = frame["errors"].to_numpy(), frame["ref_words"].to_numpy()
    same = metrics.paired_bootstrap(errors, errors, ref_words, np.random.default_rng(0))
    assert same == {"delta": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
    # B fixes one error on half the utterances with errors and makes one more on the other half.
    has_error = np.flatnonzero(errors > 0)
    balanced = errors.copy()
    balanced[has_error[0::2]] -= 1
    balanced[has_error[1::2]] += 1
    result = metrics.paired_bootstrap(errors, balanced, ref_words, np.random.default_rng(0))
    assert result["low"] < 0 < result["high"]
    assert result["p_value"] > 0.2


def test_group_table_sums_and_keeps_clean_group() -> None:
    refs, hyps = _random_system(120, 0.2, seed=5)
    frame = metrics.utterance_errors(refs, hyps)
    frame["accent"] = np.repeat(["en-gb", "en-us", "en-029"], 40)
    frame["snr_db"] = np.tile([np.nan, 10.0, 0.0, 10.0], 30)
    table = metrics.group_table(frame, ["accent", "snr_db"], np.random.default_rng(0), n_boot=200)
    assert len(table) == 9
    assert table["utterances"].sum() == len(frame)
    assert table["errors"].sum() == frame["errors"].sum()
    assert table["ref_words"].sum() == frame["ref_words"].sum()
    assert table["snr_db"].isna().sum() == 3  # clean audio is a group of its own
    row = table[(table["accent"] == "en-us") & (table["snr_db"] == 10.0)].iloc[0]
    subset = frame[(frame["accent"] == "en-us") & (frame["snr_db"] == 10.0)]
    assert row["wer"] == pytest.approx(metrics.wer(subset))
    assert row["cer"] == pytest.approx(metrics.cer(subset))
    assert (table["wer_low"] <= table["wer"]).all() and (table["wer"] <= table["wer_high"]).all()


def test_alignment_text_names_utterances_by_id() -> None:
    text = metrics.alignment_text(
        ["kitchen-01", "kitchen-02", "kitchen-03"],
        ["turn on the lights", "play jazz", "set a timer"],
        ["turn the light", "play jazz", "set a timer now"],
    )
    assert "=== kitchen-01 ===" in text and "=== kitchen-03 ===" in text
    assert "kitchen-02" not in text  # correct utterances are skipped
    assert "REF: turn on the lights" in text and "SENTENCE" not in text


def test_ten_thousand_utterances_score_as_one_corpus() -> None:
    # speed is a benchmark's business (this machine is shared); here: the result at scale
    refs, hyps = _random_system(10_000, 0.15, seed=6)
    frame = metrics.utterance_errors(refs, hyps)
    assert metrics.wer(frame) == pytest.approx(jiwer.wer(list(refs), list(hyps)), rel=1e-12)
    low, high = metrics.bootstrap_ci(
        frame["errors"], frame["ref_words"], np.random.default_rng(0), 1000
    )
    assert low < metrics.wer(frame) < high and high - low < 0.02


# Voice-assistant commands; the hypotheses are made from them by seeded edits below.
SCLITE_SENTENCES = [
    "Set a timer for ten minutes.",
    "What's the weather like in Kingston tomorrow?",
    "Turn on the kitchen lights.",
    "Play some jazz by Miles Davis.",
    "Remind me to call my mother at seven thirty p.m.",
    "How long will it take to drive to the airport?",
    "Turn the volume down a little.",
    "Add eggs, milk and bread to my shopping list.",
    "Wake me up at six o'clock on Saturday.",
    "What is twenty one times three?",
    "Switch off the bedroom fan.",
    "Read me the news headlines.",
    "Set the thermostat to twenty two degrees.",
    "Send a message to Anna saying I'm running late.",
    "Is it going to rain this afternoon?",
    "Open the garage door please.",
    "Pause the music.",
    "Tell me a joke about penguins.",
    "Cancel my alarm for tomorrow morning.",
    "How do you spell necessary?",
    "Lock the front door and turn off the porch light.",
    "Find a recipe for banana bread.",
    "Skip to the next song.",
    "What time does the pharmacy close?",
    "Call the dentist's office.",
]


def _edit(words: list[str], vocab: list[str], rng: np.random.Generator) -> list[str]:
    """Substitute, delete or insert words with chances that give a WER near 25%."""
    out = []
    for word in words:
        roll = rng.random()
        if roll < 0.08:
            out.append(str(rng.choice(vocab)))  # substitution
        elif roll < 0.14:
            continue  # deletion
        else:
            out.append(word)
        if rng.random() < 0.06:
            out.append(str(rng.choice(vocab)))  # insertion
    return out


def _sclite_command() -> list[str]:
    """sclite itself, or Debian's ``sctk`` dispatcher that runs it."""
    if shutil.which("sclite"):
        return ["sclite"]
    if shutil.which("sctk"):
        return ["sctk", "sclite"]
    if Path("/usr/lib/sctk/bin/sclite").exists():
        return ["/usr/lib/sctk/bin/sclite"]
    # Not a skip: `make test` installs sctk, so a missing sclite is a broken set-up.
    pytest.fail("NIST sclite not found; install Debian's sctk (scripts/setup-debian.sh)")


_SCLITE_SCORES = re.compile(
    r"^id: \((\S+)\)\nScores: \(#C #S #D #I\) (\d+) (\d+) (\d+) (\d+)$", flags=re.MULTILINE
)


def _sclite_report(stdout: str) -> tuple[dict[str, tuple[int, ...]], dict[str, int], float]:
    """sclite's per-utterance (C, S, D, I) from its ``pra`` alignments, its ``rsum`` Sum row
    (words, substitutions, deletions, insertions, errors) and its ``sum`` error percentage."""
    scores = {m[1]: tuple(map(int, m.groups()[1:])) for m in _SCLITE_SCORES.finditer(stdout)}
    totals = percent = None
    for line in stdout.splitlines():
        cells = [c.split() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0] == ["Sum"]:
            words, (_, sub, dele, ins, err, _) = int(cells[1][1]), map(int, cells[2])
            totals = {"words": words, "sub": sub, "del": dele, "ins": ins, "errors": err}
        elif len(cells) == 3 and cells[0] == ["Sum/Avg"]:
            percent = float(cells[2][4])
    assert scores and totals and percent is not None, f"unexpected sclite output:\n{stdout}"
    return scores, totals, percent


def test_wer_agrees_with_nist_sclite(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    refs = [normalize(s) for s in SCLITE_SENTENCES * 2]
    vocab = sorted({w for r in refs for w in r.split()})
    hyps = [" ".join(_edit(r.split(), vocab, rng)) for r in refs]
    # An empty reference (insertions only) and an empty hypothesis (deletions only).
    refs, hyps = refs + ["", normalize("Stop.")], hyps + ["stop", ""]
    ids = [f"spk{i % 5}_utt{i:03d}" for i in range(len(refs))]
    for name, texts in (("ref.trn", refs), ("hyp.trn", hyps)):
        lines = (f"{text} ({utt})\n" for text, utt in zip(texts, ids, strict=True))
        (tmp_path / name).write_text("".join(lines))
    run = subprocess.run(
        [*_sclite_command(), "-r", "ref.trn", "trn", "-h", "hyp.trn", "trn", "-i", "rm"]
        + ["-o", "sum", "rsum", "pra", "stdout", "-f", "0"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    scores, totals, percent = _sclite_report(run.stdout)

    frame = metrics.utterance_errors(refs, hyps, ids=ids)
    assert len(frame) == 52 and 0.1 < metrics.wer(frame) < 0.5  # a real test, not a trivial one
    assert set(scores) == set(ids)
    # Per utterance, exactly: reference words (C + S + D), errors (S + D + I), and D - I (the
    # length difference, the same in every alignment). The split of errors into S, D and I is
    # not compared: equal-cost alignments tie, and sclite (sub 4, ins/del 3) and jiwer (unit
    # costs) break ties differently. sclite's weights could in principle cost it one more error
    # than the minimum jiwer finds; these edits never do, so the counts must be equal.
    for row in frame.itertuples():
        correct, sub, dele, ins = scores[row.id]
        assert correct + sub + dele == row.ref_words, row.id
        assert sub + dele + ins == row.errors, row.id
        assert dele - ins == row.deletions - row.insertions, row.id
    assert totals["words"] == frame["ref_words"].sum()
    assert totals["errors"] == frame["errors"].sum()
    assert totals["sub"] + totals["del"] + totals["ins"] == frame["errors"].sum()
    assert abs(percent - 100 * metrics.wer(frame)) <= 0.05 + 1e-9  # exact to its one decimal


def test_split_by_alignment_gives_each_utterance_its_words():
    refs = ["turn on the lights", "", "what time is it"]
    pieces = metrics.split_by_alignment(refs, "uh turn on lights what time is it now")
    assert pieces == ["uh turn on lights", "", "what time is it now"]
    assert metrics.split_by_alignment(refs, "") == ["", "", ""]
    assert metrics.split_by_alignment(["", ""], "noise") == ["noise", ""]


def test_split_pieces_add_up_to_the_joined_errors():
    rng = np.random.default_rng(0)
    vocab = ["a", "b", "c", "d", "e", "f", "g"]
    for _ in range(50):
        refs = [" ".join(rng.choice(vocab, rng.integers(0, 5))) for _ in range(rng.integers(1, 4))]
        hyp = " ".join(rng.choice(vocab, rng.integers(0, 12)))
        pieces = metrics.split_by_alignment(refs, hyp)
        assert " ".join(p for p in pieces if p) == hyp
        joined = metrics.utterance_errors([" ".join(r for r in refs if r)], [hyp])
        if not any(refs):
            continue
        split = metrics.utterance_errors(refs, pieces)
        assert split["errors"].sum() == joined["errors"].sum()
