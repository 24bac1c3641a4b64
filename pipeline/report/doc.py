"""The report as a list of blocks (headings, paragraphs, tables, figures), written twice: Markdown
with PNG files beside it, and one self-contained HTML file with the PNGs inlined as base64."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.fsio import atomic_path, write_text


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    text: str  # plain text; `backticks` mark code


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]  # cells as text; `backticks` mark code

    def numeric(self, column: int) -> bool:
        """Right-align: every cell of the column is a number, interval or range (or '-')."""
        return column > 0 and all(_NUMERIC.fullmatch(row[column]) for row in self.rows)


_NUMERIC = re.compile(r"[-+\d.,()\[\] %e]+")


@dataclass(frozen=True)
class Figure:
    name: str  # file stem under figures/
    png: bytes
    caption: str


Block = Heading | Para | Table | Figure


def pct(value: float | None) -> str:
    return "-" if value is None or np.isnan(value) else f"{100 * value:.1f}"


def pval(value: float | None) -> str:
    """A p-value: three decimals, or two significant digits below 0.001 (a 10,000-resample
    bootstrap resolves p down to 1e-4)."""
    if value is None or np.isnan(value):
        return "-"
    return f"{value:.3f}" if value >= 0.001 else f"{value:.1e}"


def signed(value: float | None, low: float | None, high: float | None, unit: str = "") -> str:
    """A signed difference in % points (in % with unit '%') with its interval."""
    mid, low, high = (np.nan if v is None else 100 * v for v in (value, low, high))
    if np.isnan(mid):
        return "-"
    if np.isnan(low) or np.isnan(high):
        return f"{mid:+.1f}{unit}"
    return f"{mid:+.1f}{unit} [{low:+.1f}, {high:+.1f}]"


def cell(stat: dict | None) -> str:
    """A seed-aggregated WER: the mean, with the min-max range over seeds when several."""
    if stat is None:
        return "-"
    if stat["n"] == 1:
        return pct(stat["mean"])
    return f"{pct(stat['mean'])} ({pct(stat['min'])}-{pct(stat['max'])})"


def comparison(results: dict) -> Table:
    """The main table: one row per system, seeds aggregated, roles that were evaluated."""
    roles = results["sets"]
    columns = [("target", "target WER % [95% CI]"), ("target_range", "target seed range")]
    columns += [("clean", "clean WER %"), ("noisy_above_0db", "noisy >0 dB WER %")]
    columns += [("noisy_0db", "noisy 0 dB WER %"), ("real", "real speech WER %")]
    columns += [("real_target", "real speech, target condition WER %")]
    wanted = {"target_range": "target", "noisy_above_0db": "noisy", "noisy_0db": "noisy"}
    columns = [(k, t) for k, t in columns if wanted.get(k, k) in roles]
    rows = []
    for system in results["systems"]:
        wer, row = system["wer"], [system["system"], _seeds(system["seeds"])]
        row.append(system.get("layout") or "-")
        for key, _ in columns:
            stat = wer.get("target") if key == "target_range" else wer.get(key)
            if key == "target" and stat is not None:
                row.append(f"{pct(stat['mean'])} [{pct(stat['low'])}, {pct(stat['high'])}]")
            elif key == "target_range" and stat is not None:
                row.append(f"{pct(stat['min'])}-{pct(stat['max'])}" if stat["n"] > 1 else "-")
            else:
                row.append(cell(stat))
        rows.append(row)
    return Table(["system", "seeds", "layout"] + [t for _, t in columns], rows)


def _seeds(seeds: list[int]) -> str:
    return "-" if not seeds else f"{len(seeds)} ({', '.join(map(str, sorted(seeds)))})"


def by_group(results: dict, key: str, label: str, order=None) -> Table | None:
    """Systems x groups of one nested WER entry (clean_by_accent, noisy_by_snr)."""
    groups = list(dict.fromkeys(g for s in results["systems"] for g in s["wer"].get(key, {})))
    if not groups:
        return None
    groups = order(groups) if order else sorted(groups)
    rows = [
        [s["system"]] + [cell(s["wer"].get(key, {}).get(g)) for g in groups]
        for s in results["systems"]
    ]
    return Table(["system"] + [f"{g} {label}".strip() for g in groups], rows)


def paired(results: dict, key: str = "paired") -> Table | None:
    """The paired tests per seed (``key``: 'paired', or 'sweep_tests' with a budget column)."""
    if not results.get(key):
        return None
    ref = results["reference"]
    budget = key == "sweep_tests"
    rows = [
        [p["system"], *([str(p["budget"])] if budget else []), str(p["seed"])] + _test_cells(p)
        for p in results[key]
    ]
    header = ["against", *(["budget"] if budget else []), "seed"]
    return Table(header + _test_header(ref), rows)


def pooled(results: dict) -> Table | None:
    """The tests pooled over seeds: one row per system the reference is compared with."""
    if not results.get("pooled"):
        return None
    rows = [[p["system"], _seeds(p["seeds"])] + _test_cells(p) for p in results["pooled"]]
    return Table(["against", "seeds"] + _test_header(results["reference"]), rows)


def _test_header(ref: str) -> list[str]:
    wers = [f"{ref} WER %", "other WER %", f"{ref} - other [95% CI]", "relative [95% CI]"]
    return wers + ["p", "p (Holm)", "utterances", "clusters", "layout"]


def _test_cells(p: dict) -> list[str]:
    """A test's cells: WERs, difference and relative difference with intervals, p-values,
    size, and the layout (flagged where the two systems were read in different ones)."""
    read_in = p["layout"] or "unknown"
    if not p["comparable"]:
        read_in = f"NOT COMPARABLE: {read_in} vs {p['other_layout'] or 'unknown'}"
    return [
        pct(p["wer"]),
        pct(p["other_wer"]),
        signed(p["delta"], p["low"], p["high"]),
        signed(p["relative"], p["relative_low"], p["relative_high"], "%"),
        pval(p["p_value"]),
        pval(p["p_holm"]),
        str(p["utterances"]),
        f"{p['clusters']} {p['cluster_unit']}s",
        read_in,
    ]


_TABLE_NAMES = {
    "systems": "comparison",
    "paired": "paired per seed",
    "pooled": "pooled over seeds",
    "sweep": "budget sweep",
    "sweep_tests": "budget sweep tests",
}


def layout_warnings(results: dict) -> list[Para]:
    """One warning line per table whose systems were read in different layouts."""
    lines = []
    for found in results.get("layout_mismatch", []):
        by_layout: dict[str, list[str]] = {}
        for system, layout in found["layouts"].items():
            by_layout.setdefault(layout or "unknown", []).append(system)
        listed = "; ".join(f"{lay}: {', '.join(s)}" for lay, s in sorted(by_layout.items()))
        lines.append(
            Para(
                f"Warning: the {_TABLE_NAMES[found['table']]} table mixes layouts ({listed}). "
                "WERs read in different layouts are not comparable; tests between them are "
                "marked NOT COMPARABLE (`comparable: false` in results.json)."
            )
        )
    return lines


def sweep(results: dict) -> Table | None:
    if not results["sweep"]:
        return None
    rows = [
        [r["system"], str(r["budget"]), str(len(r["runs"])), cell(r["target"])]
        for r in results["sweep"]
    ]
    return Table(["system", "budget", "seeds", "target WER % (range)"], rows)


def selection(summary: dict) -> Table:
    def num(value, digits=3) -> str:
        return "-" if value is None or pd.isna(value) else f"{value:.{digits}f}"

    rows = []
    for m in summary["selectors"]:
        if "skipped" in m:
            rows.append([m["selector"]] + ["-"] * 7 + [f"skipped: {m['skipped']}"])
            continue
        rows.append(
            [m["selector"], str(m["selected"]), str(m["unique"]), num(m["acceptance"], 4)]
            + [num(m.get("ess"), 1), num(m["tv_to_target"]), num(m["target_group_share"])]
            + [num(m["clipped_mass"]), "exhausted" if m["exhausted"] else ""]
        )
    header = ["selector", "selected", "unique", "acceptance", "ESS", "TV to target"]
    return Table(header + ["target-group share", "clipped mass", "note"], rows)


def generated(diagnostics: dict[str, dict]) -> Table | None:
    """Per selector with generated data and per generator: rows generated and accepted, the
    candidates' classifier AUC (augment), and the pseudo-labels' WER against references the
    method never read (accepted and all; where the set has transcripts)."""

    def num(value, scale=1.0, digits=3) -> str:
        return "-" if value is None or pd.isna(value) else f"{scale * value:.{digits}f}"

    rows = []
    for selector, diag in diagnostics.items():
        for name, made in (diag.get("generated") or {}).items():
            refs = made.get("references") or {}
            rows.append(
                [selector, name, str(made["generated"]), str(made["accepted"])]
                + [num(made["acceptance"]), num(made.get("auc"))]
                + [num(refs.get("wer_accepted"), 100, 1), num(refs.get("wer_all"), 100, 1)]
                + [made.get("error", "")]
            )
    if not rows:
        return None
    header = ["selector", "generator", "generated", "accepted", "acceptance", "AUC"]
    return Table(header + ["accepted labels WER %", "all labels WER %", "note"], rows)


def comparison_text(results: dict) -> str:
    """The comparison table as aligned text, for the terminal."""
    table = comparison(results)
    frame = pd.DataFrame(table.rows, columns=table.header)
    layouts = sorted({str(r.get("layout")) for r in results.get("systems", [])})
    read = (
        f"every system read in the {layouts[0]} layout"
        if len(layouts) == 1
        else f"WARNING: systems read in different layouts ({', '.join(layouts)}): not comparable"
    )
    head = f"WER % by system (mean over seeds; range in brackets); {read}"
    return f"{head}\n{frame.to_string(index=False)}"


# Rendering


def to_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}\n"]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Para):
            out.append(f"{block.text}\n")
        elif isinstance(block, Table):
            rule = "|".join("---:" if block.numeric(i) else "---" for i in range(len(block.header)))
            lines = [f"| {' | '.join(block.header)} |", f"|{rule}|"]
            lines += [
                "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in block.rows
            ]
            out.append("\n".join(lines) + "\n")
        else:
            out.append(f"![{block.caption}](figures/{block.name}.png)\n\n*{block.caption}*\n")
    return "\n".join(out)


_CODE = re.compile(r"`([^`]+)`")
_STYLE = """body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.num{text-align:right;white-space:nowrap}th{background:#f3f3f3}
figure{margin:1.5em 0}img{max-width:100%}figcaption{color:#555;font-size:.9em}
code{background:#f3f3f3;padding:0 .2em}"""


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", html.escape(text))


def to_html(title: str, blocks: list[Block]) -> str:
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            align = [' class="num"' if block.numeric(i) else "" for i in range(len(block.header))]
            head = "".join(
                f"<th{a}>{html.escape(h)}</th>" for a, h in zip(align, block.header, strict=True)
            )
            body = "".join(
                "<tr>"
                + "".join(f"<td{a}>{_inline(c)}</td>" for a, c in zip(align, row, strict=True))
                + "</tr>"
                for row in block.rows
            )
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        else:
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" '
                f'alt="{html.escape(block.caption)}"><figcaption>{_inline(block.caption)}'
                "</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)


def write(out: Path, title: str, blocks: list[Block]) -> None:
    """report.md with figures/*.png, and the self-contained report.html."""
    names = {f"{b.name}.png" for b in blocks if isinstance(b, Figure)}
    for block in blocks:
        if isinstance(block, Figure):
            with atomic_path(out / "figures" / f"{block.name}.png") as tmp:
                tmp.write_bytes(block.png)
    for old in (out / "figures").glob("*.png"):  # an earlier report's figure not drawn now
        if old.name not in names:
            old.unlink()
    write_text(out / "report.md", to_markdown(title, blocks))
    write_text(out / "report.html", to_html(title, blocks))
