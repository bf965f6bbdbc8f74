"""Applies reductions to a running Hugging Face forward pass; the one place that knows transformers' decoder mechanics.

- `hooks`: the `Engine`, its hooks on the model, and which stage each call belongs to;
- `prompts`: a prompt's prefill, started and finished; `continuation`: calls that continue a cache;
  `stand_ins`: what a patch does in place of generate's helpers; `training`: the labels of a training forward;
- `encoder`, `folding`, `token_merging`, `rows`: the vision tower (frames left out, tokens folded inside it);
- `groups`: which tokens a run of decoder layers sees, and the slot gathering that keeps them consistent;
  `state`: a generation's state, kept on its KV cache;
- `prefill`: pre-LLM and in-LLM reductions;
- `decode`: decoding steps and decode-time visual KV selection;
- `compat`: the compatibility seam, the only code that knows transformers' version-specific names.
"""

from .hooks import Engine

__all__ = ["Engine"]
