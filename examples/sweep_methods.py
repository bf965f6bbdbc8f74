"""Sweep methods and ratios on one clip: visual tokens kept against prefill latency, as a plot and a table.

    python examples/sweep_methods.py --out sweep.png
"""

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import tokcompress  # noqa: E402
from tokcompress import tiny  # noqa: E402
from tokcompress.timing import median_ms  # noqa: E402
from tokcompress.video import read_frames, sample_clip  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--methods", nargs="+", default=["uniform", "tome", "fastv", "framefusion", "framededup"])
parser.add_argument("--ratios", type=float, nargs="+", default=[0.15, 0.3, 0.5])
parser.add_argument("--frames", type=int, default=16)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--out", default="sweep.png")
args = parser.parse_args()

model = tiny.tiny_llava_onevision(num_layers=8, hidden_size=256, image_size=196)  # or any checkpoint
inputs = tiny.video_inputs(model, read_frames(sample_clip("bikes.mp4"), args.frames, size=(196, 196)), "What?")
torch.set_grad_enabled(False)
baseline = median_ms(lambda: model(**inputs), args.repeats, "cpu")
print(f"{'method':12s} {'ratio':>5s} {'tokens/layer':>12s} {'prefill ms':>10s} {'speed-up':>8s}")
print(f"{'none':12s} {1.0:5.2f} {'all':>12s} {baseline:10.1f} {1.0:7.2f}x")
figure, axis = plt.subplots(figsize=(6, 4))
for method in args.methods:
    points = []
    for ratio in args.ratios:
        with tokcompress.compress(model, method, ratio=ratio) as handle:
            prefill = median_ms(lambda: model(**inputs), args.repeats, "cpu")
            tokens = handle.stats.achieved_ratio * handle.stats.visual_in
        points.append((tokens, prefill))
        print(f"{method:12s} {ratio:5.2f} {tokens:12.0f} {prefill:10.1f} {baseline / prefill:7.2f}x")
    axis.plot(*zip(*points), marker="o", label=method)
axis.axhline(baseline, color="gray", linestyle=":", label="none")
axis.set(xlabel="visual tokens per LLM layer (mean)", ylabel="prefill ms (median)", title="tokens vs latency")
axis.legend(fontsize=7)
figure.tight_layout()
figure.savefig(args.out, dpi=110)
print(f"wrote {args.out}")
