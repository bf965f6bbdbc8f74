"""Latency and memory of compressed Video-LLMs against the uncompressed model and the ideal.

For each frame count × method × ratio: prefill (time to first token: vision encoder + LLM prefill), decode
time per token, end-to-end generate time, peak GPU memory, and the **ideal** - the same model's vision
encoder on the share of the clip the method encoded, then the model's own `generate()` (no hooks) on the
prompt's text plus as many visual tokens as the method kept (its layer-averaged count). Both go through
`generate()`, so measured − ideal is tokcompress's overhead and nothing else.

    python eval/bench_latency.py --model llava-onevision-7b --frames 32 64 --device cuda    # random 7B weights
    python eval/bench_latency.py --model /path/to/checkpoint --frames 32                    # real weights
    python eval/bench_latency.py --model small --frames 32 --ratios 0.15 0.3 --device cpu   # the committed CPU runs
    python eval/bench_latency.py --model small-qwen2.5-vl --frames 32 --ratios 0.15 0.3 --device cpu \
        --methods stock none tome fastv framefusion framededup earlytom vidtldr flowcut visionzip holitom

Writes eval/results/latency_<model>_<device>.csv and three plots (latency vs ratio, with the ideal of the
LLM-side methods; speed-up vs frames; where the prefill's time goes). Peak memory is a GPU figure (NaN on
the CPU).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import torch
from shapes import MODEL_NAMES, named_model, video_inputs
from tqdm import tqdm

import tokcompress
from tokcompress.adapters import adapter_for
from tokcompress.ideal import ideal_inputs
from tokcompress.methods import build_method, method_spec
from tokcompress.timing import median_ms, timed_generate
from tokcompress.video import read_frames, sample_clip

RESULTS = Path(__file__).parent / "results"
STOCK = "stock"  # the unpatched model, as users run it
BASELINES = ("none", STOCK)  # measured once, at ratio 1


def measure(model, inputs: dict, new_tokens: int, repeats: int, device: str) -> dict:
    return timed_generate(model, inputs, new_tokens, repeats, device)


def measure_ideal(
    model, inputs: dict, visual_kept: int, new_tokens: int, repeats: int, device: str, encoded: float = 1.0
) -> dict:
    """The vision encoder on the clip (on the `encoded` fraction of its frame units, as the method did), then the
    model's own generate() on text + `visual_kept` tokens (at their original M-RoPE positions, which it computes
    from the prompt's grids where it has them): the measured run's path, without hooks."""
    _, prepare = ideal_inputs(model, inputs, visual_kept, encoded)
    timing = timed_generate(model, prepare, new_tokens, repeats, device)
    return {f"ideal_{key}": value for key, value in timing.items() if key != "end_to_end_ms"}


def measure_stock(model, inputs: dict, new_tokens: int, repeats: int, device: str) -> dict:
    """The model as users run it, no patch at all (Qwen-VL: stock sdpa's loop over vision windows, where `none`
    takes the packed varlen path); its ideal is itself."""
    encode, _ = ideal_inputs(model, inputs, 0, as_patched=False)
    measured = measure(model, inputs, new_tokens, repeats, device)
    ideal = {f"ideal_{key}": value for key, value in measured.items() if key != "end_to_end_ms"}
    return dict(compression_ms=0.0, decode_compression_ms=0.0, encoder_ms=round(median_ms(encode, repeats, device), 3),
                encoder_ratio=1.0, **measured, **ideal)


def measure_method(model, inputs: dict, method: str, ratio: float, visual_in: int, args, ideals: dict) -> dict:
    """A patched run, then the ideal for what it kept and encoded (measured once per kept count and encoded share on
    these inputs: `ideals`). Encoder and compression times are medians over the timed runs' own stats, as the
    latencies are; the decoding steps' compression (KV selection) apart."""
    name, knobs = method_spec(method)
    with tokcompress.compress(model, name, ratio=None if name == "none" else ratio, **knobs) as handle:
        runs = []
        measured = timed_generate(model, inputs, args.new_tokens, args.repeats, args.device,
                                  after_each=lambda: runs.append(handle.stats))
    stats = runs[-1]
    kept = round(stats.achieved_ratio * visual_in)
    key = (kept, round(stats.encoder_ratio, 4))
    if key not in ideals:  # LLM-side methods at one ratio keep the same count: one ideal serves them all
        ideals[key] = measure_ideal(model, inputs, kept, args.new_tokens, args.repeats, args.device, key[1])
    ideal = ideals[key]
    median_ms = lambda seconds: round(statistics.median(seconds(s) for s in runs) * 1e3, 3)  # noqa: E731
    return dict(
        achieved_ratio=stats.achieved_ratio, compression_ms=median_ms(lambda s: s.compression_seconds),
        decode_compression_ms=median_ms(lambda s: s.decode_compression_seconds),
        encoder_ms=median_ms(lambda s: s.encoder_seconds), encoder_ratio=round(stats.encoder_ratio, 4),
        **measured, **ideal,
    )


