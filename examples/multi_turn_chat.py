"""A multi-turn chat that keeps its compressed cache: turn two passes turn one's cache back to generate().

Only the new turn's tokens are fed; the video is not encoded again and stays compressed.
`python examples/multi_turn_chat.py`
"""

import torch

import tokcompress
from tokcompress import tiny
from tokcompress.video import read_frames, sample_clip

model = tiny.tiny_llava_onevision()
inputs = tiny.video_inputs(model, read_frames(sample_clip("bikes.mp4"), 8, size=(84, 84)), "What moves?")

with tokcompress.compress(model, "fastv", ratio=0.3) as handle, torch.no_grad():
    first = model.generate(**inputs, max_new_tokens=8, do_sample=False, return_dict_in_generate=True)
    print("turn 1:", tiny.decode(first.sequences[0, inputs["input_ids"].shape[1] :].tolist()))
    print("       ", handle.stats, f"- {handle.stats.decode_steps} decoding steps")

    cache = "cache" if "cache" in first else "past_key_values"  # its name from transformers 5.24 on, and before
    follow_up = torch.tensor([tiny.text_ids("\nuser: and then?\nassistant:")])
    conversation = torch.cat([first.sequences, follow_up], dim=1)
    second = model.generate(
        input_ids=conversation, attention_mask=torch.ones_like(conversation), max_new_tokens=8, do_sample=False,
        return_dict_in_generate=True, **{cache: first[cache]},
    )
    print("turn 2:", tiny.decode(second.sequences[0, conversation.shape[1] :].tolist()))
    print("       ", handle.stats, f"- {handle.stats.decode_steps} decoding steps")  # one generation: they go on
