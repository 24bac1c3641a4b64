"""Stage 5, evaluate: WER and CER per test set and per group, with bootstrap intervals.

Output, under ``<data_dir>/evaluate/<run>/`` (run: 'pretrained' or the model folder's name):
  <set>/recognitions.tsv  id, reference, hypothesis (raw and normalised)
  <set>/errors.txt        aligned errors of every utterance with one
  <set>/utterances.parquet per-utterance errors with the manifest's metadata (for compare)
  <set>/wer.json          WER/CER with intervals, per group, speed, peak RSS, model, recipe
  <set>/summary.txt       the group table
  <set>/token_nll.parquet with evaluate.token_nll: NLL (nats) and tokens of each reference
  <set>/token_nll.json    its mean NLL per token and key
  wer.json, summary.txt   one row per set
A set whose model, settings and manifest are unchanged is not decoded again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline import __version__, audio, manifest, metrics, resources, text
from pipeline.config import ModelConfig, Recipe
from pipeline.errors import UserError
from pipeline.fsio import atomic_path, file_sha256, fingerprint, read_json, write_json, write_text
from pipeline.layout import PRETRAINED, is_done, model_run
from pipeline.models import ct2, loader
from pipeline.models.base import SpeechModel, length_batches
from pipeline.typed import to_dict

log = logging.getLogger(__name__)


def run(recipe: Recipe, model_name: str | None = None, run_name: str | None = None) -> pd.DataFrame:
    """Evaluate a model (default: the recipe's pretrained model) on the recipe's test sets."""
    cfg = recipe.model if model_name is None else replace(recipe.model, name=model_name)
    run_name = run_name or (PRETRAINED if model_name is None else model_run(model_name))
    out = recipe.tree.evaluate(run_name)
    sets = list(recipe.evaluate.sets) or [s.name for s in recipe.prepare.sets if s.split == "test"]
    paths = {s: recipe.tree.manifest(s) for s in sets}
    for name, path in paths.items():
        if not path.exists():
            raise UserError(f"set {name!r}: no manifest at {path} (run: rsft prepare first)")
    log.info(
        "Stage 5: evaluate %s (%s layout, %s) on %d sets -> %s",
        cfg.name,
        cfg.layout,
        cfg.engine,
        len(sets),
        out,
    )
    model = loader.load(cfg, recipe.tree.models)
    model_print = model.fingerprint()
    rows = []
    # a set's own layout is in its key; NLL in its own; which other sets are read is not
    skip = ("set_layouts", "token_nll", "sets")
    scoring = {k: v for k, v in to_dict(recipe.evaluate).items() if k not in skip}
    readers: dict[str, SpeechModel] = {}
    for name, path in paths.items():
        layout = recipe.evaluate.set_layouts.get(name, cfg.layout)
        # CTranslate2 reads single requests in 30 s windows; other layouts are torch's
        set_cfg = cfg if layout == "standard" else replace(cfg, engine="torch")
        if layout not in readers:
            if set_cfg.engine != cfg.engine:
                log.info("model.engine ct2 reads standard windows: %s layout read by torch", layout)
            reader = model if layout == cfg.layout else loader.with_layout(model, layout)
            engine = (set_cfg.engine, set_cfg.ct2_compute_type, set_cfg.threads)
            readers[layout] = ct2.reader(reader, *engine, recipe.tree.models)
        reader = readers[layout]
        local = ("batch_size", "threads")  # how fast, not what is decoded
        settings = {k: v for k, v in set_cfg.key(decodes=True).items() if k not in local}
        settings["layout"] = layout
        if layout != "packed":  # the gap only shapes packed windows: it does not decode again
            settings["pack_gap_s"] = ModelConfig.pack_gap_s
        settings["bf16"] = getattr(model, "bf16", False)  # model.bf16 resolved here
        key = fingerprint(
            model_print,
            settings,
            file_sha256(path),
            scoring,
            __version__,
            reader.decoding_revision,
        )
        result_path = out / name / "wer.json"
        if is_done(result_path, key):
            log.info("set %s: up to date", name)
            result = read_json(result_path)
        else:
            result = evaluate_set(reader, cfg.batch_size, manifest.read(path), recipe, out / name)
            result.update(
                key=key,
                set=name,
                model=cfg.name,
                model_fingerprint=model_print,
                layout=layout,
                engine=getattr(reader, "engine_name", "torch"),
                language=reader.language,
                bf16=settings["bf16"],
                code_version=__version__,
                recipe=to_dict(recipe),
                **resources.peak_rss(),  # of the run that decoded the set
            )
            write_json(result_path, result)
        row = {k: result[k] for k in ("set", "utterances", "wer", "wer_low", "wer_high", "cer")}
        row |= {"rejects": len(result["rejects"]), "utt_per_s": result["utt_per_s"]}
        row |= {"layout": result["layout"]}
        if name in recipe.evaluate.token_nll:
            nll_key = fingerprint(model_print, settings, file_sha256(path), __version__, "nll")
            row["nll_per_token"] = token_nll(reader, cfg.batch_size, path, out / name, nll_key)
        rows.append(row)
    table = pd.DataFrame(rows)
    report = format_table(table, ["set"])
    write_text(out / "summary.txt", report + "\n")
    write_json(
        out / "wer.json",
        {
            "model": cfg.name,
            "model_fingerprint": model_print,
            "layout": cfg.layout,
            "language": cfg.language,
            "sets": rows,
        },
    )
    print(f"{cfg.name} ({cfg.layout} layout), {out}\n{report}")
    return table


def evaluate_set(
    model: SpeechModel, batch_size: int, frame: pd.DataFrame, recipe: Recipe, out: Path
) -> dict:
    """Decode one set, score it, and write its files; return the wer.json content."""
    if recipe.evaluate.limit is not None:
        frame = frame.head(recipe.evaluate.limit)
    started = time.perf_counter()
    packed = getattr(model, "layout", None) == "packed"  # CTC models have one layout
    joined = packed and recipe.evaluate.packed_split == "references"
    if joined and hasattr(model, "transcribe_joined"):
        by = [c for c in recipe.evaluate.group_by if c in frame.columns]
        strip = recipe.evaluate.strip_diacritics
        hyps, rejects, audio_s = _decode_joined(model, frame, batch_size, by, out.name, strip)
    else:
        hyps, rejects, audio_s = _decode(model, frame, batch_size, out.name)
    elapsed = time.perf_counter() - started
    if rejects:
        log.warning(
            "set %s: %d utterances could not be read (see wer.json)", out.name, len(rejects)
        )
    scored = frame[frame["id"].isin(hyps)].reset_index(drop=True)
    if scored.empty:
        raise UserError(f"set {out.name}: no utterance could be decoded")
    scored["hypothesis"] = scored["id"].map(hyps)
    strip = recipe.evaluate.strip_diacritics
    refs = text.normalize_batch(scored["text"], model.language, strip)
    outs = text.normalize_batch(scored["hypothesis"], model.language, strip)
    errors = metrics.utterance_errors(refs, outs, ids=scored["id"].tolist())
    per = pd.concat(
        [scored.reset_index(drop=True), errors.drop(columns="id", errors="ignore")], axis=1
    )
    per["reference_norm"], per["hypothesis_norm"] = refs, outs
    write_outputs(per, out)
    rng = np.random.default_rng(recipe.seed)
    clusters, unit = metrics.error_clusters(per)  # errors cluster by speaker
    n_boot = recipe.evaluate.bootstrap
    low, high = metrics.bootstrap_ci(
        per["errors"].to_numpy(), per["ref_words"].to_numpy(), rng, n_boot, clusters=clusters
    )
    by = [c for c in recipe.evaluate.group_by if c in per.columns]
    groups = metrics.group_table(per, by, rng, n_boot, clusters=clusters)
    write_text(out / "summary.txt", format_table(groups, by) + "\n")
    return {
        "utterances": len(per),
        "wer": metrics.wer(per),
        "wer_low": low,
        "wer_high": high,
        "interval_over": unit,
        "cer": metrics.cer(per),
        "groups": groups.to_dict(orient="records"),
        "rejects": rejects,
        "audio_s": audio_s,
        "decode_s": elapsed,
        "utt_per_s": len(per) / elapsed if elapsed else float("nan"),
        "real_time_factor": elapsed / audio_s if audio_s else float("nan"),
    }


def token_nll(model: SpeechModel, batch_size: int, path: Path, out: Path, key: str) -> float:
    """Mean NLL per token of a set's references (manifest text, teacher forcing); each
    utterance's NLL and token count go to ``token_nll.parquet``. Kept while ``key`` holds."""
    done = out / "token_nll.json"
    if is_done(done, key):
        return read_json(done)["nll_per_token"]
    if not hasattr(model, "text_tokens"):
        raise UserError("evaluate.token_nll: needs a Whisper model (CTC losses are per frame)")
    frame = manifest.read(path)
    rows, rejects = [], {}
    batches = list(length_batches(frame["duration_s"].tolist(), batch_size))
    for batch in tqdm(batches, desc=f"{out.name} NLL", unit="batch", leave=False, disable=None):
        ids, waves = _read(frame, batch, rejects)
        if not waves:
            continue
        texts = frame.set_index("id").loc[ids, "text"].tolist()
        tokens = [len(model.text_tokens(t)) for t in texts]
        means = model.loss(waves, texts)
        rows += [
            {"id": i, "nll": float(m) * n, "tokens": n}
            for i, m, n in zip(ids, means, tokens, strict=True)
        ]
    if not rows:
        raise UserError(f"set {out.name}: no utterance could be read for evaluate.token_nll")
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "token_nll.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    mean = float(table["nll"].sum() / table["tokens"].sum())
    write_json(
        done,
        {
            "key": key,
            "nll_per_token": mean,
            "utterances": len(table),
            "tokens": int(table["tokens"].sum()),
            "rejects": rejects,
        },
    )
    log.info("set %s: %.4f nats a reference token", out.name, mean)
    return mean


def _read(frame: pd.DataFrame, rows, rejects: dict[str, str]) -> tuple[list, list]:
    """(ids, waves) of the readable rows; the others are recorded in ``rejects``."""
    ids, waves = [], []
    for i in rows:
        row = frame.iloc[i]
        try:
            wave, _ = audio.read(row["audio_path"])
        except (audio.AudioError, OSError) as err:
            rejects[row["id"]] = str(err)
            continue
        ids.append(row["id"])
        waves.append(wave)
    return ids, waves


def _decode(model: SpeechModel, frame: pd.DataFrame, batch_size: int, name: str):
    """Hypotheses per id, one decode per utterance (batched by length)."""
    hyps, rejects, audio_s = {}, {}, 0.0
    batches = list(length_batches(frame["duration_s"].tolist(), batch_size))
    for batch in tqdm(batches, desc=name, unit="batch", leave=False, disable=None):
        ids, waves = _read(frame, batch, rejects)
        audio_s += sum(len(w) for w in waves) / audio.SAMPLE_RATE
        if waves:
            hyps.update(zip(ids, model.transcribe(waves), strict=True))
    return hyps, rejects, audio_s


def _decode_joined(
    model, frame: pd.DataFrame, batch_size: int, by: list[str], name: str, strip: bool
):
    """Hypotheses per id from packed windows, each window holding utterances of one group
    and its transcript cut by alignment to their references (normalised text)."""
    hyps, rejects, audio_s, windows = {}, {}, 0.0, []
    groups = frame.groupby(by, dropna=False, sort=True).indices if by else {(): range(len(frame))}
    for rows in groups.values():
        ids, waves = _read(frame, sorted(rows), rejects)
        audio_s += sum(len(w) for w in waves) / audio.SAMPLE_RATE
        texts = frame.set_index("id").loc[ids, "text"] if ids else []
        refs = text.normalize_batch(texts, model.language, strip)
        for window in model.pack(waves) if waves else []:
            windows.append(
                (window, [ids[k] for k in window.members], [refs[k] for k in window.members])
            )
    starts = range(0, len(windows), batch_size)
    for lo in tqdm(starts, desc=name, unit="batch", leave=False, disable=None):
        chunk = windows[lo : lo + batch_size]
        said = model.transcribe_joined([w for w, _, _ in chunk])
        for (_, ids, refs), hyp in zip(chunk, said, strict=True):
            pieces = metrics.split_by_alignment(refs, text.normalize(hyp, model.language, strip))
            hyps.update(zip(ids, pieces, strict=True))
    return hyps, rejects, audio_s


def write_outputs(per: pd.DataFrame, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    cols = ["id", "text", "hypothesis", "reference_norm", "hypothesis_norm"]
    tsv = per[cols].rename(columns={"text": "reference"})
    write_text(out / "recognitions.tsv", tsv.to_csv(sep="\t", index=False))
    write_text(
        out / "errors.txt",
        metrics.alignment_text(
            per["id"].tolist(), per["reference_norm"].tolist(), per["hypothesis_norm"].tolist()
        ),
    )
    with_errors = per.drop(columns=["audio_path"])
    with atomic_path(out / "utterances.parquet") as tmp:
        with_errors.to_parquet(tmp, index=False)


def format_table(table: pd.DataFrame, keys: list[str]) -> str:
    """WER and CER as percentages with the 95% interval, one row per group."""
    shown = table.copy()
    shown["WER %"] = [
        f"{100 * w:5.1f} [{100 * lo:5.1f}, {100 * hi:5.1f}]"
        for w, lo, hi in zip(table["wer"], table["wer_low"], table["wer_high"], strict=True)
    ]
    shown["CER %"] = [f"{100 * c:5.1f}" for c in table["cer"]]
    extra = [c for c in ("utterances", "rejects", "utt_per_s") if c in shown.columns]
    if "nll_per_token" in shown.columns:  # evaluate.token_nll
        shown["NLL/token"] = shown["nll_per_token"].map(lambda v: "-" if pd.isna(v) else f"{v:.4f}")
        extra.append("NLL/token")
    if "utt_per_s" in shown.columns:
        shown["utt_per_s"] = shown["utt_per_s"].map(lambda v: f"{v:.1f}")
    for key in keys:
        shown[key] = shown[key].map(
            lambda v: "-" if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else v)
        )
    return shown[keys + ["WER %", "CER %"] + extra].to_string(index=False)
