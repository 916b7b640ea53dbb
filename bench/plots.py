"""Plots for docs/performance.md, drawn from bench/results/*.json.

    python -m bench.plots [--results bench/results] [--out docs/img]

Writes latency_vs_size.png (from latency_scale.json) and throughput.png (from
throughput.json). A missing or unreadable result file skips its plot with a message, so the
command can be re-run at any point of a benchmark campaign.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display here; must precede pyplot

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from bench.common import RESULTS, ROOT

IMG = ROOT / "docs" / "img"
PLAIN = FuncFormatter(lambda value, _: f"{value:,.0f}")  # log axes read as 1,000 and 20, not 10^3
SERIES = (  # (row key, label, colour)
    ("mcp_ms", "find_tools through /mcp", "tab:red"),
    ("retrieval_ms", "retrieval call alone", "tab:blue"),
    ("floor_ms", "floor: embed + exact scan", "tab:gray"),
)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / name
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"skipped: {path} is missing")
        return None
    except (OSError, json.JSONDecodeError) as exc:
        print(f"skipped: {path} cannot be read ({exc})")
        return None
    return loaded


def latency_vs_size(results: Path) -> Figure | None:
    """p50 (solid) and p99 (dashed) against catalog size, one panel per intent mode."""
    data = _load(results, "latency_scale.json")
    if data is None:
        return None
    sizes = sorted(data.get("sizes", []), key=lambda part: int(part["tools"]))
    modes = sorted({row["intent"] for part in sizes for row in part["rows"]}, reverse=True)  # on, off
    if not modes:
        print("skipped: latency_scale.json has no rows")
        return None
    figure, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), sharey=True, squeeze=False)
    for axis, mode in zip(axes[0], modes, strict=True):
        points = [
            (int(part["tools"]), row) for part in sizes for row in part["rows"] if row["intent"] == mode
        ]
        for key, label, colour in SERIES:
            # A row timed through /mcp only (a gateway the benchmark attached to) has no
            # in-process figures: those series skip its size.
            have = [(tools, row[key]) for tools, row in points if row.get(key)]
            xs = [tools for tools, _ in have]
            axis.plot(xs, [v["p50"] for _, v in have], "o-", color=colour, label=f"{label}, p50")
            axis.plot(xs, [v["p99"] for _, v in have], "s--", color=colour, alpha=0.6, label=f"{label}, p99")
        for part in sizes:
            target = part.get("target_mcp_p50_ms")
            if target:
                axis.plot([int(part["tools"])], [target], "r*", markersize=12, label="target, /mcp p50")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.xaxis.set_major_formatter(PLAIN)
        axis.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.yaxis.set_major_formatter(PLAIN)
        axis.yaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("tools in the catalog")
        axis.set_title(f"intent stage {mode}")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("latency per query (ms)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one "target" entry is enough
    figure.legend(unique.values(), unique.keys(), loc="lower center", ncol=3, fontsize=8, frameon=False)
    loads = [x for part in sizes for x in (part.get("loadavg") or {}).get("start", [])[:1]]
    shared = f", load average {min(loads):.0f}-{max(loads):.0f}" if loads else ""
    figure.suptitle(f"find_tools latency vs catalog size (one query at a time, 2 CPU cores{shared})")
    figure.tight_layout(rect=(0, 0.16, 1, 1))
    return figure


def throughput(results: Path) -> Figure | None:
    """Requests per second (bars) and p99 of find and call (lines) per concurrency level."""
    data = _load(results, "throughput.json")
    if data is None:
        return None
    levels = data.get("levels") or []
    if not levels:
        print("skipped: throughput.json has no levels")
        return None
    clients = [str(level["clients"]) for level in levels]
    figure, left = plt.subplots(figsize=(6.4, 4.2))
    left.bar(clients, [level["requests_per_s"] for level in levels], color="tab:green", alpha=0.5)
    left.set_xlabel("concurrent clients (find_tools + call_tool rounds)")
    left.set_ylabel("requests per second (bars)")
    right = left.twinx()
    for key, label, colour in (
        ("find_ms", "find_tools p99", "tab:red"),
        ("call_ms", "call_tool p99", "tab:blue"),
    ):
        right.plot(
            clients, [(level[key] or {}).get("p99", 0) for level in levels], "o-", color=colour, label=label
        )
    right.set_yscale("log")
    right.yaxis.set_major_formatter(PLAIN)
    right.set_ylabel("p99 latency (ms, lines)")
    right.legend(loc="upper left", fontsize=8)
    errors = sum(int(level.get("errors", 0)) for level in levels)
    left.set_title(f"throughput vs concurrency, one gateway process ({errors} errors)")
    figure.tight_layout()
    return figure


PLOTS: dict[str, Callable[[Path], Figure | None]] = {
    "latency_vs_size.png": latency_vs_size,
    "throughput.png": throughput,
}


def render(results: Path = RESULTS, out: Path = IMG) -> list[Path]:
    """Draw every plot whose results exist; the PNGs written."""
    written = []
    for name, draw in PLOTS.items():
        figure = draw(results)
        if figure is None:
            continue
        out.mkdir(parents=True, exist_ok=True)
        path = out / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)
        print(f"wrote {path}")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=IMG)
    args = parser.parse_args()
    render(args.results, args.out)


if __name__ == "__main__":
    main()
