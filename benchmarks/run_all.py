"""`make bench`: run every benchmark, each in its own process, and write the results.

Writes ``results.json`` (every benchmark's figures, the command that made them, when, how
long) and the generated part of ``RESULTS.md`` (between its bench markers; the hand-written
sections stay) in --out-dir, default benchmarks/. Reads the demo's data (``make demo``).
A benchmark that fails or runs past its time limit is recorded as such; the others still run.
``--only`` reruns some and keeps the others' figures from the last run.

    python benchmarks/run_all.py                      # everything: about 20-25 min on 2 cores
    python benchmarks/run_all.py --only flops score_throughput
    python benchmarks/run_all.py --render             # rewrite RESULTS.md from results.json
    python benchmarks/run_all.py --quick              # smoke run, into a temporary folder
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from harness import DATA_ROOT, REPO, code_version, machine, need
from results_md import render, update

from pipeline.fsio import read_json, write_json, write_text

HERE = Path(__file__).resolve().parent
# name: time limit in seconds (each runs benchmarks/<name>.py with its defaults)
BENCHMARKS = {
    "finetune_throughput": 1200,
    "score_throughput": 600,
    "evaluate_speed": 900,
    "select_scale": 300,
    "flops": 300,
    "stage_memory": 900,
}
SELECT_QUICK = ["--sizes", "1000", "10000"]  # select_scale.py has no --quick


def command(name: str, args: argparse.Namespace, out: Path) -> list[str]:
    """The benchmark's command line; select_scale.py prints its JSON rather than writing it."""
    line = [sys.executable, str(HERE / f"{name}.py")]
    if name == "select_scale":
        return line + (SELECT_QUICK if args.quick else []) + ["--json"]
    line += ["--quick"] if args.quick else []
    if args.data_root != DATA_ROOT.resolve():
        line += ["--data-root", str(args.data_root)]
    return line + ["--json", str(out)]


def run_one(name: str, args: argparse.Namespace, work: Path) -> dict:
    """Run one benchmark (its output shown as it goes) and return its entry for results.json."""
    out = work / f"{name}.json"
    line = command(name, args, out)
    shown = " ".join(["python", str(Path(line[1]).relative_to(REPO)), *line[2:]])
    shown = shown.replace(str(out), "OUT")
    print(f"\n== {name}: {shown}", flush=True)
    entry = {"command": shown, "quick": args.quick, "ran_at": now(), "error": None}
    start = time.perf_counter()
    capture = name == "select_scale"
    try:
        done = subprocess.run(
            line, cwd=REPO, timeout=BENCHMARKS[name], capture_output=capture, text=True
        )
    except subprocess.TimeoutExpired:
        done, entry["error"] = None, f"ran past its {BENCHMARKS[name]} s limit"
    entry["wall_s"] = time.perf_counter() - start
    if done is not None and capture:
        print(done.stdout, end="")
        print(done.stderr, end="", file=sys.stderr)
    if done is not None and done.returncode != 0:
        entry["error"] = f"exit status {done.returncode}"
    elif done is not None:
        text = done.stdout.strip().splitlines()[-1] if capture else out.read_text()
        entry["figures"] = json.loads(text)
    return entry


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    parser.add_argument("--out-dir", type=Path, help="default: benchmarks/ (--quick: a temp dir)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="default: data/demo")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="every benchmark's smoke run")
    args = parser.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(tempfile.mkdtemp(prefix="rsft-bench-")) if args.quick else HERE
    args.data_root = args.data_root.resolve()
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    results_path, markdown = args.out_dir / "results.json", args.out_dir / "RESULTS.md"
    results = read_json(results_path) if results_path.exists() else {"benchmarks": {}}
    if not args.render:
        need(args.data_root / "prepare" / "manifests", "prepare")
        started = time.perf_counter()
        results.update(machine=machine(), code=code_version())
        with tempfile.TemporaryDirectory(prefix="rsft-bench-") as tmp:
            for name in args.only or BENCHMARKS:
                results["benchmarks"][name] = run_one(name, args, Path(tmp))
                write_json(results_path, results)  # what ran so far survives a kill
        results["wall_s"] = time.perf_counter() - started
        write_json(results_path, results)
    if not markdown.exists() and (HERE / "RESULTS.md").exists():
        markdown.write_text((HERE / "RESULTS.md").read_text())  # hand-written sections
    write_text(markdown, update(markdown, render(results)))
    failed = [n for n, e in results["benchmarks"].items() if e.get("error")]
    print(f"\nwrote {results_path} and {markdown}" + (f"; failed: {failed}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
