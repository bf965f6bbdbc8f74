"""Turn lmms-eval outputs of a sweep into an accuracy-vs-cost table and figures.

    python eval/plot_sweep.py results/sweeps/qwen2_5_vl_7b [--metric videomme=videomme_perception_score]

Reads every `*_results.json` below the folder and its `*_samples_<task>.jsonl` siblings; the method and
ratio of a run come from tokcompress's per-sample records, as do latency and achieved ratio. A group task that
lmms-eval reports without a score of its own (MVBench: 20 subtasks) becomes one column, the plain mean of its
subtasks' scores (MVBench's own average). Writes sweep.csv, sweep.md, accuracy_vs_ratio.png and
accuracy_vs_latency.png into the folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean, median


def headline_metric(task_results: dict, preferred: str | None) -> tuple[str, float] | None:
    """The task's metric: the preferred one, else the first numeric `<name>,none` that is not a stderr."""
    for key, value in task_results.items():
        name = key.split(",")[0]
        if isinstance(value, (int, float)) and "stderr" not in key and (preferred is None or name == preferred):
            return name, float(value)
    return None


def collect(root: Path, preferred: dict[str, str]) -> list[dict]:
    rows = []
    for results_file in sorted(root.rglob("*_results.json")):
        results = json.loads(results_file.read_text())
        run = _task_rows(results_file, results, preferred)
        rows += _grouped(run, results.get("group_subtasks", {}))
    return sorted(rows, key=lambda r: (r["task"], r["method"] != "none", r["method"], -r["ratio"]))


def _grouped(rows: list[dict], groups: dict[str, list[str]]) -> list[dict]:
    """One run's rows with each scoreless group's subtasks folded into one row: the mean of their scores, their
    costs weighted by samples."""
    for group, subtasks in groups.items():
        members = [r for r in rows if r["task"] in subtasks]
        if not members or any(r["task"] == group for r in rows):
            continue
        samples = sum(r["samples"] for r in members)
        weighted = lambda key: round(sum(r[key] * r["samples"] for r in members) / samples, 4)  # noqa: E731
        timed = lambda key: weighted(key) if all(r[key] is not None for r in members) else None  # noqa: E731
        rows = [r for r in rows if r not in members] + [dict(
            members[0], task=group, score=mean(r["score"] for r in members), achieved_ratio=weighted("achieved_ratio"),
            prefill_ms=timed("prefill_ms"), decode_ms_per_token=timed("decode_ms_per_token"), samples=samples,
            failed=sum(r.get("failed", 0) for r in members),
        )]
    return rows


def _task_rows(results_file: Path, results: dict, preferred: dict[str, str]) -> list[dict]:
    """A row per task of one lmms-eval results file that has a metric and tokcompress's per-sample records."""
    rows = []
    stamp = results_file.name.removesuffix("_results.json")
    for task, task_results in results.get("results", {}).items():
        metric = headline_metric(task_results, preferred.get(task))
        samples_file = results_file.with_name(f"{stamp}_samples_{task}.jsonl")
        if metric is None or not samples_file.exists():
            continue
        records = [
            counts
            for line in samples_file.read_text().splitlines()
            if line.strip()
            for counts in json.loads(line).get("token_counts") or []
            if counts and "method" in counts
        ]
        if not records:  # e.g. a loglikelihood task: lmms-eval keeps no generation records for it
            print(f"{results_file.name}: {task} has no tokcompress records per sample: left out", file=sys.stderr)
            continue
        numbers = lambda key: [r[key] for r in records if r.get(key) is not None]  # noqa: E731
        rows.append(dict(
            # a method's settings apart (flowcut and flowcut:inner_prune=0 are two rows)
            task=task, method=records[0].get("spec") or records[0]["method"], ratio=records[0]["ratio"],
            metric=metric[0], score=metric[1], achieved_ratio=round(mean(numbers("achieved_ratio") or [1.0]), 4),
            # medians: a run's first request pays one-time costs (compilation, first allocations)
            prefill_ms=round(median(numbers("prefill_ms")), 2) if numbers("prefill_ms") else None,
            decode_ms_per_token=(
                round(median(numbers("decode_ms_per_token")), 3) if numbers("decode_ms_per_token") else None
            ),
            samples=len(records), failed=sum(bool(r.get("failed")) for r in records),
        ))
    return rows


def write_tables(rows: list[dict], root: Path) -> None:
    with (root / "sweep.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tasks = sorted({r["task"] for r in rows})
    runs = sorted({(r["method"], r["ratio"]) for r in rows}, key=lambda k: (k[0] != "none", k[0], -k[1]))
    score = {(r["task"], r["method"], r["ratio"]): r["score"] for r in rows}
    prefill = defaultdict(list)
    for r in rows:
        if r["prefill_ms"] is not None:
            prefill[(r["method"], r["ratio"])].append(r["prefill_ms"])
    lines = ["| method | ratio | " + " | ".join(tasks) + " | prefill ms |", "|---" * (len(tasks) + 3) + "|"]
    for method, ratio in runs:
        cells = [f"{score[(t, method, ratio)]:.4g}" if (t, method, ratio) in score else "" for t in tasks]
        latency = f"{mean(prefill[(method, ratio)]):.0f}" if prefill[(method, ratio)] else ""
        lines.append(f"| {method} | {ratio:g} | " + " | ".join(cells) + f" | {latency} |")
    (root / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], root: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    methods = sorted({r["method"] for r in rows} - {"none"})
    for x_key, name, label in (
        # the ratio achieved (a frame-granular method may keep more or fewer than asked), not the one requested
        ("achieved_ratio", "accuracy_vs_ratio", "achieved ratio"), ("prefill_ms", "accuracy_vs_latency", "prefill ms")
    ):
        figure, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.6), squeeze=False)
        for axis, task in zip(axes[0], tasks):
            for method in methods:
                points = sorted(
                    (r[x_key], r["score"]) for r in rows
                    if r["task"] == task and r["method"] == method and r[x_key] is not None
                )
                if points:
                    axis.plot(*zip(*points), marker="o", label=method)
            for r in rows:
                if r["task"] == task and r["method"] == "none" and r[x_key] is not None:
                    axis.axhline(r["score"], color="gray", linestyle=":", label="none")
                    if x_key == "prefill_ms":
                        axis.plot([r[x_key]], [r["score"]], marker="*", color="gray", markersize=10)
            metric = next(r["metric"] for r in rows if r["task"] == task)
            axis.set(title=task, xlabel=label, ylabel=metric)
            axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(root / f"{name}.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument(
        "--metric", action="append", default=[], help="task=metric_name, to pick a task's headline metric"
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.metric):
        parser.error("--metric takes task=metric_name, e.g. videomme=videomme_perception_score")
    preferred = dict(item.split("=", 1) for item in args.metric)
    rows = collect(args.root, preferred)
    if not rows:
        hint = f" (or none has the metric asked for: {preferred})" if preferred else ""
        raise SystemExit(f"no lmms-eval results with tokcompress records under {args.root}{hint}")
    write_tables(rows, args.root)
    plot(rows, args.root)
    print((args.root / "sweep.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
