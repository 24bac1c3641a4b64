"""Benchmark scripts run end to end on tiny inputs: their figures are sane, never timed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import audio, manifest
from tests.factories import dummy_row, speak

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["turn on the lights", "what time is it", "play some music", "set a timer"]


def write_set(root: Path, path: Path, split: str) -> None:
    """A manifest over real espeak-ng speech, one utterance per text."""
    rows = []
    for i, text in enumerate(TEXTS):
        wav = root / "audio" / split / f"u{i}.flac"
        wave, rate = speak(text)
        audio.write_flac(wav, wave, rate)
        rows.append(
            dummy_row(i, str(wav), text=text, split=split, duration_s=audio.duration_s(wav))
        )
    manifest.write(manifest.to_frame(rows), path, root=root)


@pytest.mark.slow  # 40-60 s here: two child processes, each importing torch and transformers
def test_finetune_throughput_quick(tmp_path, tiny_whisper_dir):
    root = tmp_path / "demo"
    write_set(root, root / "select" / "rsft" / "subset.parquet", "pool")
    write_set(root, root / "prepare" / "manifests" / "dev_target.parquet", "dev")
    out = tmp_path / "figures.json"
    command = [sys.executable, "benchmarks/finetune_throughput.py", "--quick"]
    command += ["--data-root", str(root), "--model", str(tiny_whisper_dir), "--json", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rsft / standard, audio seconds per second" in done.stdout
    figures = json.loads(out.read_text())
    settings, recipes = figures["settings"], figures["recipes"]
    assert settings["utterances"] == 4 and settings["steps"] == 2  # batch 2, one epoch
    # matched: the product draws the standard batches' mean audio per step, so it takes as
    # many steps (up to one more, for the epoch's remainder), with no distillation, in fp32
    assert recipes["standard"]["steps"] == 2 and recipes["rsft"]["steps"] in (2, 3)
    assert settings["rsft_settings"] == "matched"
    assert {"finetune.distill_weight=0", "finetune.train=full"} <= set(settings["rsft_overrides"])
    for name in ("standard", "rsft"):
        row = recipes[name]
        assert row["timed_s"] > 0 and row["audio_s_per_s"] > 0 and row["peak_rss_mib"] > 0
        assert 0 <= row["dev_wer"] < 100
        assert set(row["dev_layouts"]) == {"standard", "packed"}
    assert set(figures["dev_by_layout"]) == {"standard", "packed"}
    assert figures["ratio"] > 0


def run_script(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a benchmark script; its stderr's end on failure. Tests pass --threads 1 where torch
    runs: on a busy machine, threads that wait for each other spin."""
    command = [sys.executable, f"benchmarks/{script}", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow  # about 20 s: the bundled tiny.en scores 4 utterances four ways
def test_score_throughput_quick(tmp_path):
    root, out = tmp_path / "demo", tmp_path / "figures.json"
    write_set(root, root / "prepare" / "manifests" / "pool.parquet", "pool")
    done = run_script(
        "score_throughput.py", "--quick", "--data-root", str(root), "--json", str(out),
        "--threads", "1", "--layouts", "standard",
    )  # fmt: skip
    assert "score stage / plain loop, utterances per second" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["settings"]["utterances"] == 4
    assert set(figures["arms"]) == {"stage", "standard", "loop"}
    for arm in figures["arms"].values():
        assert arm["wall_s"] > 0 and arm["utt_per_s"] > 0
    # the stage's standard layout computes what the plain loop computes, batched
    same = figures["arms"]["standard"]["agreement_with_loop"]
    assert same["cosine_min"] > 0.999 and same["loss_pearson"] > 0.99
    assert same["loss_mean_abs_diff"] < 0.01
    packed = figures["arms"]["stage"]["agreement_with_loop"]
    assert -1 <= packed["cosine_min"] <= packed["cosine_mean"] <= 1
    assert figures["ratio"] > 0 and isinstance(figures["outputs_agree"], bool)
    assert figures["target_met"] or "by tottime" in figures["profile_stage"]


@pytest.mark.slow  # about 25 s: four engines decode 4 utterances each
def test_evaluate_speed_quick(tmp_path):
    root, out = tmp_path / "demo", tmp_path / "figures.json"
    write_set(root, root / "prepare" / "manifests" / "test_clean.parquet", "test")
    done = run_script(
        "evaluate_speed.py", "--quick", "--data-root", str(root), "--json", str(out),
        "--threads", "1",
    )  # fmt: skip
    assert "stage vs transformers pipeline" in done.stdout
    figures = json.loads(out.read_text())
    engines = figures["engines"]
    assert set(engines) == {"stage", "pipeline", "fw greedy", "fw default"}
    for name, row in engines.items():
        assert row["rtf"] > 0 and 0 <= row["wer"] <= 2, name
    assert engines["stage"]["wer"] < 0.5  # clear synthetic commands
    for name in ("pipeline", "fw greedy", "fw default"):
        assert 0 <= engines[name]["same_hypotheses"] <= 1
        low, high = engines[name]["wer_minus_stage_95ci"]
        assert low <= engines[name]["wer_minus_stage"] <= high
    assert figures["ratio_vs_pipeline"] > 0 and figures["ratio_vs_faster_whisper"] > 0
    assert isinstance(figures["wer_equal_to_faster_whisper"], bool)


@pytest.mark.slow  # about 20 s: the bundled tiny.en decodes 4 commands in fp32 and in bf16
def test_decode_precision_quick(tmp_path):
    root, out = tmp_path / "demo", tmp_path / "figures.json"
    write_set(root, root / "prepare" / "manifests" / "dev_target.parquet", "dev")
    done = run_script(
        "decode_precision.py", "--quick", "--data-root", str(root), "--json", str(out),
        "--threads", "1",
    )  # fmt: skip
    assert "bf16" in done.stdout
    figures = json.loads(out.read_text())
    rows = figures["sets"]["dev_target"]["arms"]
    assert set(rows) == {"fp32", "bf16"} and figures["sets"]["dev_target"]["utterances"] == 4
    assert rows["fp32"]["wer"] < 0.5 and rows["bf16"]["wer"] < 0.5  # clear synthetic commands
    low, high = rows["bf16"]["delta_95ci"]
    assert low <= rows["bf16"]["delta"] <= high and rows["bf16"]["speed_vs_fp32"] > 0


@pytest.mark.slow  # about 20 s: the bundled tiny.en decodes 4 commands three ways, in turns
def test_decode_attention_quick(tmp_path):
    root, out = tmp_path / "demo", tmp_path / "figures.json"
    write_set(root, root / "prepare" / "manifests" / "dev_target.parquet", "dev")
    done = run_script(
        "decode_attention.py", "--quick", "--data-root", str(root), "--json", str(out),
        "--threads", "1", "--chunk", "2",
    )  # fmt: skip
    assert "fp32 step" in done.stdout
    figures = json.loads(out.read_text())
    rows = figures["sets"]["dev_target"]["arms"]
    assert set(rows) == {"stock", "weights", "fp32 step"}
    assert figures["sets"]["dev_target"]["utterances"] == 4
    for name in ("weights", "fp32 step"):
        assert rows[name]["wer"] < 0.5 and rows[name]["speed_vs_stock"] > 0
        low, high = rows[name]["delta_95ci"]
        assert low <= rows[name]["delta"] <= high
    # the weights' bf16 copies change no token, with or without native bf16
    assert rows["weights"]["same_hypothesis"] == 1.0 and rows["weights"]["delta"] == 0


@pytest.mark.slow  # about 20 s: one counted and one timed step of tiny.en on one window
def test_flops_quick(tmp_path):
    root, out = tmp_path / "demo", tmp_path / "figures.json"
    write_set(root, root / "select" / "rsft" / "subset.parquet", "pool")
    run_script(
        "flops.py", "--quick", "--data-root", str(root), "--json", str(out), "--threads", "1"
    )
    figures = json.loads(out.read_text())
    assert figures["settings"]["windows"] == 1  # two short commands share one packed window
    # tiny.en's encoder over 30 s: about 37 GFLOP forward, the backward about twice that
    assert 30e9 < figures["forward_flops"] < 60e9
    assert 2 * figures["forward_flops"] < figures["step_flops"] < 4 * figures["forward_flops"]
    assert figures["forward_flops_per_module"]["model.encoder"] > 0.8 * figures["forward_flops"]
    assert figures["achieved_flops_per_s"] > 0 and figures["matmul_peak_flops_per_s"] > 0
    assert 0 < figures["fraction_of_peak"] < 2


@pytest.mark.slow  # about 20 s: prepare (a few synthesised commands) and select, each a process
def test_stage_memory_quick(tmp_path):
    from tests.factories import ACCENTS, NOISES, fake_scored_set

    root, out = tmp_path / "demo", tmp_path / "figures.json"
    pool = [(a, n) for a in ACCENTS for n in NOISES for _ in range(40)]
    fake_scored_set(root, "pool", pool, np.random.default_rng(1))
    fake_scored_set(root, "target", [("caribbean", NOISES[2])] * 20, np.random.default_rng(1))
    done = run_script(
        "stage_memory.py", "--quick", "--stages", "prepare", "select", "--data-root", str(root),
        "--json", str(out),
    )  # fmt: skip
    assert "peak RSS MiB" in done.stdout
    stages = json.loads(out.read_text())["stages"]
    assert set(stages) == {"prepare", "select"}
    for name, row in stages.items():
        assert 50 < row["peak_rss_mib"] < 8000, name
        # the stage's own record is of the same process, so it cannot exceed wait4's figure
        assert 0 < row["recorded"]["peak_rss_mib"] <= row["peak_rss_mib"] + 1, name
    assert "utterances" in stages["prepare"]["input"]
    assert not (root / "select" / "summary.json").exists()  # the demo's folder is not written


@pytest.mark.slow  # about 10 s: run_all with select_scale's smoke run, then --render
def test_run_all_keeps_hand_written_sections(tmp_path):
    root, out_dir = tmp_path / "demo", tmp_path / "out"
    write_set(root, root / "prepare" / "manifests" / "pool.parquet", "pool")
    out_dir.mkdir()
    (out_dir / "RESULTS.md").write_text("# Benchmarks\n\n## By hand\n\nKept.\n")
    common = ["--data-root", str(root), "--out-dir", str(out_dir)]
    run_script("run_all.py", "--quick", "--only", "select_scale", *common)
    text = (out_dir / "RESULTS.md").read_text()
    assert text.startswith("# Benchmarks\n\n<!-- bench:begin")
    assert text.rstrip().endswith("## By hand\n\nKept.")
    assert "### Selection scaling" in text and "| 10,000 |" in text
    results = json.loads((out_dir / "results.json").read_text())
    entry = results["benchmarks"]["select_scale"]
    assert entry["error"] is None and entry["quick"] and len(entry["figures"]) == 2
    run_script("run_all.py", "--render", *common)
    assert (out_dir / "RESULTS.md").read_text() == text  # rendering again changes nothing
