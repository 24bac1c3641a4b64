"""Density-ratio estimators w(x) = p_target(x) / q_pool(x), returned as log-ratios.

Every estimator returns ``(log_w, info)``: a float64 array aligned with the pool, where
``-inf`` means weight 0 (never selected), and a JSON-serialisable dict of what it saw.
Estimators combine by product, i.e. ``combine`` sums log-ratios. Rows that cannot be scored
(a NaN embedding, a NaN loss) get weight 0 and are counted in ``info``: a bad utterance is
skipped and reported, never a reason to stop, unless nothing is left.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from pipeline.errors import UserError
from pipeline.select.sampling import encode_groups, group_label

MIN_TARGET_ROWS = 20  # below this the classifier's folds hold a handful of target rows each
CLIP_EPS = 1e-6  # c is clipped to [eps, 1 - eps]: log-ratios stay within about +-13.8
MAX_AUC = 0.999  # cross-fitted AUC at or above this: target lies off the pool's support
CALIBRATION_FOLDS = 3  # inner folds for Platt scaling inside each outer fold
# inverse L2 strengths tried when select.C is unset: the cross-fitted log loss picks one
# (with the encoder layer; recipes/RESULTS.md has the demo's table)
C_GRID = (0.01, 0.1, 1.0)


def groups_log_ratio(
    pool_groups: Sequence[Hashable], target: Mapping[Hashable, float]
) -> tuple[np.ndarray, dict]:
    """log p(g) / q(g) per pool row, with q the pool's group shares and p the target mixture.

    ``target`` holds a non-negative, possibly unnormalised weight per group. Target groups
    absent from the pool cannot be reached: they are listed in ``info`` with their share of
    the target mass, and p is renormalised over the groups the pool has. Pool groups outside
    the target (or with target weight 0) get log w = -inf.
    """
    if len(pool_groups) == 0:
        raise UserError("the pool is empty")
    weights = {g: float(v) for g, v in target.items()}
    if any(not np.isfinite(v) or v < 0 for v in weights.values()):
        raise UserError("target weights must be finite and non-negative")
    total = sum(weights.values())
    if total <= 0:
        raise UserError("target weights sum to zero")
    codes, uniques = encode_groups(pool_groups)
    counts = np.bincount(codes, minlength=len(uniques))
    present = set(uniques)
    missing = [g for g, v in weights.items() if v > 0 and g not in present]
    reachable = sum(v for g, v in weights.items() if g in present)
    if reachable <= 0:
        raise UserError("no target group occurs in the pool")
    q = counts / counts.sum()
    p = np.array([weights.get(g, 0.0) / reachable for g in uniques])
    with np.errstate(divide="ignore"):
        log_w_group = np.log(p) - np.log(q)
    info = {
        "estimator": "groups",
        "n_pool": int(len(codes)),
        "pool_groups": len(uniques),
        "target_groups": sum(v > 0 for v in weights.values()),
        "missing_groups": [group_label(g) for g in missing],
        "missing_mass": float(sum(weights[g] for g in missing) / total),
        "zero_weight_rows": int(counts[p == 0].sum()),
    }
    return log_w_group[codes], info


def balanced_target(groups: Sequence[Hashable]) -> dict:
    """Uniform weight over the groups present: an accent- or noise-balanced target mixture."""
    _, uniques = encode_groups(groups)
    if not uniques:
        raise UserError("no groups to balance")
    return {g: 1.0 for g in uniques}


def _finite_rows(x: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``x`` as (rows, layers, dims) (2-D input is one layer) and the rows finite throughout."""
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[:, None, :]
    if x.ndim != 3:
        raise UserError(
            f"{name} embeddings must be (rows, dims) or (rows, layers, dims), got shape {x.shape}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    ok = np.isfinite(x).all(axis=(1, 2))
    if not ok.any():
        raise UserError(f"all {len(x)} {name} embedding rows contain NaN or inf")
    return x, ok


def _crossfit_probabilities(
    x: np.ndarray,
    y: np.ndarray,
    folds: int,
    C: float,
    pca_dim: int | None,
    calibrate: bool,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold P(target | x) for every row, and the training pool/target count ratio."""
    prob = np.empty(len(y))
    prior_ratio = np.empty(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (train, test) in enumerate(splitter.split(x, y)):
        steps = [StandardScaler()]  # fitted on this fold's training rows only
        if pca_dim is not None:
            steps.append(PCA(n_components=pca_dim, random_state=seed))
        steps.append(LogisticRegression(C=C, max_iter=1000))
        model = make_pipeline(*steps)
        if calibrate:
            # Platt scaling fitted on inner held-out rows of this training fold: the calibrator,
            # like the classifier, never sees the rows it will score.
            inner = StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed + fold)
            model = CalibratedClassifierCV(model, method="sigmoid", cv=inner)
        model.fit(x[train], y[train])
        prob[test] = model.predict_proba(x[test])[:, 1]
        n_target_train = int(y[train].sum())
        prior_ratio[test] = (len(train) - n_target_train) / n_target_train
    return prob, prior_ratio


def classifier_log_ratio(
    pool_x: np.ndarray,
    target_x: np.ndarray,
    rng: np.random.Generator,
    folds: int = 5,
    C: float | None = None,
    pca_dim: int | None = None,
    calibrate: bool = True,
    max_auc: float = MAX_AUC,
    layer: int | None = None,
    C_grid: Sequence[float] = C_GRID,
) -> tuple[np.ndarray, dict]:
    """Cross-fitted classifier log-ratio log[(n_pool / n_target) * c(x) / (1 - c(x))].

    A standardised (optionally PCA-reduced) L2 logistic regression separates the target sample
    (label 1) from the pool (label 0) in ``folds`` stratified folds over both; each pool row is
    scored by the fold model that did not train on it. With ``calibrate``, each fold model is
    Platt-scaled on inner folds of its own training rows (``CalibratedClassifierCV``, sigmoid).
    The count ratio is that of the training rows, the prior the classifier learnt. c is clipped
    to [1e-6, 1 - 1e-6] and the number clipped reported.

    Embeddings are (rows, dims) or (rows, layers, dims), one pooled vector per encoder layer.
    The layer (``layer`` None: every one) and the inverse regularisation (``C`` None: each of
    ``C_grid``) are chosen by the cross-fitted log loss of telling target from pool, which
    needs no labels beyond which sample a row came from; every candidate's loss is reported.
    The winner's out-of-fold probabilities are the ones used (same folds for every candidate).

    Rows with NaN/inf embeddings are left out of training; such pool rows get log w = -inf
    and are counted (with their indices) in ``info``. If the cross-fitted AUC reaches
    ``max_auc`` the target lies off the pool's support, where no ratio exists to sample by;
    that raises ``UserError`` rather than returning near-infinite ratios (stronger
    regularisation changes the scale of the scores, not their order, so it would not help).
    """
    pool_x, pool_ok = _finite_rows(pool_x, "pool")
    target_x, target_ok = _finite_rows(target_x, "target")
    if pool_x.shape[1:] != target_x.shape[1:]:
        raise UserError(
            f"pool embeddings are {pool_x.shape[1:]} (layers, dims), target {target_x.shape[1:]}"
        )
    n_pool, n_target = int(pool_ok.sum()), int(target_ok.sum())
    n_layers, dims = pool_x.shape[1:]
    if n_target < MIN_TARGET_ROWS:
        raise UserError(f"target sample too small: {n_target} < {MIN_TARGET_ROWS}")
    if folds < 2 or folds > min(n_pool, n_target):
        raise UserError(f"folds must be between 2 and {min(n_pool, n_target)}, got {folds}")
    # calibration splits each fold's training rows again: every class needs enough of them
    smallest = min(n_pool, n_target) * (folds - 1) // folds
    if calibrate and smallest < CALIBRATION_FOLDS:
        raise UserError(
            f"{min(n_pool, n_target)} rows in the smaller sample are too few for {folds} "
            f"folds with calibration (each fold needs {CALIBRATION_FOLDS} to train on)"
        )
    if pca_dim is not None and not 1 <= pca_dim <= dims:
        raise UserError(f"pca_dim must be between 1 and {dims}, got {pca_dim}")
    if layer is not None and not -n_layers <= layer < n_layers:
        raise UserError(f"layer must be between {-n_layers} and {n_layers - 1}, got {layer}")
    Cs = [C] if C is not None else list(C_grid)
    if not Cs or any(not np.isfinite(c) or c <= 0 for c in Cs):
        raise UserError(f"C must be positive, got {Cs}")

    x = np.concatenate([pool_x[pool_ok], target_x[target_ok]])
    y = np.concatenate([np.zeros(n_pool, dtype=np.int64), np.ones(n_target, dtype=np.int64)])
    seed = int(rng.integers(2**31 - 1 - folds))
    layers = [layer % n_layers] if layer is not None else list(range(n_layers))
    candidates, best = [], None
    # The fits are many thin matrix-vector products, where BLAS threads only contend with
    # each other: one thread runs them fastest.
    with threadpool_limits(limits=1, user_api="blas"):
        for at in layers:
            for c_value in Cs:
                prob, prior_ratio = _crossfit_probabilities(
                    x[:, at], y, folds, c_value, pca_dim, calibrate, seed
                )
                loss = float(log_loss(y, np.clip(prob, CLIP_EPS, 1 - CLIP_EPS)))
                candidates.append({"layer": at, "C": c_value, "log_loss": loss})
                if best is None or loss < best[0]:
                    best = (loss, at, c_value, prob, prior_ratio)
    _, chosen_layer, chosen_C, prob, prior_ratio = best
    auc = float(roc_auc_score(y, prob))
    if auc >= max_auc:
        raise UserError(
            f"the classifier separates target from pool almost perfectly (AUC {auc:.4f}): the "
            "pool has no data like the target, or the two were embedded differently"
        )
    clipped = (prob < CLIP_EPS) | (prob > 1 - CLIP_EPS)
    c = np.clip(prob[:n_pool], CLIP_EPS, 1 - CLIP_EPS)
    log_w = np.full(len(pool_ok), -np.inf)
    log_w[pool_ok] = np.log(prior_ratio[:n_pool]) + np.log(c) - np.log1p(-c)

    warnings = []
    if clipped.any():
        warnings.append(f"{int(clipped.sum())} classifier probabilities clipped to [eps, 1-eps]")
    if not pool_ok.all():
        warnings.append(f"{int((~pool_ok).sum())} pool rows with NaN/inf embeddings get weight 0")
    if auc < 0.55:
        warnings.append(f"AUC {auc:.3f}: target and pool look alike; selection is near uniform")
    info = {
        "estimator": "classifier",
        "auc": auc,
        "log_loss": best[0],
        "folds": folds,
        "n_pool": n_pool,
        "n_target": n_target,
        "clipped": int(clipped[:n_pool].sum()),
        "clipped_all_rows": int(clipped.sum()),
        "clip_eps": CLIP_EPS,
        "calibration": f"sigmoid, {CALIBRATION_FOLDS} inner folds" if calibrate else "none",
        "C": chosen_C,
        "layer": chosen_layer,
        "layers": n_layers,
        "candidates": candidates,
        "pca_dim": pca_dim,
        "excluded_pool_rows": int((~pool_ok).sum()),
        "excluded_pool_indices": np.flatnonzero(~pool_ok).tolist(),
        "excluded_target_rows": int((~target_ok).sum()),
        "warnings": warnings,
    }
    return log_w, info


def difficulty_log_ratio(loss: np.ndarray, beta: float) -> tuple[np.ndarray, dict]:
    """The difficulty tilt log w = beta * loss (w proportional to exp(beta * loss)).

    ``loss`` is the pretrained model's per-utterance NLL of its reference. Non-finite losses
    (NaN, or inf from a failed CTC alignment) get log w = -inf and are counted.
    """
    if not np.isfinite(beta):
        raise UserError(f"beta must be finite, got {beta}")
    loss = np.asarray(loss, dtype=np.float64)
    if loss.ndim != 1:
        raise UserError(f"losses must be 1-D, got shape {loss.shape}")
    ok = np.isfinite(loss)
    log_w = np.full(loss.shape, -np.inf)
    log_w[ok] = beta * loss[ok]
    info = {
        "estimator": "difficulty",
        "beta": float(beta),
        "n_pool": int(loss.size),
        "nan_losses": int(np.isnan(loss).sum()),
        "nonfinite_losses": int((~ok).sum()),
    }
    return log_w, info


def combine(*log_ws: np.ndarray) -> np.ndarray:
    """Product of ratios as a sum of log-ratios; all must be aligned with the same pool."""
    if not log_ws:
        raise UserError("combine needs at least one log-ratio")
    arrays = [np.asarray(a, dtype=np.float64) for a in log_ws]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise UserError(f"log-ratios have different shapes: {sorted(shapes)}")
    if any(np.isposinf(a).any() or np.isnan(a).any() for a in arrays):
        raise UserError("log-ratios to combine must not contain NaN or +inf")
    return np.sum(arrays, axis=0)