def run(args, stem: str) -> list[dict]:
    """Every (frames, method, ratio) job; a job that fails (a method the model refuses, out of memory) is a row
    with its error, and the CSV is written after every job, so a run cut short keeps what it measured."""
    dtype = getattr(torch, args.dtype)
    model = named_model(args.model, dtype, args.device)
    clip = sample_clip(args.clip)
    rows = []
    jobs = [(f, m, r) for f in args.frames for m in args.methods for r in ([1.0] if m in BASELINES else args.ratios)]
    torch.set_grad_enabled(False)
    prepared, ideals = {}, {}  # per frame count: the clip decoded and processed once, the ideals measured
    for frames, method, ratio in tqdm(jobs, desc="latency", unit="run"):
        if frames not in prepared:
            inputs = {k: v.to(args.device) for k, v in video_inputs(model, read_frames(clip, frames)).items()}
            prepared[frames] = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
        inputs = prepared[frames]
        visual_in = int((inputs["input_ids"] == adapter_for(model).video_token_id).sum())
        row = dict(model=args.model, device=device_name(args.device), dtype=args.dtype, frames=frames, method=method,
                   ratio=ratio, new_tokens=args.new_tokens, visual_in=visual_in)
        try:
            if method == STOCK:
                timing = measure_stock(model, inputs, args.new_tokens, args.repeats, args.device)
            else:
                timing = measure_method(model, inputs, method, ratio, visual_in, args, ideals.setdefault(frames, {}))
        except (ValueError, RuntimeError) as error:  # refused, or out of memory: the other jobs still run
            print(f"{frames} frames {method} r={ratio:g}: {type(error).__name__}: {error}")
            rows.append({**row, "error": f"{type(error).__name__}: {str(error)[:200]}"})
            if args.device == "cuda":
                torch.cuda.empty_cache()
        else:
            achieved = timing.pop("achieved_ratio", 1.0)
            rows.append(dict(
                **row, visual_kept_layer_mean=round(achieved * visual_in), achieved_ratio=round(achieved, 4),
                **timing, prefill_overhead_ms=timing["prefill_ms"] - timing["ideal_prefill_ms"],
            ))
        write(rows, args.out, stem)
    return rows


def device_name(device: str) -> str:
    return torch.cuda.get_device_name().replace(" ", "-") if device == "cuda" else "cpu"


