"""The data tree of one recipe, in one place: every path a stage reads or writes under the
recipe's data root, the models cache, run names (one function builds them, one parses them),
the completion stamp, and the registry of selectors.

    <root>/prepare/manifests/<set>.parquet     prepare: one manifest per set
    <root>/prepare/audio/<set>/                prepare: the set's audio
    <root>/sources/<set>/, noise_sources/<n>/  prepare: downloads and extracted corpora
    <root>/score/<set>/                        score: embeddings, scores, done.json
    <root>/select/<selector>/subset.parquet    select: the recipe's seed and budget
    <root>/select/weights.parquet              select: every pool row's selection weights
    <root>/select/variants/k<K>-s<S>/<selector>/   select: other seeds and budgets
    <root>/finetune/<run>/model/               finetune: the saved model of a run
    <root>/evaluate/<run>/<set>/               evaluate: one run's reading of a test set
    <root>/report/                             report
    <root>/export/<run>-ct2-<quantization>/    rsft export: a model for CTranslate2
    <root>/models/                             bundled models converted for transformers

Every path under the root that a stage stores in a file is relative to the file's folder, so
a data folder can be moved as a whole (``manifest.write``).

Vocabulary: a *selector* is how a subset is drawn from the pool (``SELECTORS``); a *system* is
a model the comparison reads (the pretrained model, or a selector's subset fine-tuned); a
*run* is one system at one seed and budget (``run_name``), read in the recipe's layout, or in
the second one as ``<run>@<layout>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from pipeline.errors import UserError
from pipeline.fsio import read_json, write_json

Selector = Literal[
    "rsft",
    "random",
    "oracle",
    "full",
    "wer_filter",
    "importance",
    "labelled_target",
    "rsft_labelled",
    "rsft_aug",
    "rsft_aug_all",
    "rsft_pl",
    "rsft_pl_all",
    "rsft_gen",
    "rsft_gen_all",
]
WEIGHTS = "weights.parquet"  # read by other toolkits: keep its name and columns stable

# every selector, in the order tables list them: each draws a subset that trains a system
SELECTORS: tuple[str, ...] = get_args(Selector)
PRETRAINED = "pretrained"  # the system that is not fine-tuned
STAMP = "done.json"

# a name that becomes one file or folder under the data root: no '/', no leading '.' (so
# never '..' nor a hidden file), nothing a shell or a TSV would split
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}")


def check_name(name: str, what: str) -> str:
    """``name`` when it is safe as one path component under the data root; else a UserError
    naming ``what`` (a recipe name, run, set or subset): the one check every name that
    becomes a path goes through (``DataTree``)."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise UserError(
            f"{what} {name!r}: use letters, digits, '_', '-', '.', '@' or '+' (at most 128, "
            "starting with a letter or digit; no '/')"
        )
    return name


@dataclass(frozen=True)
class DataTree:
    """The paths of one recipe's data root (``Recipe.tree``)."""

    root: Path

    # prepare
    @property
    def prepare(self) -> Path:
        return self.root / "prepare"

    @property
    def manifests(self) -> Path:
        return self.prepare / "manifests"

    def manifest(self, name: str) -> Path:
        return self.manifests / f"{check_name(name, 'set')}.parquet"

    def audio(self, name: str) -> Path:
        return self.prepare / "audio" / check_name(name, "set")

    def sources(self, name: str) -> Path:
        return self.root / "sources" / check_name(name, "set")

    def noise_sources(self, name: str) -> Path:
        return self.root / "noise_sources" / check_name(name, "noise source")

    # score
    def score(self, name: str) -> Path:
        return self.root / "score" / check_name(name, "set")

    # select
    @property
    def select(self) -> Path:
        return self.root / "select"

    def selection(self, variant: str | None = None) -> Path:
        """The folder select writes: the recipe's own draw, or a variant's (``variant``)."""
        return self.select / "variants" / check_name(variant, "variant") if variant else self.select

    def export(self, name: str) -> Path:
        """An exported model's folder (rsft export)."""
        return self.root / "export" / check_name(name, "export")

    def weights(self, variant: str | None = None) -> Path:
        """Every pool row's selection weights, for other toolkits (docs/weights.md)."""
        return self.selection(variant) / WEIGHTS

    def subset(self, name: str) -> Path:
        """A subset by its name under select/: ``<selector>`` or ``variants/.../<selector>``."""
        for part in name.split("/"):
            check_name(part, f"subset {name!r}: part")
        return self.select / name / "subset.parquet"

    # finetune, evaluate, report
    def finetune(self, run: str) -> Path:
        return self.root / "finetune" / check_name(run, "run")

    def model(self, run: str) -> Path:
        return self.finetune(run) / "model"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluate"

    def evaluate(self, run: str) -> Path:
        return self.evaluations / check_name(run, "run")

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def models(self) -> Path:
        """Models converted for transformers (the bundled Whisper), cached under the root."""
        return self.root / "models"


