"""A tiny LLaVA-OneVision on disk, with a byte tokenizer and a torchvision-free processor.

What the examples and the lmms-eval tests load on a CPU machine: HF's video processors need torchvision,
which has no CPU build there, so `FramesProcessor` stands in for LlavaOnevisionProcessor's video path
(decord frames → the same resize / normalise, the same video-token expansion). On a GPU machine a real
checkpoint comes with its real processor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import BatchFeature, PreTrainedTokenizerFast

from . import tiny
from .video import llava_onevision_pixels, read_frames

SPECIALS = {"<pad>": tiny.PAD, "<image>": tiny.IMAGE, "<video>": tiny.VIDEO, "<|im_end|>": 261}
FRAMES = 8


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer matching tokcompress.tiny's vocabulary (ids 0-255 bytes, specials from 256)."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = dict(zip(range(256), sorted(alphabet, key=_byte_of)))
    tokenizer = Tokenizer(models.BPE(vocab={byte_to_char[b]: b for b in range(256)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIALS))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    return fast


def _byte_of(char: str) -> int:
    """Inverse of the GPT-2 bytes-to-unicode table that ByteLevel uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    return table[char]


class FramesProcessor:
    """Torchvision-free stand-in for LlavaOnevisionProcessor's video path (see the module docstring)."""

    def __init__(self, tokenizer, config):
        self.tokenizer = tokenizer
        self.vision = config.vision_config

    @classmethod
    def from_pretrained(cls, path, **kwargs) -> FramesProcessor:
        return cls(PreTrainedTokenizerFast.from_pretrained(path), tiny.tiny_llava_onevision().config)

    def __call__(self, text=None, videos=None, images=None, return_tensors="pt", **kwargs):
        clips = [read_frames(v, FRAMES) if isinstance(v, (str, Path)) else torch.as_tensor(v) for v in videos]
        side = -(-self.vision.image_size // self.vision.patch_size // 2)
        for clip in clips:
            text = text.replace("<video>", "\0" * (clip.shape[0] * side * side + 1), 1)
        encoded = self.tokenizer(text.replace("\0", "<video>"), return_tensors=return_tensors)
        pixels = torch.cat([llava_onevision_pixels(clip, self.vision.image_size) for clip in clips])
        return BatchFeature({**encoded, "pixel_values_videos": pixels})

    def apply_chat_template(self, conversation, add_generation_prompt=True, **kwargs) -> str:
        """A video part becomes `<video>`, text parts stay: what HF processors do with their own templates."""
        def content(part):
            return "<video>" if part.get("type") == "video" else part.get("text", "")

        messages = [
            {
                "role": m["role"],
                "content": (
                    "".join(content(p) for p in m["content"]) if isinstance(m["content"], list) else m["content"]
                ),
            }
            for m in conversation
        ]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


def save_checkpoint(folder: str | Path) -> Path:
    """A tiny LLaVA-OneVision (random weights) and its byte tokenizer, saved as a checkpoint folder."""
    folder = Path(folder)
    tiny.tiny_llava_onevision().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder
