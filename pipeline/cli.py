"""Command line: one subcommand per stage: `rsft STAGE RECIPE` or `python -m pipeline STAGE`."""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline import __version__
from pipeline.config import load_recipe
from pipeline.errors import UserError


def _prepare(args: argparse.Namespace) -> None:
    from pipeline import prepare

    prepare.run(load_recipe(args.recipe, args.set))


STAGES = {
    "prepare": (_prepare, "build corpus manifests and audio (synthesised, local, hub, archives)"),
}


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
        stage.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
        stage.set_defaults(func=func)
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
    except UserError as err:
        print(f"rsft {args.stage}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"rsft {args.stage}: interrupted; rerun to resume", file=sys.stderr)
        sys.exit(130)
