"""The fault matrix: what a hostile or unlucky user does to the CLI, and the exact outcome.

Each case asserts the outcome, not only the absence of a crash: the one-line error and exit
code 2, nothing written outside the data root, no process left behind, no file changed.
(The tampered model cache is in test_bundled; archive bombs and setuid members in
test_openslr.)
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from pipeline import audio, cli, manifest
from pipeline.config import load_recipe
from pipeline.errors import RecipeError, UserError
from pipeline.prepare import stage as prepare
from pipeline.score import stage as score
from tests.factories import speak

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: a snapshot to compare."""
    return {str(p): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """``rsft ARGV`` in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    return stop.value.code, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err  # one line, no traceback
    return lines[0]


@pytest.fixture
def local_recipe(write_recipe, tmp_path):
    """A recipe of one local set of three real WAV commands; returns (path, corpus)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rows = ["path\ttext"]
    for i, text in enumerate(["open the door", "turn on the lights", "stop the music"]):
        wave, rate = speak(text)
        sf.write(corpus / f"c{i}.wav", wave, rate)
        rows.append(f"c{i}.wav\t{text}")
    (corpus / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    sets = [{"name": "mine", "split": "pool", "source": {"kind": "local", "path": str(corpus)}}]
    return write_recipe({"prepare": {"workers": 1, "sets": sets}}), corpus


# -- names that become paths --


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["finetune", "{recipe}", "--subset", "random", "--name", "../../../x"],
            "run '../../../x'",
        ),
        (["finetune", "{recipe}", "--subset", "../../x", "--name", "ok"], "subset '../../x': part"),
        (["evaluate", "{recipe}", "--name", "../evil"], "run '../evil'"),
        (["finetune", "{recipe}", "--name", ".hidden"], "run '.hidden'"),
        (["prepare", "{recipe}", "--set", "name=../../x"], "name '../../x'"),
        (["prepare", "{recipe}", "--set", "prepare.sets.0.name=a/b"], "prepare.sets[0].name 'a/b'"),
    ],
)
def test_a_name_never_becomes_a_path_outside_the_root(
    local_recipe, tmp_path, capsys, argv, message
):
    recipe_path, _ = local_recipe
    outside = tmp_path / "x"  # where ../../../x would land from data/finetune
    (outside / "model").mkdir(parents=True)
    (outside / "model" / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    code, err = run_cli([a.format(recipe=recipe_path) for a in argv], capsys)
    assert code == 2
    line = one_line(err)
    assert message in line and "use letters, digits" in line
    assert tree(tmp_path) == before  # nothing written, nothing removed, anywhere
    assert (outside / "model" / "keep.txt").read_text() == "mine"


# -- recipe fields: one line naming the key and what it takes --


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("select.C=high", "select.C: expected a number, got str 'high'"),
        ("finetune.seed=abc", "finetune.seed: expected an integer, got str 'abc'"),
        ("prepare.sets.asterisk_test.source.limit=ten", "source.limit: expected an integer"),
        ("prepare.sets.pool.noise={types: white}", "prepare.sets[0].noise.types: expected a list"),
        ("prepare.sample_rate=0", "prepare.sample_rate: must be in [8000, 96000], got 0"),
        ("prepare.max_duration_s=.nan", "prepare.max_duration_s: expected a finite number"),
        ("prepare.min_duration_s=-1", "prepare.min_duration_s: must be at least 0, got -1"),
        ("select.budget=-5", "select.budget: must be at least 1, got -5"),
        ("select.selectors=[rsft,bogus]", "select.selectors[1]: 'bogus' is not one of"),
        ("experiment.quick_seeds=[-1]", "experiment.quick_seeds[0]: must be at least 0"),
        ("prepare.sets.pool.noise.babble_talkers=[6,3]", "babble_talkers [6, 3]: need [fewest"),
        ("prepare.sets.pool.name=p.x", "prepare.sets[0].name 'p.x': use letters, digits, '_'"),
        ("report.bootstrap=0", "report.bootstrap: must be at least 1, got 0"),
        ("evaluate.bootstrap=-3", "evaluate.bootstrap: must be at least 1, got -3"),
        ("finetune.lr=0", "finetune.lr: must be above 0, got 0.0"),
        ("finetune.lr=.inf", "finetune.lr: expected a finite number, got inf"),
        ("experiment.seeds=[0,-1]", "experiment.seeds[1]: must be at least 0, got -1"),
        ("experiment.sweep_budgets=[0]", "experiment.sweep_budgets[0]: must be at least 1"),
        ("model.context_s=31", "model.context_s: must be in (0, 30], got 31.0"),
        ("select.cap_quantile=1.5", "select.cap_quantile: must be in (0, 1], got 1.5"),
        ("finetune.replay_fraction=1", "finetune.replay_fraction: must be in [0, 1), got 1.0"),
    ],
)
def test_a_bad_recipe_value_is_one_line_naming_the_key(override, message):
    with pytest.raises(RecipeError) as caught:
        load_recipe(DEMO, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_bad_keep_block_names_its_key(write_recipe, tmp_path):
    sets = [
        {
            "name": "mine",
            "split": "pool",
            "source": {"kind": "local", "path": str(tmp_path), "keep": {"accents": "gb"}},
        }
    ]
    path = write_recipe({"prepare": {"sets": sets}})
    with pytest.raises(
        RecipeError, match=r"^prepare.sets\[0\].source.keep.accents: expected a list"
    ):
        load_recipe(path)


def test_a_bad_value_stops_before_any_stage_runs(local_recipe, tmp_path, capsys):
    recipe_path, _ = local_recipe
    code, err = run_cli(["run", str(recipe_path), "--set", "select.budget=-1"], capsys)
    assert code == 2 and "select.budget: must be at least 1" in one_line(err)
    assert not (tmp_path / "data").exists()  # not even prepare ran


# -- the operating system says no --


def test_an_unwritable_data_root_is_one_line_with_what_to_do(local_recipe, tmp_path, capsys):
    recipe_path, _ = local_recipe
    if os.geteuid() == 0:
        root = Path("/sys/rsft-test-data")  # refused even to root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        root = locked / "data"
    code, err = run_cli(["prepare", str(recipe_path), "--set", f"data_dir={root}"], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("rsft prepare: error: ")
    assert "not permitted" in line or "Permission denied" in line
    assert "check its permissions, or set data_dir" in line


def test_a_data_root_under_a_file_is_one_line(local_recipe, tmp_path, capsys):
    recipe_path, _ = local_recipe
    (tmp_path / "a-file").write_text("")
    root = tmp_path / "a-file" / "data"
    code, err = run_cli(["prepare", str(recipe_path), "--set", f"data_dir={root}"], capsys)
    line = one_line(err)
    assert code == 2 and "Not a directory" in line and "a part of the path is a file" in line
    with pytest.raises(NotADirectoryError):  # --debug shows the traceback instead
        cli.main(["prepare", str(recipe_path), "--debug", "--set", f"data_dir={root}"])


def test_a_full_disk_is_one_line_naming_the_file(local_recipe, tmp_path, capsys, monkeypatch):
    recipe_path, _ = local_recipe

    @contextmanager
    def full_disk(path):
        yield Path("/dev/full")  # every write there fails with ENOSPC, as on a full disk

    monkeypatch.setattr(audio, "atomic_path", full_disk)
    # a set that must be converted (22.05 kHz sources), so that audio is written
    code, err = run_cli(["prepare", str(recipe_path)], capsys)
    line = one_line(err)
    assert code == 2 and "No space left on device" in line
    assert "/prepare/audio/mine/clean/c0." in line and "free disk space" in line
    assert not (tmp_path / "data" / "prepare" / "manifests" / "mine.parquet").exists()


def test_a_full_disk_while_mixing_noise_stops_instead_of_rejecting(monkeypatch):
    def full(job, rate):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/x.flac")

    monkeypatch.setattr(prepare.noise, "make", full)
    with pytest.raises(OSError, match="No space left"):
        prepare._noisy_job((None, 16000))

    def unreadable(job, rate):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/gone/noise.wav")

    monkeypatch.setattr(prepare.noise, "make", unreadable)

    class Job:
        id = "u1"

    assert "noise mixing failed" in prepare._noisy_job((Job(), 16000)).reason


# -- bad input files --


def test_a_truncated_wav_is_rejected_with_its_reason(local_recipe, tmp_path):
    recipe_path, corpus = local_recipe
    data = (corpus / "c1.wav").read_bytes()
    (corpus / "c1.wav").write_bytes(data[: len(data) // 3])  # the header still says 100%
    prepare.run(load_recipe(recipe_path))
    frame = manifest.read(tmp_path / "data" / "prepare" / "manifests" / "mine.parquet")
    assert frame["id"].tolist() == ["c0", "c2"]
    rejects = (tmp_path / "data" / "prepare" / "rejects" / "mine.tsv").read_text().splitlines()
    assert len(rejects) == 2 and rejects[1].startswith("c1\tlocal\ttruncated WAV: header declares")


def test_ids_holding_a_tab_or_newline_are_refused_and_the_rejects_stay_a_table(
    local_recipe, tmp_path
):
    recipe_path, corpus = local_recipe
    (corpus / "transcripts.tsv").unlink()
    (corpus / "list.csv").write_text(
        'id,path,text\n"a\tb",c0.wav,open the door\n"c\nd",c1.wav,turn on the lights\n'
        "e\u2028f,c2.wav,stop the music\ng\x0bh,c2.wav,stop the music\n"
        "mi\u200cravam,c2.wav,stop the music\n"  # a zero-width non-joiner spells Persian
    )
    prepare.run(load_recipe(recipe_path))
    frame = manifest.read(tmp_path / "data" / "prepare" / "manifests" / "mine.parquet")
    assert frame["id"].tolist() == ["mi\u200cravam"]
    lines = (tmp_path / "data" / "prepare" / "rejects" / "mine.tsv").read_text().splitlines()
    assert len(lines) == 5 and all(line.count("\t") == 2 for line in lines)
    rejects = pd.read_csv(tmp_path / "data" / "prepare" / "rejects" / "mine.tsv", sep="\t")
    assert rejects["id"].tolist() == ["a\\tb", "c\\nd", "e\\u2028f", "g\\x0bh"]  # escaped
    assert set(rejects["reason"]) == {"id holds a control character"}


def test_a_damaged_parquet_is_one_line_naming_it(tmp_path, capsys):
    runs = [tmp_path / "evaluate" / name / "test" for name in ("a", "b")]
    for i, folder in enumerate(runs):
        folder.mkdir(parents=True)
        utterances(folder, [f"u{k}" for k in range(8)], seed=i)
    table = runs[1] / "utterances.parquet"
    table.write_bytes(table.read_bytes()[:100])
    code, err = run_cli(["compare", str(runs[0].parent), str(runs[1].parent)], capsys)
    line = one_line(err)
    assert code == 2 and f"{table}: not a readable Parquet table" in line
    assert "delete it and rerun the stage that wrote it" in line


# -- compare --


def utterances(folder: Path, ids: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    pd.DataFrame(
        {
            "id": ids,
            "errors": rng.integers(0, 3, len(ids)),
            "ref_words": np.full(len(ids), 4),
            "speaker": [f"s{k % 3}" for k in range(len(ids))],
        }
    ).to_parquet(folder / "utterances.parquet")


def test_compare_refuses_runs_without_a_common_utterance(tmp_path, capsys):
    a, b = tmp_path / "a" / "test", tmp_path / "b" / "test"
    for folder, prefix in ((a, "x"), (b, "y")):
        folder.mkdir(parents=True)
        utterances(folder, [f"{prefix}{k}" for k in range(6)], seed=0)
    code, err = run_cli(["compare", str(a.parent), str(b.parent)], capsys)
    assert code == 2 and "no utterance id in common" in one_line(err)


@pytest.mark.parametrize("count", ["0", "-5", "many"])
def test_compare_refuses_a_bootstrap_count_below_one(tmp_path, capsys, count):
    code, err = run_cli(["compare", str(tmp_path), str(tmp_path), "--bootstrap", count], capsys)
    assert code == 2 and "--bootstrap" in err
    assert "must be at least 1" in err or "expected an integer" in err


# -- stale state --


def test_a_killed_rebuild_leaves_no_manifest_for_score_to_trust(
    local_recipe, tmp_path, monkeypatch
):
    recipe_path, _ = local_recipe
    recipe = load_recipe(recipe_path)
    prepare.run(recipe)
    out = tmp_path / "data" / "prepare" / "manifests" / "mine.parquet"
    assert len(manifest.read(out)) == 3

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the rebuild stops before its manifest is written

    monkeypatch.setattr(prepare.manifest, "write", killed)
    changed = load_recipe(recipe_path, ["prepare.sets.mine.source.limit=2"])
    with pytest.raises(KeyboardInterrupt):
        prepare.run(changed)
    assert not out.exists()  # the old three-row manifest is not left for the new recipe
    with pytest.raises(
        UserError, match=r"set 'mine': no manifest at .*mine.parquet \(run: rsft prepare first\)"
    ):
        score.run(changed)


def test_a_hand_edited_manifest_is_rebuilt_not_trusted(local_recipe, tmp_path, caplog):
    recipe_path, _ = local_recipe
    recipe = load_recipe(recipe_path)
    prepare.run(recipe)
    out = tmp_path / "data" / "prepare" / "manifests" / "mine.parquet"
    original = manifest.read(out)
    manifest.write(original.iloc[:1], out, root=tmp_path / "data")
    with caplog.at_level(logging.INFO):
        prepare.run(recipe)
    assert f"set mine: {out} changed since prepare wrote it: rebuilding it" in caplog.text
    pd.testing.assert_frame_equal(manifest.read(out), original)


def test_a_stamp_from_before_the_manifest_hash_is_trusted_once_and_filled_in(
    local_recipe, tmp_path
):
    recipe_path, _ = local_recipe
    recipe = load_recipe(recipe_path)
    prepare.run(recipe)
    out = tmp_path / "data" / "prepare" / "manifests" / "mine.parquet"
    stamp = out.with_suffix(".done.json")
    record = json.loads(stamp.read_text())
    digest = record.pop("manifest_sha256")
    stamp.write_text(json.dumps(record))
    written = out.stat().st_mtime_ns
    prepare.run(recipe)
    assert out.stat().st_mtime_ns == written  # not rebuilt
    assert json.loads(stamp.read_text())["manifest_sha256"] == digest


def test_archive_limits_leave_the_sets_key_alone():
    recipe = load_recipe(Path(DEMO).with_name("librispeech_noise.yaml"))
    looser = load_recipe(
        Path(DEMO).with_name("librispeech_noise.yaml"),
        ["prepare.noise_sources.musan.max_expansion=60", "prepare.sets.0.source.max_members=9"],
    )
    for a, b in zip(recipe.prepare.sets, looser.prepare.sets, strict=True):
        assert prepare.set_fingerprint(recipe, a) == prepare.set_fingerprint(looser, b)
    other = load_recipe(Path(DEMO).with_name("librispeech_noise.yaml"), ["seed=5"])
    assert prepare.set_fingerprint(other, other.prepare.sets[0]) != prepare.set_fingerprint(
        recipe, recipe.prepare.sets[0]
    )


def test_workers_under_a_fork_server_run(monkeypatch):
    # a fork server's workers are its children, not the stage's: they must not take that
    # for their parent's death
    real = multiprocessing.get_context
    monkeypatch.setattr(prepare.multiprocessing, "get_context", lambda: real("forkserver"))
    assert list(prepare._map(abs, list(range(-40, 0)), 2, "test")) == list(range(40, 0, -1))


def test_a_model_read_without_a_name_gets_a_safe_run_name():
    from pipeline.layout import model_run

    assert model_run("bundled:whisper-tiny.en") == "bundled-whisper-tiny.en"
    assert model_run("data/demo/finetune/rsft-s1/model") == "rsft-s1"
    assert model_run("data/demo/finetune/rsft-s1/model/") == "rsft-s1"
    assert model_run("openai/whisper-small") == "whisper-small"
    assert model_run("/x/My Model") == "My-Model"
    assert model_run("./") == "model"


def test_stale_score_shards_are_removed_and_said(write_recipe, tiny_whisper_dir, caplog):
    sets = [
        {
            "name": "pool",
            "split": "pool",
            "source": {"kind": "synth", "parts": [{"count": 10, "voices": ["us"]}]},
        }
    ]
    data = {
        "model": {"name": str(tiny_whisper_dir)},
        "score": {"shard_size": 4, "batch_size": 4, "hypotheses": False},
        "select": {"target": None},
        "prepare": {"workers": 1, "sets": sets},
    }
    recipe = load_recipe(write_recipe(data))
    prepare.run(recipe)
    score.run(recipe)
    out = recipe.root / "score" / "pool"
    first = np.load(out / "embeddings.npy")
    # an earlier run of a longer pool left shard 7, and a killed write its temp file
    (out / "shards" / "00007.npz").write_bytes((out / "shards" / "00000.npz").read_bytes())
    (out / "shards" / ".00001.npz.x.tmp").write_bytes(b"partial")
    (out / "done.json").unlink()
    with caplog.at_level(logging.INFO):
        score.run(recipe)
    assert "removed 2 stale shard file(s) of an earlier run" in caplog.text
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"0000{k}.npz" for k in range(3)]
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), first)
    assert json.loads((out / "done.json").read_text())["utterances"] == 10


# -- no process outlives a killed stage --


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_prepare_workers_die_with_a_killed_parent(local_recipe, tmp_path):
    recipe_path, corpus = local_recipe
    wave, rate = speak("play some jazz")
    rows = ["path\ttext"]
    for i in range(64):  # enough jobs for the process pool (32 or more)
        sf.write(corpus / f"w{i}.wav", wave, rate)
        rows.append(f"w{i}.wav\tplay some jazz")
    (corpus / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    # the workers are slowed down so that the kill lands while they work
    script = textwrap.dedent(
        f"""
        import time
        from pipeline.config import load_recipe
        from pipeline.prepare import stage
        real = stage._ingest_job
        def slow(args):
            time.sleep(0.5)
            return real(args)
        stage._ingest_job = slow
        stage.run(load_recipe({str(recipe_path)!r}, ["prepare.workers=2"]))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline and len(workers) < 2:
        workers = _children(proc.pid)
        time.sleep(0.05)
    assert len(workers) >= 2, "the process pool never started"
    time.sleep(1.0)  # the workers are busy now
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    audio_dir = tmp_path / "data" / "prepare" / "audio" / "mine" / "clean"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.05)
    assert not any(_alive(w) for w in workers), "a worker outlived its killed parent"
    written = tree(audio_dir) if audio_dir.exists() else {}
    time.sleep(1.5)  # an orphan would go on writing a file every half second
    assert (tree(audio_dir) if audio_dir.exists() else {}) == written


def test_a_variant_subset_trains_its_run_by_default_not_a_nested_path():
    from pipeline.layout import check_name, subset_run

    assert subset_run("variants/k1000-s1/rsft", 0, 300) == "rsft-k1000-s1"
    assert subset_run("variants/k300-s2/random", 0, 300) == "random-s2"
    assert subset_run("oracle", 0, 300) == "oracle"
    for name in ("rsft-k1000-s1", "rsft@packed", "full-converged", "v1.2+lora"):
        assert check_name(name, "run") == name
    for name in ("", ".", "..", "a/b", "-x", "a\tb", "x" * 129, "ä/b"):
        with pytest.raises(UserError):
            check_name(name, "run")
