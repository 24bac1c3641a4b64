"""The report stage on a small data tree written by the real stages: evaluate (with a scripted
recogniser), select (on fake scores) and fine-tuning logs; its HTML rendered by Chromium."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import cli, layout, manifest
from pipeline.config import load_recipe
from pipeline.evaluate import stage as evaluate
from pipeline.fsio import write_json
from pipeline.models import loader
from pipeline.models.base import SpeechModel
from pipeline.report import stats as report_stats
from pipeline.select import stage as select
from tests.factories import ACCENTS, NOISES, dummy_row, fake_scored_set

TEXT = "please open the door"  # 4 words; a wrong utterance is 1 substitution
WRONG = "please open the floor"
TARGET_WRONG = {  # run -> how many of the 10 target utterances it gets wrong (of 40 words)
    "pretrained": 10,
    "rsft": 2,
    "rsft-s0": 2,
    "rsft-s1": 4,
    "random": 6,
    "random-s1": 8,
    "rsft-k50-s0": 1,
    "random-k50-s0": 5,
    "full": 3,  # the whole pool: in the comparison, not on the budget sweep
    "mine": 0,
    "dev-arm": 0,
}
SPEAKERS = 5  # utterance i of a set is spoken by speaker i % 5: the bootstrap's clusters
TEST_SETS = {  # set -> rows of (accent, noise, snr_db)
    "test_target": [("caribbean", "sauna", 5.0)] * 10,
    "test_clean": [("us", "clean", np.nan)] * 4 + [("caribbean", "clean", np.nan)] * 4,
    "test_noisy": [("us", "clean", np.nan)] * 2
    + [("us", "white", s) for s in (10.0, 10.0, 5.0, 5.0, 0.0, 0.0)],
    "asterisk_test": [("us", "clean", np.nan)] * 4,
    "asterisk_target": [("us", "sauna", 5.0)] * 4,
}
RECIPE = {
    "prepare": {
        "sets": [
            {
                "name": name,
                "split": "test",
                "source": {"kind": "synth", "parts": [{"count": len(rows), "voices": ["us"]}]},
            }
            for name, rows in TEST_SETS.items()
        ]
    },
    "select": {"budget": 20, "selectors": ["rsft", "random", "oracle", "full"], "folds": 2},
    "evaluate": {"bootstrap": 20},
    "report": {"bootstrap": 200},
}


class ScriptedModel(SpeechModel):
    """A recogniser whose mistakes are chosen per utterance (found by its audio's length)."""

    def __init__(self, run: str, lengths: dict[int, tuple[str, int]]):
        self.run, self.lengths, self.name = run, lengths, run

    def wrong(self, set_name: str, index: int) -> bool:
        if set_name == "test_target":
            return index < TARGET_WRONG[self.run]
        if set_name == "test_noisy":
            return index >= 6  # 0 dB
        if set_name == "test_clean":
            return index >= 4 and (self.run == "pretrained" or index % 2 == 0)  # caribbean
        if set_name == "asterisk_target":  # real speech in the target condition: a gain
            return index < (2 if self.run == "pretrained" else 1)
        return self.run != "pretrained" and index == 0  # forgetting on real speech

    def transcribe(self, waves):
        return [WRONG if self.wrong(*self.lengths[len(w)]) else TEXT for w in waves]

    def fingerprint(self) -> str:
        return self.run

    def embed(self, waves):
        raise NotImplementedError

    def loss(self, waves, texts):
        raise NotImplementedError

    def training_batch(self, waves, texts, layout):  # evaluate only: never trained
        raise NotImplementedError

    def training_loss(self, module, batch):
        raise NotImplementedError

    def freeze(self, module, train):
        raise NotImplementedError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A recipe's data folder as prepare, select, finetune and evaluate leave it."""
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "data"
    path = tmp / "recipe.yaml"
    path.write_text(json.dumps({"name": "t", "data_dir": str(root), **RECIPE}))
    recipe = load_recipe(path)
    lengths, n = {}, 0
    for name, rows in TEST_SETS.items():
        frame = []
        for i, (accent, noise, snr) in enumerate(rows):
            n += 1
            audio = root / "prepare" / "audio" / name / f"{i}.wav"
            audio.parent.mkdir(parents=True, exist_ok=True)
            sf.write(audio, np.full(1600 + 16 * n, 0.01, np.float32), 16000)
            lengths[1600 + 16 * n] = (name, i)
            kw = {"accent": accent, "noise": noise, "snr_db": snr, "split": "test", "text": TEXT}
            kw["speaker"] = f"spk{i % SPEAKERS}"
            frame.append(dummy_row(i, str(audio), id=f"{name}-{i}", **kw))
        out = root / "prepare" / "manifests" / f"{name}.parquet"
        manifest.write(manifest.to_frame(frame), out, root=root)
    with pytest.MonkeyPatch.context() as patch:
        for run in TARGET_WRONG:
            patch.setattr(loader, "load", lambda cfg, cache, run=run: ScriptedModel(run, lengths))
            evaluate.run(recipe, run, run)
    shutil.rmtree(root / "evaluate" / "random-s1" / "test_noisy")
    for run in ("rsft", "rsft-s1", "random"):
        losses = [3.0 / (1 + step) for step in range(30)] + [None, 0.05]
        curve = [{"step": s, "dev_target": 0.5 - s / 100} for s in (10, 20, 32)]
        log = {"steps": 32, "losses": losses, "dev_curve": curve, "best": {"step": 32}}
        write_json(root / "finetune" / run / "train_log.json", log)
    pool = [(a, z) for a in ACCENTS for z in NOISES for _ in range(40)][:-30]
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", [("caribbean", NOISES[2])] * 30, np.random.default_rng(1))
    select.run(recipe)
    return path, recipe


@pytest.fixture(scope="module")
def report(tree):
    """The report folder, results.json and what the command printed."""
    path, recipe = tree
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        cli.main(["report", str(path), "-q"])
    out = recipe.root / "report"
    return out, json.loads((out / "results.json").read_text()), printed.getvalue()


def test_run_names_follow_one_convention():
    parse = layout.parse_run_name
    assert parse("pretrained", 0, 300) == layout.RunName("pretrained", None, None)
    assert parse("rsft", 7, 300) == layout.RunName("rsft", 7, 300)
    assert parse("wer_filter-s2", 0, 300) == layout.RunName("wer_filter", 2, 300)
    assert parse("random-k50-s1", 0, 300) == layout.RunName("random", 1, 50, sweep=True)
    assert parse("oracle-k50", 3, 300) == layout.RunName("oracle", 3, 50, sweep=True)
    for name in ("mine", "rsft-s", "rsft-x1", "model", "rsft-s1-k50"):
        assert parse(name, 0, 300) is None


def test_table_aggregates_seeds_and_tests_rsft_against_each_system(report):
    _, results, _ = report
    systems = {s["system"]: s for s in results["systems"]}
    assert list(systems) == ["pretrained", "rsft", "random", "full"]
    rsft, random = systems["rsft"], systems["random"]
    assert rsft["runs"] == ["rsft", "rsft-s1"] and rsft["seeds"] == [0, 1]
    target = rsft["wer"]["target"]
    assert target["mean"] == pytest.approx(0.075) and target["n"] == 2
    assert (target["min"], target["max"]) == pytest.approx((0.05, 0.10))
    assert target["low"] <= target["mean"] <= target["high"]
    assert random["wer"]["target"]["mean"] == pytest.approx(0.175)
    assert systems["pretrained"]["wer"]["target"]["mean"] == pytest.approx(0.25)
    assert systems["pretrained"]["seeds"] == []
    assert rsft["wer"]["clean_by_accent"]["caribbean"]["mean"] == pytest.approx(0.125)
    assert systems["pretrained"]["wer"]["clean_by_accent"]["caribbean"]["mean"] == 0.25
    assert rsft["wer"]["noisy_0db"]["mean"] == 0.25 and rsft["wer"]["noisy_above_0db"]["mean"] == 0
    assert set(rsft["wer"]["noisy_by_snr"]) == {"10", "5", "0"}
    assert random["wer"]["noisy_0db"]["n"] == 1  # random-s1 lost its noisy set
    assert (
        rsft["wer"]["real"]["mean"] == 0.0625 and systems["pretrained"]["wer"]["real"]["mean"] == 0
    )
    assert results["sets"]["real_target"] == "asterisk_target"
    assert rsft["wer"]["real_target"]["mean"] == 0.0625
    assert systems["pretrained"]["wer"]["real_target"]["mean"] == 0.125
    pairs = {(p["system"], p["seed"]): p for p in results["paired"]}
    assert set(pairs) == {
        ("pretrained", 0),
        ("pretrained", 1),
        ("random", 0),
        ("random", 1),
        ("full", 0),
    }
    assert pairs[("random", 0)]["delta"] == pytest.approx(0.05 - 0.15)
    assert (
        pairs[("random", 1)]["other_run"] == "random-s1"
        and pairs[("random", 1)]["run"] == "rsft-s1"
    )
    assert pairs[("pretrained", 1)]["delta"] == pytest.approx(0.10 - 0.25)
    assert all(
        p["low"] <= p["delta"] <= p["high"] and 0 < p["p_value"] <= 1 for p in pairs.values()
    )
    budgets = {r["system"]: r["budget"] for r in results["systems"]}
    assert budgets == {"pretrained": None, "rsft": 20, "random": 20, "full": None}
    sweep = {(r["system"], r["budget"]): r["target"]["mean"] for r in results["sweep"]}
    assert sweep == pytest.approx(
        {("rsft", 20): 0.075, ("rsft", 50): 0.025, ("random", 20): 0.175, ("random", 50): 0.125}
    )
    tests = {(p["system"], p["budget"], p["seed"]): p for p in results["sweep_tests"]}
    assert set(tests) == {("random", 20, 0), ("random", 20, 1), ("random", 50, 0)}
    assert tests[("random", 50, 0)]["other_run"] == "random-k50-s0"
    assert tests[("random", 50, 0)]["delta"] == pytest.approx(0.025 - 0.125)
    assert tests[("random", 20, 1)]["run"] == "rsft-s1"
    assert tests[("random", 20, 0)]["delta"] == pytest.approx(0.05 - 0.15)
    methods = {m["selector"]: m for m in results["selection"]["selectors"]}
    assert methods["rsft"]["selected"] == 20 and methods["rsft"]["ess"] > 0


def test_clusters_are_speakers_joined_by_windows_else_utterances():
    frame = pd.DataFrame({"id": list("abcd"), "speaker": ["s1", "s1", "s2", "s3"]})
    codes, unit = report_stats.clusters(frame)
    assert codes.tolist() == [0, 0, 1, 2] and unit == "speaker"
    windows = frame.assign(window_0=[0, 1, 1, 2], window_1=[5, 5, 6, 7])
    codes, unit = report_stats.clusters(windows)  # s1 and s2 share window 1 of the first run
    assert codes.tolist() == [0, 0, 0, 1] and unit == "speaker-window group"
    for alone in (frame.assign(speaker="s1"), frame.drop(columns="speaker")):
        codes, unit = report_stats.clusters(alone)  # one voice cannot be resampled
        assert codes.tolist() == [0, 1, 2, 3] and unit == "utterance"


def test_tests_resample_speakers_and_are_holm_corrected(report):
    _, results, _ = report
    assert results["bootstrap"]["resamples"] == 200
    assert results["bootstrap"]["p_floor"] == pytest.approx(1 / 201)
    assert all(s["layout"] == "standard" for s in results["systems"])
    assert results["layout_mismatch"] == []
    for table in ("paired", "pooled", "sweep_tests"):
        rows = results[table]
        assert all(r["comparable"] and r["layout"] == r["other_layout"] == "standard" for r in rows)
        assert all(r["clusters"] == SPEAKERS and r["cluster_unit"] == "speaker" for r in rows)
        assert all(r["p_value"] <= r["p_holm"] <= 1 for r in rows)
        smallest = min(rows, key=lambda r: r["p_value"])
        assert smallest["p_holm"] == pytest.approx(min(1, len(rows) * smallest["p_value"]))
    pooled = {r["system"]: r for r in results["pooled"]}
    assert set(pooled) == {"pretrained", "random", "full"}
    random = pooled["random"]
    assert random["seeds"] == [0, 1] and random["other_runs"] == ["random", "random-s1"]
    assert (random["wer"], random["other_wer"]) == pytest.approx((0.075, 0.175))
    assert random["delta"] == pytest.approx(-0.10)
    assert random["relative"] == pytest.approx(0.075 / 0.175 - 1)
    assert random["relative_low"] <= random["relative"] <= random["relative_high"] < 0
    headline = results["versus_random"]
    assert headline["relative"] == random["relative"] and headline["p_value"] == random["p_value"]
    assert set(headline) >= {"relative_low", "relative_high", "p_holm", "comparable", "layout"}


def test_missing_inputs_are_listed_skips(report):
    _, results, _ = report
    skipped = {s["what"]: s["reason"] for s in results["skipped"]}
    # runs outside the naming convention (dev arms, ...) are one skip, not one per run
    assert "name is not" in skipped["run mine, dev-arm"]
    assert sum("name is not" in reason for reason in skipped.values()) == 1
    assert "same system, seed and budget as rsft" in skipped["run rsft-s0"]
    assert "not evaluated" in skipped["run random-s1, set test_noisy"]
    assert "train_log.json" in skipped["training curve of random-s1"]


def test_report_files_and_printed_table(report):
    out, results, printed = report
    assert "rsft" in printed and "7.5 [" in printed and str(out / "report.md") in printed
    assert "every system read in the standard layout" in printed
    assert json.loads((out / "results.json").read_text()) == results
    text = (out / "report.md").read_text()
    assert "| system | seeds | layout | target WER % [95% CI] |" in text
    assert "| rsft | 2 (0, 1) | standard | 7.5 [" in text
    assert "Holm-corrected over 5 comparisons" in text  # the per-seed tests: one family
    assert "Holm-corrected over 3 comparisons" in text  # pooled: pretrained, random, full
    assert "so no p falls below 0.005" in text and "Warning" not in text
    assert "| against | budget | seed | rsft WER % |" in text
    assert "| random | 50 | 0 | 2.5 |" in text
    # the fake pool's embeddings are one layer: the classifier chose C on it
    assert "rsft's classifier read encoder layer 0 of 1 at C " in text
    assert "cross-fitted log loss (0." in text and "of 3 candidates; AUC 0." in text
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == sorted(
        f"{n}.png"
        for n in ("systems", "heatmap", "sweep", "selection_shares", "log_ratio", "training")
    )
    for name in figures:
        assert f"](figures/{name})" in text


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        for key in ("href", "src"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.links.append(attrs[key])


PROBE = """<img alt="broken control" src="data:image/png;base64,iVBORw0KGgoAAAAbroken">
<script>window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-probed", document.images.length);
});</script>"""


def test_html_is_self_contained_and_every_image_decodes_in_chromium(report, tmp_path):
    out, _, _ = report
    page = (out / "report.html").read_text()
    static = _Images()
    static.feed(page)
    assert static.links == []  # nothing outside the file
    assert len(static.images) == 6
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed (make test installs it)"
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}/c"]
        + ["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    rendered = _Images()
    rendered.feed(dom)
    widths = {img["alt"]: int(img["data-natural-width"]) for img in rendered.images}
    assert widths.pop("broken control") == 0  # the probe sees a broken image as broken
    assert len(widths) == 6 and all(w > 300 for w in widths.values()), widths


def test_no_evaluate_runs_is_a_one_line_error(write_recipe, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", str(write_recipe({}))])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no evaluate runs" in err and len(err.strip().splitlines()) == 1


def test_runs_read_in_different_layouts_are_flagged(tree, tmp_path):
    """A seed of random read packed while every other run was read in the standard layout."""
    path, recipe = tree
    root = tmp_path / "data"
    shutil.copytree(recipe.root, root)
    shutil.rmtree(root / "report", ignore_errors=True)
    wer_json = root / "evaluate" / "random-s1" / "test_target" / "wer.json"
    wer_json.write_text(json.dumps({**json.loads(wer_json.read_text()), "layout": "packed"}))
    mixed = tmp_path / "recipe.yaml"
    mixed.write_text(json.dumps({**json.loads(path.read_text()), "data_dir": str(root)}))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        cli.main(["report", str(mixed), "-q"])
    assert "WARNING: systems read in different layouts" in printed.getvalue()
    results = json.loads((root / "report" / "results.json").read_text())
    layouts = {s["system"]: s["layout"] for s in results["systems"]}
    assert layouts == {
        "pretrained": "standard",
        "rsft": "standard",
        "random": "packed, standard",
        "full": "standard",
    }
    flagged = {m["table"]: m["layouts"] for m in results["layout_mismatch"]}
    assert set(flagged) == {"systems", "paired", "pooled", "sweep", "sweep_tests"}
    assert flagged["paired"]["random"] == "packed" and flagged["paired"]["rsft"] == "standard"
    pairs = {(p["system"], p["seed"]): p for p in results["paired"]}
    assert not pairs[("random", 1)]["comparable"] and pairs[("random", 1)]["p_holm"] is not None
    assert all(p["comparable"] for key, p in pairs.items() if key != ("random", 1))
    assert not {p["system"]: p for p in results["pooled"]}["random"]["comparable"]
    assert results["versus_random"]["comparable"] is False
    text = (root / "report" / "report.md").read_text()
    assert "Warning: the comparison table mixes layouts (packed, standard: random; " in text
    assert "| random | 1 | 10.0 | 20.0 |" in text
    assert "NOT COMPARABLE: standard vs packed |" in text


def test_baseline_alone_reports_and_drops_stale_figures(tree, report, tmp_path):
    """What make demo leaves before any fine-tuning: the pretrained run, no select outputs."""
    path, recipe = tree
    root = tmp_path / "data"
    shutil.copytree(recipe.root, root)  # with the full report's figures in report/figures
    for run in (root / "evaluate").iterdir():
        if run.name != "pretrained":
            shutil.rmtree(run)
    shutil.rmtree(root / "select")
    alone = tmp_path / "recipe.yaml"
    alone.write_text(json.dumps({**json.loads(path.read_text()), "data_dir": str(root)}))
    with contextlib.redirect_stdout(io.StringIO()):
        cli.main(["report", str(alone), "-q"])
    results = json.loads((root / "report" / "results.json").read_text())
    assert [s["system"] for s in results["systems"]] == ["pretrained"]
    assert results["paired"] == [] and results["sweep"] == [] and results["selection"] is None
    assert results["sweep_tests"] == [] and results["pooled"] == []
    assert results["versus_random"] is None and results["layout_mismatch"] == []
    skipped = {s["what"] for s in results["skipped"]}
    assert {"paired tests", "selection"} <= skipped
    figures = {p.name for p in (root / "report" / "figures").glob("*.png")}
    assert figures == {"systems.png", "heatmap.png"}


def test_a_second_reading_gets_a_table_of_its_own(tree, tmp_path):
    """experiment.second_layout: runs <run>@packed form their own table and tests, and never
    enter the first reading's."""
    path, recipe = tree
    root = tmp_path / "data"
    shutil.copytree(recipe.root, root)
    shutil.rmtree(root / "report", ignore_errors=True)
    for run in [p for p in (root / "evaluate").iterdir() if p.is_dir()]:
        packed = run.with_name(f"{run.name}@packed")
        shutil.copytree(run, packed)
        for wer_json in packed.glob("*/wer.json"):
            wer_json.write_text(
                json.dumps({**json.loads(wer_json.read_text()), "layout": "packed"})
            )
    data = {**json.loads(path.read_text()), "data_dir": str(root)}
    data["experiment"] = {**data.get("experiment", {}), "second_layout": "packed"}
    second = tmp_path / "recipe.yaml"
    second.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        cli.main(["report", str(second), "-q"])
    results = json.loads((root / "report" / "results.json").read_text())
    assert {s["layout"] for s in results["systems"]} == {"standard"}
    assert not results["layout_mismatch"]
    reading = results["second_reading"]
    assert reading["layout"] == "packed" and {s["layout"] for s in reading["systems"]} == {"packed"}
    assert [s["system"] for s in reading["systems"]] == [s["system"] for s in results["systems"]]
    means = [[s["wer"]["target"]["mean"] for s in r["systems"]] for r in (reading, results)]
    assert means[0] == means[1]  # the same errors, copied: only the intervals' draws differ
    assert "every system read in the packed layout" in printed.getvalue()
    assert (
        "Second reading: every system in the packed layout"
        in (root / "report" / "report.md").read_text()
    )
