"""Selectors that add generated training data to rsft's draw from the pool.

Two generators feed them (pipeline/prepare/corpora/augment.py, pipeline/generate/pseudo.py):

- ``augment``: labelled pool speech mixed with the target audio's own noise at its estimated
  SNRs (a prepared set, select.augment_set). A candidate x is accepted by one pass of rejection
  sampling, u < w(x)/M, with w = p_target / p_candidates estimated as the pool's ratio is (a
  cross-fitted classifier of target vs candidates, on the same embeddings): the candidates are
  the proposal, so what is accepted is distributed like the target where they reach it.
- ``pseudo``: the target sample's own audio with the teacher's transcripts (select.pseudo_labels),
  accepted when u < r(x)^power / M, r the transcript's reliability (agreement of samples with
  the greedy transcript): the sure labels train, the doubtful ones mostly do not.

Each selector is rsft's very draw from the pool (the same rows as ``rsft``, so that arms differ
only in what was generated) plus the generated rows, accepted or all of them (``_all``: the arm
without the rejection step). Rows of the subset past the pool's are the generated ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipeline import metrics, text
from pipeline.config import SelectConfig
from pipeline.errors import UserError
from pipeline.fsio import stable_seed
from pipeline.select import ratios, sampling

log = logging.getLogger(__name__)

ACCEPT, ALL = "accept", "all"
# selector -> how it takes each generator's rows (None: not at all)
GENERATED: dict[str, dict[str, str]] = {
    "rsft_aug": {"augment": ACCEPT},
    "rsft_aug_all": {"augment": ALL},
    "rsft_pl": {"pseudo": ACCEPT},
    "rsft_pl_all": {"pseudo": ALL},
    "rsft_gen": {"augment": ACCEPT, "pseudo": ACCEPT},
    "rsft_gen_all": {"augment": ALL, "pseudo": ALL},
}
# threshold grid of the pseudo-labels' count-against-accuracy curve
THRESHOLDS = tuple(round(t, 2) for t in np.linspace(0.0, 1.0, 11))


def configured(cfg: SelectConfig) -> set[str]:
    """The generators the recipe sets up."""
    made = set()
    if cfg.augment_set is not None:
        made.add("augment")
    if cfg.pseudo_labels:
        made.add("pseudo")
    return made


def runnable(selector: str, cfg: SelectConfig) -> bool:
    """Whether every generator ``selector`` takes from is set up."""
    return set(GENERATED[selector]) <= configured(cfg)


@dataclass
class Block:
    """One generator's rows, their log-weights for rejection (None: no weight, with the
    reason in ``info``) and what the diagnostics report."""

    name: str
    frame: pd.DataFrame
    log_w: np.ndarray | None
    info: dict = field(default_factory=dict)
    references: list[str] | None = None  # pseudo: the true transcripts, for diagnostics only
    # how the recipe scores transcripts (model.language, evaluate.strip_diacritics)
    language: str = "en"
    strip_diacritics: bool = False


def augment_block(frame: pd.DataFrame, emb, target_emb, cfg: SelectConfig, seed: int) -> Block:
    """The candidates and their ratio to the target (None, with the reason, when there is
    no target sample or the classifier tells them apart perfectly)."""
    info: dict = {"set": cfg.augment_set, "candidates": len(frame)}
    if target_emb is None:
        info["error"] = "no target sample (select.target) to weigh the candidates by"
        return Block("augment", frame, None, info)
    rng = np.random.default_rng(stable_seed(seed, "select", "generated ratio"))
    try:
        log_w, clf = ratios.classifier_log_ratio(
            emb, target_emb, rng, cfg.folds, cfg.C, cfg.pca_dim, layer=cfg.layer
        )
    except UserError as err:
        info["error"] = str(err)
        return Block("augment", frame, None, info)
    info.update(auc=clf["auc"], layer=clf["layer"], C=clf["C"])
    log.info("select: %d candidates of %s: AUC %.3f", len(frame), cfg.augment_set, clf["auc"])
    return Block("augment", frame, log_w, info)


def pseudo_block(
    target: pd.DataFrame,
    labels: pd.DataFrame,
    cfg: SelectConfig,
    language: str = "en",
    strip_diacritics: bool = False,
) -> Block:
    """The target sample's audio with its pseudo-labels (empty ones left out: they label
    nothing), weighted by reliability ** pseudo_power. The manifest's own transcripts, when
    it has them, are kept aside for the diagnostics and never join the rows; both are
    normalised as ``language`` is scored."""

    def norm(s: str) -> str:
        return text.normalize(s, language, strip_diacritics)

    merged = target.merge(labels[["id", "hypothesis", "agreement", "logprob"]], on="id")
    if len(merged) != len(target):
        raise UserError("pseudo-labels do not match the target sample (rerun: rsft score)")
    labelled = merged["hypothesis"].map(lambda h: bool(norm(h)))
    refs = merged["text"].fillna("").astype(str).tolist()
    known = [r for r, keep in zip(refs, labelled, strict=True) if keep]
    frame = merged[labelled].reset_index(drop=True)
    frame = frame.assign(text=frame["hypothesis"], origin_source=frame["source"], source="pseudo")
    frame = frame.drop(columns="hypothesis")
    with np.errstate(divide="ignore"):
        log_w = cfg.pseudo_power * np.log(frame["agreement"].to_numpy(dtype=np.float64))
    info = {"target": len(target), "labelled": len(frame), "empty": int((~labelled).sum())}
    has_refs = all(norm(r) for r in known) and bool(known)
    scoring = {"language": language, "strip_diacritics": strip_diacritics}
    if not np.isfinite(log_w).any():
        error = {**info, "error": "no pseudo-label is reliable"}
        return Block("pseudo", frame, None, error, **scoring)
    return Block("pseudo", frame, log_w, info, known if has_refs else None, **scoring)


def check_ids(pool: pd.DataFrame, blocks: dict[str, Block]) -> None:
    """A one-line UserError when a generator's rows share ids with the pool or with another
    generator's (e.g. two bare folders of files with the same names): a subset keyed by id
    could not tell them apart."""
    seen = {"pool": set(pool["id"])}
    for name, block in blocks.items():
        ids = set(block.frame["id"])
        for other, taken in seen.items():
            if clash := sorted(ids & taken):
                raise UserError(
                    f"select: {len(clash)} {name} row id(s) are also {other} ids ({clash[0]}, "
                    "...): give the sets distinct ids (an id column, or distinct file names)"
                )
        seen[name] = ids


@dataclass
class Generated:
    """The pool's rows, then each generator's (in ``blocks`` order), with their groups."""

    pool: pd.DataFrame
    groups: list  # metadata groups of ``rows``, in order
    blocks: dict[str, Block]

    @property
    def n_pool(self) -> int:
        return len(self.pool)

    @property
    def rows(self) -> pd.DataFrame:
        return pd.concat([self.pool, *(b.frame for b in self.blocks.values())], ignore_index=True)

    def offsets(self) -> dict[str, int]:
        """The row index where each block starts."""
        out, at = {}, self.n_pool
        for name, block in self.blocks.items():
            out[name] = at
            at += len(block.frame)
        return out

    def select(self, selector: str, cfg: SelectConfig, pool_draw, log_w, seed: int):
        """``pool_draw`` (rsft's) plus each generator's rows as ``selector`` takes them; the
        log-weights of every row for the plots (each block on the pool's scale)."""
        picked, notes = [pool_draw.indices], list(pool_draw.notes)
        offsets = self.offsets()
        plot_w = [log_w]
        finite = log_w[np.isfinite(log_w)]
        top = finite.max() if finite.size else 0.0
        for name, block in self.blocks.items():
            mode = GENERATED[selector].get(name)
            n = len(block.frame)
            weights = block.log_w if block.log_w is not None else np.zeros(n)
            ok = np.isfinite(weights)
            plot_w.append(weights - (weights[ok].max() if ok.any() else 0.0) + top)
            if mode is None:
                continue
            if mode == ALL:
                accepted = np.arange(n, dtype=np.int64)
            elif block.log_w is None:
                raise UserError(f"no weights for the {name} rows: {block.info['error']}")
            else:
                rng = np.random.default_rng(stable_seed(seed, "select", selector, name))
                one = sampling.one_pass_rejection(block.log_w, rng, cfg.generated_cap_quantile)
                accepted = one.indices
                notes.append(
                    f"{name}: {one.size} of {n} accepted (expected "
                    f"{one.first_pass_expected:.1f}; clipped mass {one.clipped_mass:.3f})"
                )
            picked.append(offsets[name] + accepted)
        indices = np.sort(np.concatenate(picked))
        selection = sampling.Selection(
            indices=indices,
            method=selector,
            budget=cfg.budget,
            n_pool=self.n_pool + sum(len(b.frame) for b in self.blocks.values()),
            proposals=pool_draw.proposals + sum(len(b.frame) for b in self.blocks.values()),
            notes=tuple(notes),
        )
        return selection, np.concatenate(plot_w)

    def diagnostics(self, selector: str, selection: sampling.Selection) -> dict:
        """Per generator the selector takes: rows generated and accepted, the share by the
        source they were made from (augment: the pool utterance's noise, the speed), and for
        pseudo-labels with known transcripts, the WER of accepted, rejected and all labels
        and the count-against-accuracy curve over reliability thresholds."""
        out = {}
        offsets = self.offsets()
        for name, block in self.blocks.items():
            if name not in GENERATED[selector]:
                continue
            n = len(block.frame)
            chosen = np.zeros(n, dtype=bool)
            mine = selection.indices[
                (selection.indices >= offsets[name]) & (selection.indices < offsets[name] + n)
            ]
            chosen[mine - offsets[name]] = True
            entry = {
                **block.info,
                "generated": n,
                "accepted": int(chosen.sum()),
                "acceptance": float(chosen.mean()) if n else 0.0,
                "by_source": _by_source(block.frame, chosen),
            }
            if block.references is not None:
                entry["references"] = _pseudo_quality(block, chosen)
            out[name] = entry
        return out


def _by_source(frame: pd.DataFrame, chosen: np.ndarray) -> dict:
    out = {}
    for column in ("origin_noise", "speed", "origin_source"):
        if column in frame.columns:
            table = pd.DataFrame({"key": frame[column].astype(str), "accepted": chosen})
            grouped = table.groupby("key")["accepted"].agg(["size", "sum"])
            out[column] = {
                k: {"generated": int(r["size"]), "accepted": int(r["sum"])}
                for k, r in grouped.iterrows()
            }
    return out


def _pseudo_quality(block: Block, chosen: np.ndarray) -> dict:
    """WER of the pseudo-labels against the true transcripts (which the method never reads):
    accepted, rejected, all; and per reliability threshold, how many labels reach it and
    their WER."""
    scoring = (block.language, block.strip_diacritics)
    errors = metrics.utterance_errors(
        text.normalize_batch(block.references, *scoring),
        text.normalize_batch(block.frame["text"], *scoring),
    )

    def wer(mask) -> float | None:
        words = errors["ref_words"][mask].sum()
        return float(errors["errors"][mask].sum() / words) if words else None

    reliability = block.frame["agreement"].to_numpy()
    curve = [
        {"threshold": t, "kept": int((reliability >= t).sum()), "wer": wer(reliability >= t)}
        for t in THRESHOLDS
    ]
    out = {
        "wer_accepted": wer(chosen),
        "wer_rejected": wer(~chosen),
        "wer_all": wer(np.ones(len(chosen), dtype=bool)),
        "curve": curve,
    }
    if "origin_source" in block.frame.columns:  # e.g. synthetic and real requests
        sources = block.frame["origin_source"].astype(str).to_numpy()
        out["by_source"] = {
            src: {
                "labels": int((sources == src).sum()),
                "accepted": int((chosen & (sources == src)).sum()),
                "wer_all": wer(sources == src),
                "wer_accepted": wer(chosen & (sources == src)),
            }
            for src in sorted(set(sources))
        }
    return out
