"""Where a compressed prefill's (or decoding step's) extra time goes on the GPU (issue 10, item 5): one forward
of LLaVA-OneVision-7B (random weights, bf16, 64 frames) with `none` and with each method named, under
torch.profiler.

GPU only. For each method prints the forward's median time, its host syncs (device-to-host copies: `.item()`,
`.tolist()`, `nonzero`, ...) and the ops whose own CUDA or CPU time grew most against `none`; `--trace`
writes a Chrome trace per method to the output folder (eval/results by default). `--step decode` profiles
one decoding step after the prompt instead (DyCoke's per-step KV selection).

    python eval/gpu/profile_prefill.py [OUT] [--methods tome framefusion] [--trace]
    python eval/gpu/profile_prefill.py [OUT] --step decode --methods dycoke
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parents[1]))
from shapes import named_model, video_inputs  # noqa: E402

import tokcompress  # noqa: E402
from tokcompress.engine.compat import CACHE_KEYWORD, output_cache  # noqa: E402
from tokcompress.timing import median_ms  # noqa: E402
from tokcompress.video import read_frames, sample_clip  # noqa: E402

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync", "aten::item", "aten::nonzero")


def decoding_step(model, inputs: dict):
    """A callable running one more decoding step after the prompt (each call extends the same cache by one)."""
    out = model(**inputs, use_cache=True)
    cache, token, mask = output_cache(out), out.logits[:, -1:].argmax(-1), inputs["attention_mask"]

    def step():
        nonlocal mask
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return model(input_ids=token, attention_mask=mask, use_cache=True, **{CACHE_KEYWORD: cache})

    return step


def profiled(model, inputs: dict, method: str, ratio: float, step: str, trace: Path | None) -> dict:
    """Per op name: (its own CUDA ms, its own CPU ms, calls) in one forward; the Chrome trace to `trace`."""
    with tokcompress.compress(model, method, ratio=None if method == "none" else ratio), torch.no_grad():
        forward = (lambda: model(**inputs)) if step == "prefill" else decoding_step(model, inputs)
        print(f"{method}: {step} {median_ms(forward, 5, 'cuda'):.2f} ms (median of 5)")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiler:
            forward()
            torch.cuda.synchronize()
    if trace is not None:
        profiler.export_chrome_trace(str(trace / f"{step}_trace_{method}.json"))
    return {
        event.key: (event.self_device_time_total / 1e3, event.self_cpu_time_total / 1e3, event.count)
        for event in profiler.key_averages()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).parents[1] / "results")
    parser.add_argument("--methods", nargs="+", default=["tome", "framefusion"])
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--step", choices=["prefill", "decode"], default="prefill")
    parser.add_argument("--trace", action="store_true", help="also write Chrome traces (tens of MB each)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("a GPU only measurement (no CUDA device here)")
    args.out.mkdir(parents=True, exist_ok=True)
    model = named_model("llava-onevision-7b", torch.bfloat16, "cuda")
    inputs = video_inputs(model, read_frames(sample_clip("bigbuckbunny.mp4"), args.frames))
    inputs = {k: v.cuda().to(torch.bfloat16) if v.is_floating_point() else v.cuda() for k, v in inputs.items()}
    trace = args.out if args.trace else None
    baseline = profiled(model, inputs, "none", args.ratio, args.step, trace)
    for method in args.methods:
        ops = profiled(model, inputs, method, args.ratio, args.step, trace)
        syncs = {name: ops[name][2] for name in SYNC_EVENTS if name in ops}
        print(f"  host syncs and copies: {syncs}")

        def growth(name: str) -> float:
            was = baseline.get(name, (0.0, 0.0, 0))
            return max(ops[name][0] - was[0], ops[name][1] - was[1])

        for name in sorted(ops, key=growth, reverse=True)[:12]:
            cuda, cpu, calls = ops[name]
            was = baseline.get(name, (0.0, 0.0, 0))
            print(f"  {name[:44]:44s} CUDA {cuda:8.2f} ms (none {was[0]:7.2f})  CPU {cpu:8.2f} ms (none {was[1]:7.2f})"
                  f"  calls {calls} (none {was[2]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