def write(rows: list[dict], out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    return path


def plot(rows: list[dict], out: Path, stem: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m not in BASELINES]
    style = {m: dict(color=plt.get_cmap("tab20")(i % 20), marker="os^Dv"[i // 20 % 5]) for i, m in enumerate(methods)}
    frames = sorted({r["frames"] for r in rows})
    baseline = {r["frames"]: r for r in rows if r["method"] == "none"}
    figure, axes = plt.subplots(1, len(frames), figsize=(5 * len(frames) + 2, 4.5), squeeze=False)
    for axis, count in zip(axes[0], frames):
        for method in methods:
            points = sorted(
                (r["ratio"], r["prefill_ms"]) for r in rows if r["method"] == method and r["frames"] == count
            )
            axis.plot(*zip(*points), label=method, **style[method])
        llm_side = [r for r in rows if r["method"] not in BASELINES and r["frames"] == count
                    and float(r.get("encoder_ratio", 1.0)) >= 0.999]  # their ideals share a full tower
        ratios = sorted({r["ratio"] for r in llm_side})
        ideal = [statistics.median(r["ideal_prefill_ms"] for r in llm_side if r["ratio"] == x) for x in ratios]
        if ratios:
            axis.plot(ratios, ideal, linestyle="--", color="black", label="ideal (LLM-side methods)")
        if count in baseline:
            axis.axhline(baseline[count]["prefill_ms"], color="gray", linestyle=":", label="none")
        stock = [r for r in rows if r["method"] == STOCK and r["frames"] == count]
        if stock:
            axis.axhline(stock[0]["prefill_ms"], color="brown", linestyle=":", label="stock (unpatched)")
        axis.set(title=f"{count} frames", xlabel="ratio", ylabel="prefill ms (median)")
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.suptitle(f"prefill latency vs ratio - {rows[0]['model']} on {rows[0]['device']}")
    figure.tight_layout()
    figure.savefig(out / f"{stem}_vs_ratio.png", dpi=110)
    figure, axis = plt.subplots(figsize=(9, 4.5))
    for method in methods:
        for ratio, line in zip(sorted({r["ratio"] for r in rows if r["method"] == method}), ("-", "--", ":", "-.")):
            points = sorted((r["frames"], baseline[r["frames"]]["prefill_ms"] / r["prefill_ms"])
                            for r in rows if r["method"] == method and r["ratio"] == ratio and r["frames"] in baseline)
            axis.plot(*zip(*points), linestyle=line, label=f"{method} @ {ratio:g}", **style[method])
    axis.set(xlabel="frames", ylabel="prefill speed-up vs none", title=f"{rows[0]['model']} on {rows[0]['device']}")
    axis.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(out / f"{stem}_speedup.png", dpi=110)


def plot_breakdown(rows: list[dict], out: Path, stem: str) -> None:
    """Where the time to first token goes, per run: vision encoder, compression, the rest of the prefill
    (the LLM), next to the decode time of the following tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['method']}@{r['ratio']:g}, {r['frames']}f" for r in rows]
    encoder = [r["encoder_ms"] for r in rows]
    compression = [r["compression_ms"] for r in rows]
    llm = [max(r["prefill_ms"] - e - c, 0.0) for r, e, c in zip(rows, encoder, compression)]
    decode = [r["decode_ms_per_token"] * (r["new_tokens"] - 1) for r in rows]
    figure, axis = plt.subplots(figsize=(max(6, 0.55 * len(rows)), 4))
    bottom = [0.0] * len(rows)
    for values, name in (
        (encoder, "vision encoder"), (compression, "compression"), (llm, "LLM prefill"), (decode, "decode")
    ):
        axis.bar(labels, values, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set(ylabel="ms (median run)", title=f"where time goes - {rows[0]['model']} on {rows[0]['device']}")
    axis.tick_params(axis="x", rotation=70, labelsize=7)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(out / f"{stem}_breakdown.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="small", help=", ".join(MODEL_NAMES) + ", or a checkpoint path"
    )
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 16])
    parser.add_argument(
        "--methods", nargs="+", default=[STOCK, "none", *(m for m in tokcompress.list_methods() if m != "none")],
        help=f"registered methods (knobs as flowcut:inner_prune=0), compositions (framededup+fastv), and '{STOCK}': "
             "the unpatched model (Qwen-VL: stock sdpa vision windows)",
    )
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip", default="bigbuckbunny.mp4")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.device == "cpu" and args.model in MODEL_NAMES and not args.model.startswith("small"):
        parser.error(f"{args.model} is a real shape (billions of random weights, tens of GB in float32): on the CPU "
                     "use --model small or small-qwen2.5-vl; the real shapes run on a GPU (eval/gpu/run.sh)")
    for method in args.methods:  # every spec checked before the first (long) run, not when its turn comes
        if method != STOCK:
            try:
                name, knobs = method_spec(method)
                build_method(name, **knobs)
            except (TypeError, ValueError) as error:
                parser.error(f"{method}: {error}")
    stem = f"latency_{Path(args.model).name}_{device_name(args.device)}"
    rows = [row for row in run(args, stem) if "error" not in row]
    print(f"wrote {args.out / f'{stem}.csv'}")
    if not rows:
        return 1
    plot(rows, args.out, stem)
    plot_breakdown(rows, args.out, stem)
    for row in rows:
        print(f"{row['frames']:3d} frames {row['method']:12s} r={row['ratio']:<5g} prefill {row['prefill_ms']:9.1f} ms "
              f"(ideal {row['ideal_prefill_ms']:9.1f})  decode {row['decode_ms_per_token']:7.2f} ms/token "
              f"(ideal {row['ideal_decode_ms_per_token']:7.2f})  peak {row['peak_mib']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
