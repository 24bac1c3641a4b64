"""Figures of the report, drawn from in-memory tables and returned as PNG bytes (matplotlib)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

TOP_GROUPS = 12  # metadata groups shown in the selection figure
SMOOTH_STEPS = 10  # moving-average window of the training loss


def _png(fig, tight: bool = True) -> bytes:
    if tight:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def wer_heatmaps(panels: list[tuple[str, pd.DataFrame]]) -> bytes:
    """WER (%) per accent (rows) x SNR (columns) for each (title, table) side by side."""
    rows = max(t.shape[0] for _, t in panels)
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(4.8 * len(panels) + 1, 1.2 + 0.45 * rows),
        squeeze=False,
        layout="constrained",
    )
    for ax, (title, table) in zip(axes[0], panels, strict=True):
        values = 100 * table.to_numpy(float)
        image = ax.imshow(
            np.ma.masked_invalid(values), cmap="viridis_r", vmin=0, vmax=100, aspect="auto"
        )
        ax.set_xticks(range(table.shape[1]), [f"{c}" for c in table.columns])
        ax.set_yticks(range(table.shape[0]), list(table.index))
        ax.set_xlabel("SNR (dB)")
        ax.set_title(title, fontsize=10)
        for (i, j), value in np.ndenumerate(values):
            if not np.isnan(value):
                colour = "white" if value > 50 else "black"
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", color=colour, fontsize=8)
    fig.colorbar(image, ax=list(axes[0]), label="WER %")
    return _png(fig, tight=False)  # the constrained layout places the shared colour bar


def system_bars(systems: list[dict], panels: list[tuple[str, str]]) -> bytes:
    """Mean WER per system, one panel per (results key, title): the target panel's error bar is
    its 95% interval, the others' the range over seeds; dots are single seeds' means."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    names = [s["system"] for s in systems]
    x = np.arange(len(names))
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        stats = [s["wer"].get(key) for s in systems]
        means = np.array([100 * st["mean"] if st else np.nan for st in stats])
        low_key, high_key = ("low", "high") if key == "target" else ("min", "max")
        lows = np.array([100 * st.get(low_key, np.nan) if st else np.nan for st in stats])
        highs = np.array([100 * st.get(high_key, np.nan) if st else np.nan for st in stats])
        colours = ["tab:gray" if n == "pretrained" else "tab:blue" for n in names]
        colours = ["tab:orange" if n == "rsft" else c for n, c in zip(names, colours, strict=True)]
        ax.bar(x, np.nan_to_num(means), color=colours)
        err = np.vstack([np.clip(means - lows, 0, None), np.clip(highs - means, 0, None)])
        ax.errorbar(x, means, yerr=np.nan_to_num(err), fmt="none", ecolor="black", capsize=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("WER %")
        ax.set_title(title, fontsize=10)
    return _png(fig)


def selection_shares(diagnostics: dict[str, dict]) -> bytes:
    """Share of each metadata group in the pool, the target sample and each method's subset."""
    first = next(iter(diagnostics.values()))["groups"]
    target, pool = first.get("target", {}), first["pool"]
    order = sorted(pool, key=lambda g: (-target.get(g, 0.0), -pool[g]))[:TOP_GROUPS]
    series = [("pool", pool)] + ([("target", target)] if target else [])
    series += [(f"{m} selected", d["groups"]["accepted"]) for m, d in diagnostics.items()]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(order))
    for k, (label, shares) in enumerate(series):
        values = [shares.get(g, 0.0) for g in order]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, values, width=width, label=label)
    ax.set_xticks(x, order, rotation=50, ha="right", fontsize=7)
    ax.set_ylabel("share of utterances")
    ax.set_title(f"Group shares (accent/noise/SNR; top {len(order)} groups by target share)")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def log_ratio_histogram(edges: np.ndarray, series: list[tuple[str, np.ndarray]]) -> bytes:
    """Counts of log w on shared bin edges (pool rows by kind, and the selected rows)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for label, counts in series:
        ax.stairs(counts, edges, label=f"{label} ({int(counts.sum())})", lw=1.5)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel("log w = log p_target(x) / q_pool(x)")
    ax.set_ylabel("utterances")
    ax.set_title("rsft log density ratio over the pool")
    ax.legend(fontsize=8)
    return _png(fig)


def training_curves(logs: dict[str, dict]) -> bytes:
    """Training loss (moving average) and dev WER against the optimizer step, one line per run."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, record in logs.items():
        losses = np.array([np.nan if v is None else v for v in record.get("losses", [])], float)
        if len(losses):
            kernel = min(SMOOTH_STEPS, len(losses))
            smooth = pd.Series(losses).rolling(kernel, min_periods=1).mean()
            left.plot(np.arange(1, len(losses) + 1), smooth, label=name, lw=1.2)
        curve = record.get("dev_curve") or []
        if curve:
            dev_set = next(k for k in curve[0] if k != "step")
            steps = [row["step"] for row in curve]
            right.plot(steps, [100 * row[dev_set] for row in curve], marker="o", label=name)
    left.set(xlabel="step", ylabel=f"loss ({SMOOTH_STEPS}-step mean)", title="Training loss")
    right.set(xlabel="step", ylabel="WER %", title="Dev WER during training")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def budget_sweep(rows: list[dict]) -> bytes:
    """Target WER against the subset budget per system: seed means with their range."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for system in dict.fromkeys(r["system"] for r in rows):
        points = [r for r in rows if r["system"] == system and r["target"]]
        budgets = np.array([r["budget"] for r in points], float)
        means = np.array([100 * r["target"]["mean"] for r in points])
        low = means - np.array([100 * r["target"]["min"] for r in points])
        high = np.array([100 * r["target"]["max"] for r in points]) - means
        ax.errorbar(budgets, means, yerr=[low, high], marker="o", capsize=3, label=system)
    budgets = sorted({r["budget"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    ax.set(xlabel="budget (utterances)", ylabel="target WER %", title="Budget sweep")
    ax.legend(fontsize=8)
    return _png(fig)


def pseudo_label_curve(curve: list[dict]) -> bytes:
    """Pseudo-labels kept and their WER against the reliability threshold that keeps them."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    thresholds = [c["threshold"] for c in curve]
    wers = [np.nan if c["wer"] is None else 100 * c["wer"] for c in curve]
    ax.plot(thresholds, wers, marker="o", color="tab:red")
    ax.set_xlabel("reliability threshold (agreement of sampled transcripts)")
    ax.set_ylabel("WER % of the labels kept", color="tab:red")
    right = ax.twinx()
    right.plot(thresholds, [c["kept"] for c in curve], marker="s", color="tab:blue")
    right.set_ylabel("labels kept", color="tab:blue")
    right.set_ylim(bottom=0)
    return _png(fig)
