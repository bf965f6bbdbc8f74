"""Qwen2.5-VL-7B's vision tower (random weights, bf16): stock sdpa window loop vs one packed varlen call.

GPU only. Prints and writes eval/results/vision_attention_<gpu>.csv: median ms of each path over the same
64-frame clip shape, and the largest output difference (the math is the same; bf16 rounding differs).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench_latency import named_model  # noqa: E402

import tokcompress  # noqa: E402


def main(out: Path = Path(__file__).parents[1] / "results") -> int:
    model = named_model("qwen2.5-vl-7b", torch.bfloat16, "cuda")
    frames, size = 64, 448
    grid = torch.tensor([[frames // 2, size // 14, size // 14]], device="cuda")
    pixels = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, device="cuda", dtype=torch.bfloat16)
    rows = []
    with torch.no_grad():
        encode = lambda: torch.cat(model.model.get_video_features(pixels, grid, return_dict=True).pooler_output)  # noqa: E731
        stock, stock_ms = encode(), triton.testing.do_bench(encode)
        with tokcompress.compress(model, "none"):
            packed, packed_ms = encode(), triton.testing.do_bench(encode)
    difference = float((packed.float() - stock.float()).abs().max())
    rows.append(dict(gpu=torch.cuda.get_device_name(), frames=frames, size=size, stock_ms=stock_ms, packed_ms=packed_ms,
                     speedup=stock_ms / packed_ms, max_abs_diff=difference, output_abs_max=float(stock.float().abs().max())))
    print(rows[0])
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"vision_attention_{torch.cuda.get_device_name().replace(' ', '-')}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parents[1] / "results"))
