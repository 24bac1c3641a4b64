"""What the benchmark scripts share: the demo's data and recipe, clocks, profiles, JSON out.

Every script times the product beside the standard way in one process (or one process per
arm), on the same audio and weights, and reports ratios: absolute times on a shared machine
are noise. Scripts read the demo's prepared data (``make demo``) and never write into it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import Recipe, load_recipe  # noqa: E402
from pipeline.fsio import write_json  # noqa: E402

RECIPE = REPO / "recipes" / "demo.yaml"
DATA_ROOT = REPO / "data" / "demo"
PROFILE_LINES = 20  # cProfile rows kept, per ordering, when a target is missed


def add_arguments(parser: argparse.ArgumentParser, quick: str, profile: bool = False) -> None:
    """The options every benchmark script takes; ``quick`` says what --quick runs. Scripts
    with a target (``profile``) profile the product when it misses, or with --profile."""
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="default: data/demo")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the figures as JSON")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick}")
    if profile:
        parser.add_argument("--profile", action="store_true", help="profile even if met")


def setup(args: argparse.Namespace, quick: dict) -> argparse.Namespace:
    """Apply the common options: ``quick``'s values under --quick, an absolute data root,
    the thread count."""
    if args.quick:
        vars(args).update(quick)
    args.data_root = args.data_root.resolve()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return args


def need(path: Path, stage: str) -> Path:
    """``path``, or exit with the one line that says which stage makes it."""
    if not path.exists():
        sys.exit(f"{path} is missing: run `make demo` (or `make {stage}`) first")
    return path


def manifest_path(data_root: Path, name: str) -> Path:
    return need(data_root / "prepare" / "manifests" / f"{name}.parquet", "prepare")


def gap_text(row: dict) -> str:
    """A paired difference in points: '+0.85 [-2.35, +3.51] p 0.60' (``delta``,
    ``delta_95ci`` and ``p`` of a row, as fractions)."""
    low, high = row["delta_95ci"]
    return f"{100 * row['delta']:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] p {row['p']:.2f}"


def demo_recipe(data_root: Path, *overrides: str) -> Recipe:
    """recipes/demo.yaml reading ``data_root``, with ``section.key=value`` overrides."""
    return load_recipe(RECIPE, [f"data_dir={data_root}", *overrides])


def sample(frame, n: int):
    """A fixed sample of ``n`` rows (seed 0; ids encode the set's part, so the first n by id
    would be one accent), in id order."""
    frame = frame.sample(n=min(n, len(frame)), random_state=0).sort_values("id")
    return frame.reset_index(drop=True)


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds now; CPU time (user + system, all threads) moves less than wall
    time when other work shares the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_utime + usage.ru_stime


def timed(fn, *args, **kwargs) -> tuple[object, float, float]:
    """(result, wall s, CPU s) of one call."""
    start = clock()
    result = fn(*args, **kwargs)
    end = clock()
    return result, end[0] - start[0], end[1] - start[1]


def profile(fn, *args, lines: int = PROFILE_LINES, **kwargs) -> str:
    """cProfile of one call, as text: the top ``lines`` functions by their own time (where the
    CPU goes), then by cumulative time (which calls lead there)."""
    profiler = cProfile.Profile()
    profiler.runcall(fn, *args, **kwargs)
    parts = []
    for order in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out).strip_dirs().sort_stats(order)
        stats.print_stats(lines)
        text = out.getvalue()
        parts.append(f"by {order}:\n" + text[text.find("ncalls") :].rstrip())
    return "\n\n".join(parts)


def machine() -> dict:
    """What the figures were measured on, and how loaded it was."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1min": os.getloadavg()[0],
    }


def code_version() -> str:
    """The commit, and whether the product's code differs from it."""
    git = ["git", "-C", str(REPO)]
    try:
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "pipeline"], capture_output=True)
    except OSError:
        return "unknown"
    commit = head.stdout.decode().strip() or "unknown"
    return commit + (" + local changes" if dirty.stdout.strip() else "")


def save(path: Path | None, figures: dict) -> None:
    """Write the figures as JSON (atomically), with the machine and code they came from."""
    if path is not None:
        write_json(path, {**figures, "machine": machine(), "code": code_version()})


def main(parse_args, run, print_table, argv=None) -> None:
    """A benchmark script's main: parse, measure, print the table, write the JSON."""
    args = parse_args(argv)
    figures = run(args)
    print_table(figures)
    if "profile_stage" in figures:
        print("\nwhere the stage's time goes (cProfile):\n" + figures["profile_stage"])
    save(args.json, figures)


def command_line() -> str:
    return " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
