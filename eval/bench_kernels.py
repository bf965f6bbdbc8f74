"""Kernel benchmark: each Triton kernel against its torch reference and the naive PyTorch a user would write.

GPU:  python eval/bench_kernels.py                 # N ∈ {1k, 4k, 12k, 25k} tokens, D ∈ {896, 1280, 3584}, bf16
CPU:  python eval/bench_kernels.py --smoke         # tiny shapes, kernels through TRITON_INTERPRET (checks the harness,
                                                   # the timings say nothing about GPU speed)
Writes eval/results/kernels_<device>.csv and .png (a smoke run: under eval/results/smoke/, untracked). GPU timings
are triton.testing.do_bench quantiles (median, p20, p80).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from tokcompress.ops import attention, matching, merge, similarity  # noqa: E402

try:
    from tokcompress.kernels import attention as attention_kernel
    from tokcompress.kernels import matching as matching_kernel
    from tokcompress.kernels import merge as merge_kernel
    from tokcompress.kernels import similarity as similarity_kernel
except ImportError as error:  # no triton: --help still works, and a run says what to install
    MISSING_KERNELS = error
else:
    MISSING_KERNELS = None

RESULTS = Path(__file__).parent / "results"
SMOKE_RESULTS = RESULTS / "smoke"  # interpreter timings, meaningless as speed: kept out of git
TOKENS_PER_FRAME = 196
SHAPES = {  # hidden size D: (attention heads, KV heads, head dim) of the model it comes from
    896: (14, 2, 64),  # Qwen2-0.5B, the LLM of LLaVA-OneVision-0.5B
    1280: (16, 16, 80),  # Qwen2.5-VL's vision tower (in-encoder merging)
    3584: (28, 4, 128),  # Qwen2-7B: LLaVA-OneVision-7B's and Qwen2.5-VL-7B's LLM
}
SMOKE_SHAPES = {64: (4, 2, 16), 128: (4, 4, 32)}


def naive_aligned_cosine(tokens, partner):
    """Frame by frame, as research code does it: the cosine of each frame with the previous one."""
    frames = tokens[: tokens.shape[0] // TOKENS_PER_FRAME * TOKENS_PER_FRAME].view(
        -1, TOKENS_PER_FRAME, tokens.shape[-1]
    )
    return torch.cat([torch.full((TOKENS_PER_FRAME,), -2.0, device=tokens.device)] + [
        torch.nn.functional.cosine_similarity(frames[t].float(), frames[t - 1].float(), dim=-1)
        for t in range(1, len(frames))
    ])


def naive_weighted_merge(tokens, sizes, merge_into, destinations):
    """A dense assignment matrix times the tokens."""
    assignment = torch.zeros(destinations, tokens.shape[0], device=tokens.device, dtype=torch.float32)
    used = merge_into >= 0
    assignment[merge_into[used], used.nonzero().squeeze(1)] = sizes[used].float()
    weights = assignment.sum(1, keepdim=True).clamp_min(1e-12)
    return (assignment @ tokens.float() / weights).to(tokens.dtype), weights.squeeze(1)


def naive_few_query_attention(queries, keys, key_mask=None):
    """Eager attention for every row (what output_attentions=True costs), keeping the last rows."""
    heads, rows, dim = queries.shape
    full_queries = torch.cat([queries.new_zeros(heads, keys.shape[1] - rows, dim), queries], dim=1)
    expanded = keys.repeat_interleave(heads // keys.shape[0], dim=0)
    logits = (full_queries.float() @ expanded.float().transpose(1, 2)) * dim**-0.5
    causal = torch.ones(keys.shape[1], keys.shape[1], dtype=torch.bool, device=keys.device).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1).mean(0)[-rows:]


def naive_bipartite_match(a, b, a_lengths, b_lengths):
    """ToMe's own formulation: normalise, the full A×B score matrix, then its row maxima."""
    scores = (a / a.norm(dim=-1, keepdim=True)) @ (b / b.norm(dim=-1, keepdim=True)).transpose(1, 2)
    return scores.max(dim=-1)


