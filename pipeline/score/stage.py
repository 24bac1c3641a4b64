"""Stage 2, score: the pretrained model's view of every pool and target-sample utterance.

Output, under ``<data_dir>/score/<set>/``:
  embeddings.npy    float16 (utterances, layers, dim): mean-pooled encoder states of every
                    layer (0: the first block's input), row-aligned with the manifest
  scores.parquet    id, loss (NLL of the reference; NaN for the unlabelled target sample and
                    when ``score.losses`` leaves them out),
                    hypothesis, logprob (its mean token log-probability), wer (vs the text)
  shards/           the same in pieces of ``score.shard_size``; a killed run redoes only the
                    missing ones, and under ``accelerate launch`` each process takes every
                    N-th shard while the main process gathers them
  done.json         the set's key (model fingerprint, settings, manifest hash), peak RSS
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import PartialState
from tqdm import tqdm

from pipeline import __version__, audio, layout, manifest, metrics, resources, text
from pipeline.config import Recipe
from pipeline.errors import UserError
from pipeline.fsio import atomic_path, file_sha256, fingerprint
from pipeline.models import loader
from pipeline.models.base import SpeechModel, length_batches
from pipeline.typed import to_dict

log = logging.getLogger(__name__)
UNLABELLED_SPLITS = ("target",)  # the target sample is audio only: its transcripts are not used


def run(recipe: Recipe) -> None:
    """Score every pool and target set of the recipe (or ``score.sets``)."""
    cfg = recipe.score
    # CPU-only machines run several processes on gloo (accelerate launch --multi_gpu)
    state = PartialState(cpu=not torch.cuda.is_available())
    sets = list(cfg.sets) or [s.name for s in recipe.prepare.sets if s.split in ("pool", "target")]
    split_of = {s.name: s.split for s in recipe.prepare.sets}
    paths = {name: recipe.tree.manifest(name) for name in sets}
    frames = {}
    for name, path in paths.items():
        if not path.exists():
            raise UserError(f"set {name!r}: no manifest at {path} (run: rsft prepare first)")
        frames[name] = manifest.read(path)
        if frames[name].empty:
            rejects = recipe.tree.prepare / "rejects" / f"{name}.tsv"
            raise UserError(f"set {name!r}: no utterance to score (prepare's reasons: {rejects})")
    if state.is_main_process:
        log.info(
            "Stage 2: score %s with %s on %d process(es)",
            ", ".join(sets),
            recipe.model.name,
            state.num_processes,
        )
    with state.main_process_first():  # the bundled model is converted once
        analyser = loader.load(replace(recipe.model, layout=cfg.layout), recipe.tree.models)
    reader = loader.with_layout(analyser, cfg.decode_layout)
    decoder = reader if cfg.hypotheses else None
    losses = wants_losses(recipe)
    model_print = analyser.fingerprint()

    def set_key(path: Path, hypotheses: bool, with_losses: bool) -> str:
        settings = {k: v for k, v in to_dict(cfg).items() if k != "sets"}
        settings |= {"hypotheses": hypotheses, "losses": with_losses}
        settings["bf16"] = getattr(analyser, "bf16", False)  # model.bf16 resolved here
        return fingerprint(
            model_print,
            recipe.model.key(decodes=hypotheses),
            settings,
            file_sha256(path),
            __version__,
            *([reader.decoding_revision] if hypotheses else []),
        )

    for name, path in paths.items():
        key = set_key(path, cfg.hypotheses, losses)
        # a set scored with hypotheses or losses this run does not ask for is up to date too
        # (make experiment decodes the pool's hypotheses; a later make demo does not need them)
        richer = {
            set_key(path, cfg.hypotheses or h, losses or w)
            for h in (False, True)
            for w in (False, True)
        }
        out = recipe.tree.score(name)
        if layout.stamped_key(out / layout.STAMP) in richer:
            log.info("set %s: up to date", name)
            continue
        labelled = split_of.get(name) not in UNLABELLED_SPLITS
        if state.is_main_process:
            remove_stale_shards(out / "shards", len(frames[name]), cfg.shard_size)
        state.wait_for_everyone()
        score_set(
            analyser,
            decoder,
            frames[name],
            out,
            key,
            cfg.shard_size,
            cfg.batch_size,
            labelled,
            state,
            losses,
        )
        if state.is_main_process:
            decoded = labelled and decoder is not None
            gather(out, key, frames[name] if decoded else None, recipe.model.language)
        state.wait_for_everyone()
    if wants_pseudo_labels(recipe) and state.is_main_process:
        from pipeline.generate import pseudo

        pseudo.run(recipe, pseudo_sets(recipe))
    state.wait_for_everyone()


def pseudo_sets(recipe: Recipe) -> list[str]:
    """The unlabelled sets that are pseudo-labelled: select.pseudo_sets, else the target."""
    return list(recipe.select.pseudo_sets) or [recipe.select.target]


def wants_pseudo_labels(recipe: Recipe) -> bool:
    """score.pseudo_labels, or by default whether select takes pseudo-labelled target audio."""
    if recipe.score.pseudo_labels is not None:
        return recipe.score.pseudo_labels and recipe.select.target is not None
    return recipe.select.pseudo_labels and recipe.select.target is not None


def wants_losses(recipe: Recipe) -> bool:
    """Whether to compute the teacher-forced losses: score.losses, or by default only when an
    estimator reads them (the decoder pass over every transcript costs about a fifth of the
    stage)."""
    if recipe.score.losses is not None:
        return recipe.score.losses
    return "difficulty" in recipe.select.estimators


def remove_stale_shards(folder: Path, rows: int, shard_size: int) -> None:
    """Delete the shards that this scoring will not write (an earlier run's, of a longer
    manifest or another shard size) and temp files of a killed write; shards it will write
    again are checked by key there."""
    keep = {f"{k:05d}.npz" for k in range(-(-rows // shard_size))}
    stale = [p for p in folder.glob("*") if p.is_file() and p.name not in keep]
    for path in stale:
        path.unlink()
    if stale:
        log.info("%s: removed %d stale shard file(s) of an earlier run", folder, len(stale))


def score_set(
    analyser: SpeechModel,
    decoder: SpeechModel | None,
    frame: pd.DataFrame,
    out: Path,
    key: str,
    shard_size: int,
    batch_size: int,
    labelled: bool,
    state: PartialState,
    losses: bool = True,
) -> None:
    """Write this process's shards of one set (skipping shards already written for ``key``)."""
    starts = range(0, len(frame), shard_size)
    mine = [k for k in range(len(starts)) if k % state.num_processes == state.process_index]
    for k in tqdm(mine, desc=out.name, unit="shard", disable=not state.is_main_process or None):
        path = out / "shards" / f"{k:05d}.npz"
        if path.exists() and str(np.load(path)["key"]) == key:
            continue
        shard = frame.iloc[k * shard_size : (k + 1) * shard_size].reset_index(drop=True)
        arrays = score_shard(analyser, decoder, shard, batch_size, labelled, losses)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, key=np.array(key), **arrays)
    state.wait_for_everyone()


