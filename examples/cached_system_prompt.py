"""A system prompt encoded once, its cache reused for every video question: each video is compressed as if the
whole conversation had been sent in one prompt (the same tokens kept, the same answer), and the system prompt is
not run again.

`python examples/cached_system_prompt.py`
"""

import copy

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.video import read_frames, sample_clip

model = tiny.tiny_llava_onevision()
system = torch.tensor([tiny.text_ids("system: answer in one short sentence.\n")])

with tokcompress.compress(model, "fastv", ratio=0.3) as handle, torch.no_grad():
    prefix = model(input_ids=system, use_cache=True)
    cache = "cache" if "cache" in prefix else "past_key_values"  # its name from transformers 5.24 on, and before
    for clip in ("bikes.mp4", "carphone_pristine.mp4"):
        question = tiny.video_inputs(model, read_frames(sample_clip(clip), 8, size=(84, 84)), "What moves?")
        ids = torch.cat([system, question["input_ids"]], dim=1)  # the whole conversation; its start is cached
        answer = model.generate(
            **{**question, "input_ids": ids, "attention_mask": torch.ones_like(ids)},
            max_new_tokens=8, do_sample=False, **{cache: copy.deepcopy(prefix[cache])},  # a copy: reused next time
        )
        print(f"{clip}:", tiny.decode(answer[0, ids.shape[1] :].tolist()))
        print("       ", handle.stats)