def cases(n: int, d: int, dtype: torch.dtype, device: str) -> dict[str, tuple[tuple, dict[str, Callable]]]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randn(n, d, generator=generator).to(device, dtype)
    partner = (torch.arange(n) - TOKENS_PER_FRAME).to(device)
    sizes = torch.ones(n, device=device)
    merge_into = (torch.arange(n) // 2).to(device)
    heads, kv_heads, head_dim = {**SHAPES, **SMOKE_SHAPES}[d]
    queries = torch.randn(heads, 1, head_dim, generator=generator).to(device, dtype)
    keys = torch.randn(kv_heads, n, head_dim, generator=generator).to(device, dtype)
    half = n // 2
    a, b = tokens[None, :half], tokens[None, half : 2 * half]
    lengths = torch.tensor([half], device=device)
    return {
        "aligned_cosine": ((tokens, partner), dict(
            kernel=similarity_kernel.aligned_cosine, reference=similarity.aligned_cosine_reference,
            naive=naive_aligned_cosine)),
        "weighted_merge": ((tokens, sizes, merge_into, (n + 1) // 2), dict(
            kernel=merge_kernel.weighted_merge, reference=merge.weighted_merge_reference, naive=naive_weighted_merge)),
        "few_query_attention": ((queries, keys), dict(
            kernel=attention_kernel.few_query_attention, reference=attention.few_query_attention_reference,
            naive=naive_few_query_attention)),
        "bipartite_match": ((a, b, lengths, lengths), dict(
            kernel=matching_kernel.bipartite_match, reference=matching.bipartite_match_reference,
            naive=naive_bipartite_match)),
    }


def time_call(function: Callable, args: tuple, repeats: int) -> tuple[float, float, float]:
    """(median, p20, p80) milliseconds."""
    if torch.cuda.is_available():
        import triton.testing

        return tuple(triton.testing.do_bench(lambda: function(*args), quantiles=[0.5, 0.2, 0.8]))
    function(*args)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*args)
        samples.append((time.perf_counter() - start) * 1e3)
    quantiles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return statistics.median(samples), quantiles[1], quantiles[7]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (the CPU run)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="on a GPU (the CPU smoke run is float32)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"default: {RESULTS} (a smoke run: {SMOKE_RESULTS}, untracked)")
    args = parser.parse_args(argv)
    args.out = args.out or (SMOKE_RESULTS if args.smoke else RESULTS)
    if MISSING_KERNELS is not None:
        parser.error(f"the kernels need triton ({MISSING_KERNELS}): pip install -c constraints.txt -e '.[kernels]'")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:  # the full sizes through TRITON_INTERPRET would take hours
        parser.error("without a GPU only --smoke runs (the kernels go through the Triton interpreter)")
    name = torch.cuda.get_device_name().replace(" ", "-") if device == "cuda" else "cpu-interpreter-smoke"
    dtype = getattr(torch, args.dtype) if device == "cuda" else torch.float32
    sizes = [(n, d) for n in (200, 400) for d in SMOKE_SHAPES] if args.smoke else [
        (n, d) for n in (1024, 4096, 12288, 25088) for d in SHAPES
    ]
    rows = []
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kernels_{name}.csv"
    for n, d in sizes:
        for op, (inputs, implementations) in cases(n, d, dtype, device).items():
            for implementation, function in implementations.items():
                error = ""
                try:
                    median, low, high = time_call(function, inputs, repeats=2 if args.smoke else 20)
                except Exception as failure:  # out of memory, or a kernel that does not compile: NaN, the rest run
                    median = low = high = float("nan")
                    error = f"{type(failure).__name__}: {str(failure)[:200]}"
                    if device == "cuda":
                        torch.cuda.empty_cache()
                rows.append(dict(device=name, op=op, n=n, d=d, dtype=str(dtype).removeprefix("torch."),
                                 implementation=implementation, median_ms=median, p20_ms=low, p80_ms=high, error=error))
                print(f"{op:20s} n={n:6d} d={d:5d} {implementation:9s} {median:10.3f} ms {error}", flush=True)
        write(rows, path)  # after every size: a run cut short keeps what it measured
    print(f"wrote {path}")
    plot(rows, args.out / f"kernels_{name}.png")
    print("measured crossovers, for tokcompress/ops/dispatch.py MIN_KERNEL_SIZE:", crossovers(rows))
    return 0


def write(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def crossovers(rows: list[dict]) -> dict[str, float]:
    """Per op, the smallest N from which the kernel beats the reference at every measured N and D (inf: never)."""
    result = {}
    for op in dict.fromkeys(r["op"] for r in rows):
        timings = {(r["n"], r["d"], r["implementation"]): float(r["median_ms"]) for r in rows if r["op"] == op}
        sizes = sorted({n for n, _, _ in timings})
        wins = {
            n: all(timings[n, d, "kernel"] < timings[n, d, "reference"] for m, d, _ in timings if m == n)
            for n in sizes
        }
        losing = [n for n in sizes if not wins[n]]
        result[op] = float("inf") if losing and losing[-1] == sizes[-1] else next(
            (n for n in sizes if n > max(losing, default=-1)), float("inf"))
    return result


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    ops = sorted({r["op"] for r in rows})
    dims = sorted({r["d"] for r in rows})
    figure, axes = plt.subplots(len(dims), len(ops), figsize=(4 * len(ops), 3.2 * len(dims)), squeeze=False)
    for i, d in enumerate(dims):
        for j, op in enumerate(ops):
            axis = axes[i][j]
            for implementation in ("kernel", "reference", "naive"):
                points = sorted(
                    (r["n"], r["median_ms"]) for r in rows
                    if r["op"] == op and r["d"] == d and r["implementation"] == implementation
                )
                axis.plot(*zip(*points), marker="o", label=implementation)
            axis.set(title=f"{op}, D={d}", xlabel="tokens N", ylabel="ms (median)", xscale="log", yscale="log")
            axis.legend(fontsize=7)
    figure.suptitle(f"tokcompress kernels on {rows[0]['device']} ({rows[0]['dtype']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
