"""Compose an encoder-side method with an LLM-side one: frames that repeat are never encoded, then FrameFusion
merges and prunes inside the LLM - one layer-averaged budget for both.

    python examples/compose_methods.py
"""

import argparse

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.methods import FrameDedup, FrameFusion
from tokcompress.video import read_frames, sample_clip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--video", default=str(sample_clip("carphone_pristine.mp4")))  # a mostly static clip
parser.add_argument("--frames", type=int, default=16)
args = parser.parse_args()

model = tiny.tiny_llava_onevision()  # any supported checkpoint works the same (see answer_video.py)
inputs = tiny.video_inputs(model, read_frames(args.video, args.frames, size=(84, 84)), "Who is speaking?")

methods = [FrameDedup(threshold=0.9), FrameFusion(ratio=0.3)]  # or tokcompress.methods.Compose(methods=...)
with tokcompress.compress(model, methods) as handle, torch.no_grad():
    model.generate(**inputs, max_new_tokens=8, do_sample=False)
    stats = handle.stats
    (sample,) = stats.samples
    print(stats)
    print(f"the vision tower encoded {sample.encoder_ratio:.0%} of the frames in {stats.encoder_seconds * 1e3:.1f} ms;")
    print(f"the LLM's layers saw {sample.achieved_ratio:.0%} of the {sample.visual_in} visual tokens on average")
