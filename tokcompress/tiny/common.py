"""What every tiny model is built from: a small decoder over the byte vocabulary, a small ViT, seeded weights."""

from __future__ import annotations

import torch

from ..tiny_inputs import PAD, VOCAB


def text_config(num_layers: int, hidden_size: int, **extra) -> dict:
    """A 4-head (2 KV heads) decoder over the byte vocabulary."""
    return dict(
        num_hidden_layers=num_layers, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=8192, pad_token_id=PAD, bos_token_id=None,
        eos_token_id=None, **extra,
    )


def vit_config(model_type: str, image_size: int, **extra) -> dict:
    """A 2-layer, 2-head ViT of width 32 with 14-pixel patches."""
    return dict(
        model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        image_size=image_size, patch_size=14, **extra,
    )


def build(model_cls, config, attn_implementation, seed):
    """The model of `config` with weights drawn from `seed`, greedy-generating without an end token, in eval mode."""
    torch.manual_seed(seed)
    model = model_cls._from_config(config, attn_implementation=attn_implementation)
    model.generation_config.pad_token_id = PAD
    model.generation_config.eos_token_id = None
    return model.eval()
