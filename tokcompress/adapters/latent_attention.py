"""DeepSeek's multi-head latent attention (MLA), scored as its layers compute it: queries through a low-rank
projection, keys and values expanded from a per-token latent - which is what the cache holds - and RoPE on a part of
each query / key head, in interleaved pairs. Kimi K2.5's decoder (DeepSeek-V3's) and dots3's use it; dots3 scales the
normed latents and norms the RoPE'd key part first, which the layer's modules say (`q_lora_scale`, `kv_lora_scale`,
`k_rope_only_layernorm`)."""

from __future__ import annotations

import torch
from torch import nn

from ..engine import compat
from .base import rotate


def rotate_interleaved(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """DeepSeek's interleaved RoPE: pairs (x0, x1), (x2, x3), ... each turned by one frequency, the results laid out
    evens then odds (as transformers computes it); `cos` / `sin` hold each frequency twice, as rotate-half's do."""
    half = cos.shape[-1] // 2
    cos, sin = cos[..., :half], sin[..., :half]
    evens, odds = states[..., 0::2], states[..., 1::2]
    return torch.cat([evens * cos - odds * sin, odds * cos + evens * sin], dim=-1)


class LatentAttention:
    """The `Adapter` methods that read an MLA decoder layer (mixed in before the family's adapter)."""

    def project_queries(self, layer, hidden, cos, sin):
        attention = layer.self_attn
        normed = layer.input_layernorm(hidden)
        if attention.q_lora_rank is None:
            states = attention.q_proj(normed)
        else:
            latent = attention.q_a_layernorm(attention.q_a_proj(normed)) * getattr(attention, "q_lora_scale", 1.0)
            states = attention.q_b_proj(latent)
        states = states.view(len(hidden), -1, attention.qk_head_dim).transpose(0, 1)  # (heads, n, d)
        passed, turned = states.split([attention.qk_nope_head_dim, attention.qk_rope_head_dim], dim=-1)
        queries = torch.cat([passed, self._rope(attention, turned, cos, sin)], dim=-1)
        return queries * (attention.scaling * attention.qk_head_dim**0.5)  # its scale, against the scores' 1/√d

    def project_keys(self, layer, hidden, cos, sin):
        return self._keys_values(layer, hidden, cos, sin)[0]

    def project_values(self, layer, hidden):
        return self._keys_values(layer, hidden, None, None)[1]

    def _keys_values(self, layer, hidden, cos, sin) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads, n, d) keys (RoPE'd where `cos` is given) and values, expanded from the latent as the layer does."""
        attention = layer.self_attn
        latent = attention.kv_a_proj_with_mqa(layer.input_layernorm(hidden))
        latent, turned = latent.split([attention.kv_lora_rank, attention.qk_rope_head_dim], dim=-1)
        latent = attention.kv_a_layernorm(latent) * getattr(attention, "kv_lora_scale", 1.0)
        turned = self._rope(attention, getattr(attention, "k_rope_only_layernorm", nn.Identity())(turned), cos, sin)
        keys, values = attention.expand_kv(latent[None, None], turned[None, None])
        return keys[0], values[0]

    @staticmethod
    def _rope(attention, states: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None) -> torch.Tensor:
        if cos is None:
            return states
        interleaved = getattr(attention.config, "rope_interleave", True)  # dots3's config has no switch: always
        return (rotate_interleaved if interleaved else rotate)(states, cos, sin)

    def cached_keys_values(self, cache, layer_index):
        """Expanded from the latents and RoPE'd key parts the cache holds (as its keys and values)."""
        return self.layers[layer_index].self_attn.expand_kv(*compat.cached_entries(cache, layer_index))