# -- runs --


@dataclass(frozen=True)
class RunName:
    system: str  # a selector, or PRETRAINED
    seed: int | None  # None for the pretrained model
    budget: int | None  # subset size; None for the pretrained model
    sweep: bool = False  # named with -k<budget>


_RUN_NAME = re.compile(r"^(?P<system>[a-z_]+)(?:-k(?P<budget>\d+))?(?:-s(?P<seed>\d+))?$")


def run_name(selector: str, seed: int, budget: int, base_seed: int, base_budget: int) -> str:
    """A fine-tuned run's name: ``<selector>`` at the recipe's seed and budget (``base_*``),
    ``<selector>-s<seed>`` at another seed, ``<selector>-k<budget>-s<seed>`` at another budget."""
    if budget != base_budget:
        return f"{selector}-k{budget}-s{seed}"
    if seed != base_seed:
        return f"{selector}-s{seed}"
    return selector


def parse_run_name(name: str, seed: int, budget: int) -> RunName | None:
    """What a run's name stands for (``run_name``'s inverse); None if it follows no rule.

    ``pretrained``, or a name ``run_name`` builds (``-k<budget>`` alone is read too); ``seed``
    and ``budget`` are the recipe's, taken where the name leaves them out.
    """
    if name == PRETRAINED:
        return RunName(PRETRAINED, None, None)
    match = _RUN_NAME.match(name)
    if match is None or match["system"] not in SELECTORS:
        return None
    return RunName(
        match["system"],
        int(match["seed"]) if match["seed"] is not None else seed,
        int(match["budget"]) if match["budget"] is not None else budget,
        sweep=match["budget"] is not None,
    )


_VARIANT_SUBSET = re.compile(r"^variants/k(?P<budget>\d+)-s(?P<seed>\d+)/(?P<selector>[^/]+)$")


def subset_run(subset: str, base_seed: int, base_budget: int) -> str:
    """The run a subset trains when no run name is given: ``run_name`` of a variant's selector
    at its seed and budget (``variants/k1000-s1/rsft`` trains ``rsft-k1000-s1``), else the
    subset's own name."""
    match = _VARIANT_SUBSET.match(subset)
    if match is None:
        return subset
    seed, budget = int(match["seed"]), int(match["budget"])
    return run_name(match["selector"], seed, budget, base_seed, base_budget)


def model_run(model: str) -> str:
    """The run a model is read as when no run name is given: a fine-tuned model's run
    (``finetune/<run>/model`` reads as ``<run>``), else the folder's or hub id's last part,
    with every character a run name cannot hold as '-' (``bundled:whisper-tiny.en`` reads
    as ``bundled-whisper-tiny.en``)."""
    path = Path(model.rstrip("/"))
    name = path.parent.name if path.name == "model" and path.parent.name else path.name
    name = re.sub(r"[^A-Za-z0-9_.@+-]", "-", name).lstrip(".-_@+")
    return name or "model"


def variant(seed: int, budget: int, base_seed: int, base_budget: int) -> str | None:
    """The folder under select/variants/ of a draw at another seed or budget than the
    recipe's (``base_*``); None for the recipe's own draw."""
    if seed == base_seed and budget == base_budget:
        return None
    return f"k{budget}-s{seed}"


def subset_name(selector: str, seed: int, budget: int, base_seed: int, base_budget: int) -> str:
    """A subset's name under select/ (``DataTree.subset``): the recipe's own draw, or a
    variant's."""
    folder = variant(seed, budget, base_seed, base_budget)
    return f"variants/{folder}/{selector}" if folder else selector


# -- completion stamps --


def stamped_key(stamp: Path) -> str | None:
    """The key of the inputs the stamped output was made from; None without a stamp."""
    return read_json(stamp).get("key") if stamp.exists() else None


def is_done(stamp: Path, key: str) -> bool:
    """Whether the stamp says its output was made from inputs with this key."""
    return stamped_key(stamp) == key


def mark_done(stamp: Path, key: str, **record) -> None:
    """Write the stamp (atomically), last: an output without one is redone."""
    write_json(stamp, {"key": key, **record})