def score_shard(
    analyser: SpeechModel,
    decoder: SpeechModel | None,
    shard: pd.DataFrame,
    batch_size: int,
    labelled: bool,
    losses: bool = True,
) -> dict[str, np.ndarray]:
    """Embeddings of every row; losses (given ``labelled`` and ``losses``) and hypotheses
    (given a decoder and ``labelled``); unreadable rows flagged, their values left NaN."""
    n = len(shard)
    emb = None
    loss = np.full(n, np.nan, dtype=np.float32)
    logprob = np.full(n, np.nan, dtype=np.float32)
    hyps = np.array([""] * n, dtype=object)
    bad = np.zeros(n, dtype=bool)
    for batch in length_batches(shard["duration_s"].tolist(), batch_size):
        waves, rows = [], []
        for i in batch:
            try:
                waves.append(audio.read(shard["audio_path"].iloc[i])[0])
                rows.append(i)
            except (audio.AudioError, OSError):
                bad[i] = True  # counted at gather time; its embedding stays NaN
        if not rows:
            continue
        texts = [shard["text"].iloc[i] for i in rows] if labelled and losses else None
        e, l_ = analyser.analyse(waves, texts)
        if emb is None:
            emb = np.full((n, *e.shape[1:]), np.nan, dtype=np.float32)
        emb[rows], loss[rows] = e, l_
        if decoder is not None and labelled:
            h, lp = decoder.transcribe_scored(waves)
            hyps[rows], logprob[rows] = h, lp
    if emb is None:
        emb = np.full((n, 1, 1), np.nan, dtype=np.float32)
    return {
        "ids": shard["id"].to_numpy(dtype=str),
        "embeddings": emb.astype(np.float16),
        "loss": loss,
        "logprob": logprob,
        "hypotheses": hyps.astype(str),
        "unreadable": bad,
    }


def gather(out: Path, key: str, frame: pd.DataFrame | None, language: str = "en") -> None:
    """Concatenate the shards into embeddings.npy and scores.parquet (main process).

    ``frame`` (the manifest of a labelled, decoded set) gives each hypothesis its WER.
    """
    shards = sorted((out / "shards").glob("*.npz"))
    parts = [np.load(p) for p in shards]
    if any(str(p["key"]) != key for p in parts):
        raise UserError(f"{out}: shards from another run are mixed in; delete {out} and rerun")
    # a shard with no readable row holds a (rows, 1, 1) NaN placeholder: widen it
    shape = max((p["embeddings"].shape[1:] for p in parts), key=lambda s: int(np.prod(s)))
    emb = np.concatenate(
        [
            p["embeddings"]
            if p["embeddings"].shape[1:] == shape
            else np.full((len(p["embeddings"]), *shape), np.nan, dtype=np.float16)
            for p in parts
        ]
    )
    table = pd.DataFrame(
        {
            "id": np.concatenate([p["ids"] for p in parts]),
            "loss": np.concatenate([p["loss"] for p in parts]),
            "hypothesis": np.concatenate([p["hypotheses"] for p in parts]),
            "logprob": np.concatenate([p["logprob"] for p in parts]),
            "unreadable": np.concatenate([p["unreadable"] for p in parts]),
        }
    )
    table["wer"] = np.nan
    if frame is not None:
        refs = frame.set_index("id").loc[table["id"], "text"].tolist()
        errors = metrics.utterance_errors(
            text.normalize_batch(refs, language),
            text.normalize_batch(table["hypothesis"].tolist(), language),
        )
        table["wer"] = (errors["errors"] / errors["ref_words"].clip(lower=1)).to_numpy()
    with atomic_path(out / "embeddings.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb)
    with atomic_path(out / "scores.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    layout.mark_done(
        out / layout.STAMP,
        key,
        utterances=len(table),
        unreadable=int(table["unreadable"].sum()),
        **resources.peak_rss(),  # of the main process, after scoring the set
    )
    log.info(
        "set %s: %d utterances scored, %d unreadable",
        out.name,
        len(table),
        int(table["unreadable"].sum()),
    )
