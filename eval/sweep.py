"""Run methods × ratios (plus the uncompressed baseline) through lmms-eval, one process per run.

    python eval/sweep.py eval/sweeps/qwen2_5_vl_7b.yaml            # runs everything
    python eval/sweep.py eval/sweeps/qwen2_5_vl_7b.yaml --dry-run  # prints the commands
    python eval/plot_sweep.py results/sweeps/qwen2_5_vl_7b         # table and figures

Each run writes lmms-eval's usual results and samples files under <output>/<method>_r<ratio>/; finished
runs (a results file exists) are skipped, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import yaml


def runs(config: dict) -> list[tuple[str, float | None, dict]]:
    """(method, ratio, knobs) for the baseline and every method × ratio of the config."""
    planned = [("none", None, {})]
    for method, knobs in (config.get("methods") or {}).items():
        planned.extend((method, ratio, knobs or {}) for ratio in config["ratios"])
    return planned


def command(config: dict, method: str, ratio: float | None, knobs: dict) -> tuple[list[str], Path]:
    arguments = dict(config.get("model_args") or {}, method=method, **knobs)
    if ratio is not None:
        arguments["ratio"] = ratio
    model_args = ",".join(f"{key}={value}" for key, value in arguments.items())
    output = Path(config["output"]) / (f"{method}_r{ratio:g}" if ratio is not None else method)
    line = [
        sys.executable, "-m", "lmms_eval", "--model", f"tokcompress_{config['model']}", "--model_args", model_args,
        "--tasks", ",".join(config["tasks"]), "--output_path", str(output), *config.get("lmms_eval_args", []),
    ]
    return line, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    failures = 0
    for method, ratio, knobs in runs(config):
        line, output = command(config, method, ratio, knobs)
        if args.dry_run:
            print(shlex.join(line))
            continue
        if any(output.rglob("*_results.json")):
            print(f"skip {output} (done)")
            continue
        print(f"run  {output}", flush=True)
        failures += subprocess.run(line, check=False).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
