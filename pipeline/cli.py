"""Command line: one subcommand per stage: `rsft STAGE RECIPE` or `python -m pipeline STAGE`."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from pathlib import Path

from pipeline import __version__
from pipeline.config import load_recipe
from pipeline.errors import UserError


def _prepare(args: argparse.Namespace) -> None:
    from pipeline import prepare

    prepare.run(load_recipe(args.recipe, args.set))


def _score(args: argparse.Namespace) -> None:
    from pipeline import score

    score.run(load_recipe(args.recipe, args.set))


def _select(args: argparse.Namespace) -> None:
    from pipeline import select

    select.run(load_recipe(args.recipe, args.set))


def _finetune(args: argparse.Namespace) -> None:
    from pipeline import finetune

    finetune.run(load_recipe(args.recipe, args.set), args.subset, args.resume, args.name)


def _evaluate(args: argparse.Namespace) -> None:
    from pipeline import evaluate

    evaluate.run(load_recipe(args.recipe, args.set), args.model, args.name)


def _report(args: argparse.Namespace) -> None:
    from pipeline import report

    report.run(load_recipe(args.recipe, args.set))


def _experiment(args: argparse.Namespace) -> None:
    from pipeline import experiment

    experiment.run(load_recipe(args.recipe, args.set), quick=args.quick)


def _run(args: argparse.Namespace) -> None:
    from pipeline import experiment

    experiment.run_all(load_recipe(args.recipe, args.set), quick=args.quick)


def _personalise(args: argparse.Namespace) -> None:
    from pipeline import personal

    personal.run(args.recipe, args.recordings, args.user, args.set)


def _export(args: argparse.Namespace) -> None:
    from pipeline import export

    recipe = load_recipe(args.recipe, args.set)
    export.run(recipe, args.run, args.quantization, args.out, args.adapter)


def _compare(args: argparse.Namespace) -> None:
    from pipeline import evaluate

    for run in (args.run_a, args.run_b):
        if not run.is_dir():
            raise UserError(f"not an evaluate run folder: {run}")
    evaluate.compare(args.run_a, args.run_b, n_boot=args.bootstrap)
    for name in args.changes or ():
        evaluate.changes(args.run_a, args.run_b, name, top=args.top)


STAGES = {
    "prepare": (_prepare, "build corpus manifests and audio (synthesised, local, hub, archives)"),
    "score": (
        _score,
        "embeddings, losses and hypotheses of the pretrained model on pool and target",
    ),
    "select": (_select, "density-ratio rejection sampling and baseline subsets at one budget"),
    "finetune": (_finetune, "fine-tune the model on a selected subset (Accelerate; resumable)"),
    "evaluate": (_evaluate, "WER/CER per test set and group, with bootstrap intervals"),
    "report": (_report, "comparison of systems over seeds: tables, figures, Markdown and HTML"),
    "experiment": (
        _experiment,
        "fine-tune and evaluate every selector over seeds and budgets, then report",
    ),
    "run": (
        _run,
        "every stage in order (prepare, score, select, experiment); prints the time per stage",
    ),
}


def _at_least_one(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error, not one line"
    )


# what to do about an OS error, by errno; the line names the path and the system's words
_OS_HINTS = {
    errno.ENOSPC: "free disk space, or set data_dir to a larger disk; rerun to resume",
    errno.EDQUOT: "free space in your quota, or set data_dir elsewhere; rerun to resume",
    errno.EACCES: "check its permissions, or set data_dir to a folder you can write",
    errno.EPERM: "check its permissions, or set data_dir to a folder you can write",
    errno.EROFS: "a read-only file system: set data_dir to a writable folder",
    errno.ENOENT: "check the path (a recipe path, a set's files, or an earlier stage's output)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check data_dir and the paths",
    errno.EISDIR: "a folder where a file was expected: check the path",
}


def os_error_line(err: OSError) -> str:
    """One line for an OS error: the path, the system's words, and what to do."""
    where = f"{err.filename}: " if err.filename else ""
    what = err.strerror or str(err)
    hint = _OS_HINTS.get(err.errno or 0)
    return f"{where}{what}" + (f"; {hint}" if hint else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rsft", description="Adapt speech recognisers to new accents and noisy rooms."
    )
    parser.add_argument("--version", action="version", version=f"rsft {__version__}")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (func, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text, description=help_text)
        stage.add_argument("recipe", help="recipe YAML file, e.g. recipes/demo.yaml")
        stage.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="override a recipe field (repeatable); list items by index or name",
        )
        _common(stage)
        stage.set_defaults(func=func)
        if name == "finetune":
            stage.add_argument(
                "--subset",
                help="the subset to train on: a selector, or variants/k<K>-s<S>/<selector> "
                "(default: finetune.subset)",
            )
            stage.add_argument(
                "--resume", action="store_true", help="continue from the last checkpoint"
            )
            stage.add_argument(
                "--name",
                help="run name: output in finetune/NAME (default: the subset's selector, with "
                "-k<budget>-s<seed> for a variant's)",
            )
        if name in ("experiment", "run"):
            stage.add_argument(
                "--quick",
                action="store_true",
                help="only experiment.quick_systems x quick_seeds at the recipe's budget",
            )
        if name == "evaluate":
            stage.add_argument("--model", help="model to evaluate (default: the recipe's model)")
            stage.add_argument(
                "--name",
                help="run name (default: 'pretrained', a fine-tuned model's run, or the "
                "model folder's name)",
            )
    help_text = "adapt to one user from a folder of their recordings (a LoRA adapter)"
    mine = sub.add_parser("personalise", help=help_text, description=help_text)
    mine.add_argument("recipe", help="a personalisation recipe, e.g. recipes/personal.yaml")
    mine.add_argument("recordings", type=Path, help="folder of the user's audio files")
    mine.add_argument("--user", required=True, help="the user's name: data/<recipe>-<user>/")
    mine.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override"
    )
    _common(mine)
    mine.set_defaults(func=_personalise)
    help_text = "a fine-tuned Whisper as a CTranslate2 folder that faster-whisper loads"
    out = sub.add_parser("export", help=help_text, description=help_text)
    out.add_argument("recipe", help="the recipe that trained the run, e.g. recipes/demo.yaml")
    out.add_argument("run", help="a run name (finetune/RUN/model), 'pretrained', or a model folder")
    out.add_argument("--format", choices=["ct2"], default="ct2", help="output format (ct2)")
    out.add_argument(
        "--quantization",
        default="int8",
        help="CTranslate2 weight type: int8 (default), int8_bfloat16, float16, float32, ...",
    )
    out.add_argument("--out", type=Path, help="output folder (default: data/<recipe>/export/)")
    out.add_argument("--adapter", help="a user's LoRA adapter folder, merged before export")
    out.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override"
    )
    _common(out)
    out.set_defaults(func=_export)
    compare = sub.add_parser(
        "compare",
        help="paired bootstrap of WER between two evaluate runs",
        description="Paired bootstrap of WER(B) - WER(A) per test set scored by both runs.",
    )
    compare.add_argument(
        "run_a", type=Path, help="evaluate run folder, e.g. data/demo/evaluate/pretrained"
    )
    compare.add_argument("run_b", type=Path, help="second evaluate run folder")
    compare.add_argument(
        "--bootstrap", type=_at_least_one, default=10000, help="resamples (default 10000)"
    )
    compare.add_argument(
        "--changes",
        action="append",
        metavar="SET",
        help="also list SET's utterances whose errors changed, most changed first (repeatable)",
    )
    compare.add_argument(
        "--top", type=int, default=20, help="with --changes: utterances shown each way (20)"
    )
    _common(compare)
    compare.set_defaults(func=_compare)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.func(args)
    except (UserError, OSError) as err:
        if args.debug:
            raise
        line = os_error_line(err) if isinstance(err, OSError) else str(err)
        print(f"rsft {args.stage}: error: {line}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"rsft {args.stage}: interrupted; rerun to resume", file=sys.stderr)
        sys.exit(130)
