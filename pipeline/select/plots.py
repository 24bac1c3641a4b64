"""Figures for the select diagnostics (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.fsio import atomic_path  # noqa: E402

TOP_GROUPS = 16  # groups shown: the largest by target, then by selected share


def selection_plots(out: Path, diag: dict, log_w: np.ndarray, pool_groups: list) -> None:
    """shares.png (pool / target / selected per group) and log_ratio.png (log w per group)."""
    shares = diag["groups"]
    order = sorted(
        shares["pool"],
        key=lambda g: (-shares.get("target", {}).get(g, 0.0), -shares["accepted"].get(g, 0.0)),
    )[:TOP_GROUPS]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = np.arange(len(order))
    kinds = [k for k in ("pool", "target", "accepted") if k in shares]
    for k, kind in enumerate(kinds):
        values = [shares[kind].get(g, 0.0) for g in order]
        label = "selected" if kind == "accepted" else kind
        ax.bar(x + (k - 1) * 0.27, values, width=0.27, label=label)
    ax.set_xticks(x, order, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("share of utterances")
    ax.set_title(f"{out.name}: group shares (top {len(order)} groups)")
    ax.legend()
    _save(fig, out / "shares.png")

    hist = diag["log_w_histogram"]
    edges = np.asarray(hist["edges"])
    fig, ax = plt.subplots(figsize=(8, 4))
    centres = (edges[:-1] + edges[1:]) / 2
    for group in order[:8]:
        counts = np.asarray(hist["counts"].get(group, []), dtype=float)
        if counts.sum():
            ax.plot(centres, counts / counts.sum(), label=group, lw=1.2)
    ax.set_xlabel("log w (pool utterances)")
    ax.set_ylabel("share of the group")
    ax.set_title(f"{out.name}: log density ratio by group")
    ax.legend(fontsize=6)
    _save(fig, out / "log_ratio.png")


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
