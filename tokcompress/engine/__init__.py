"""Applies reductions to a running Hugging Face forward pass; the one place that knows transformers' decoder mechanics.

- `hooks`: the `Engine`, its hooks on the model, and which stage each call belongs to;
- `groups`: which tokens a run of decoder layers sees, and the slot gathering that keeps them consistent;
- `prefill`: pre-LLM and in-LLM reductions;
- `decode`: decoding steps and decode-time visual KV selection;
- `compat`: the compatibility seam, the only code that knows transformers' version-specific names.
"""

from .hooks import Engine

__all__ = ["Engine"]
