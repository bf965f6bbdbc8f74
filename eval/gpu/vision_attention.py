"""Qwen2.5-VL-7B's vision tower (random weights, bf16): stock sdpa window loop vs one packed varlen call,
EarlyTom folding frame units inside the packed tower, and the fused kernel with proportional attention's key
bias (an extra head dimension) against one sdpa call per window.

GPU only. Prints and writes eval/results/vision_attention_<gpu>.csv: median ms of each path over the same
64-frame clip shape, and the largest output difference (the math is the same; bf16 rounding differs). On a
still clip (every temporal patch the same) the folded tower must give the unfolded packed tower's output.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).parents[1]))
from shapes import named_model  # noqa: E402

import tokcompress  # noqa: E402
from tokcompress.methods import EarlyTom  # noqa: E402
from tokcompress.ops.varlen import segment_attention, varlen_attention  # noqa: E402


def still_prompt(model, pixels: torch.Tensor, grid: torch.Tensor) -> dict:
    """A prompt holding the video's placeholders only, so that a forward reads the folded tower's stats."""
    config = model.config
    tokens = int(grid.prod()) // 4
    ids = torch.tensor([[config.vision_start_token_id, *[config.video_token_id] * tokens, config.vision_end_token_id]],
                       device=pixels.device)
    return dict(input_ids=ids, pixel_values_videos=pixels, video_grid_thw=grid,
                mm_token_type_ids=(ids == config.video_token_id).long() * 2)


def key_bias_check(rows: int = 32 * 1024, window: int = 64, heads: int = 16, width: int = 80) -> dict:
    """The tower's attention shape after vid-TLDR folded a quarter of each window: fused with the bias vs without
    it (the widened heads' cost) and the largest difference to per-window sdpa with the bias as a mask."""
    generator = torch.Generator("cuda").manual_seed(0)
    query, key, value = (torch.randn(rows, heads, width, device="cuda", dtype=torch.bfloat16, generator=generator)
                         for _ in range(3))
    bounds = torch.arange(0, rows + 1, window, device="cuda")
    key_bias = torch.rand(rows, device="cuda", generator=generator).mul(3).exp().log1p()  # log(1 + sizes up to e³)
    scale = width**-0.5
    biased = varlen_attention(query, key, value, bounds, window, scale, key_bias)
    reference = segment_attention(query, key, value, bounds, scale, key_bias)
    fused = lambda bias=None: varlen_attention(query, key, value, bounds, window, scale, bias)  # noqa: E731
    return dict(
        bias_fused_ms=triton.testing.do_bench(lambda: fused(key_bias)),
        no_bias_fused_ms=triton.testing.do_bench(fused),
        bias_max_abs_diff=float((biased.float() - reference.float()).abs().max()),
    )


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
        pixels = pixels.view(frames // 2, -1, pixels.shape[-1])[:1].expand(frames // 2, -1, -1).reshape(pixels.shape)
        with tokcompress.compress(model, "none"):
            still = encode()
        with tokcompress.compress(model, EarlyTom(ratio=0.3)) as handle:
            folded, folded_ms = encode(), triton.testing.do_bench(encode)
            model(**still_prompt(model, pixels, grid))  # the prefill reads what the tower folded
            encoder_ratio = handle.stats.samples[0].encoder_ratio
    difference = float((packed.float() - stock.float()).abs().max())
    rows.append(dict(
        gpu=torch.cuda.get_device_name(), frames=frames, size=size, stock_ms=stock_ms, packed_ms=packed_ms,
        speedup=stock_ms / packed_ms, max_abs_diff=difference, output_abs_max=float(stock.float().abs().max()),
        still_folded_ms=folded_ms, still_encoder_ratio=encoder_ratio,
        still_folded_max_abs_diff=float((folded.float() - still.float()).abs().max()), **key_bias_check(),
    ))
    print(rows[0])
    out.mkdir(parents=True, exist_ok=True)
    with (out / f"vision_attention_{torch.cuda.get_device_name().replace(' ', '-')}.csv").open(
        "w", newline=""
    ) as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, nargs="?", default=Path(__file__).parents[1] / "results")
    arguments = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("a GPU only measurement (no CUDA device here)")
    raise SystemExit(main(arguments.out))
