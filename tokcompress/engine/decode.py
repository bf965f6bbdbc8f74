"""Decoding steps: keep every group's padding mask and positions in step with the cache, and select visual KV.

Each group's 2-D padding mask grows with the generated tokens, so every layer's mask matches its own cache;
positions continue from the last original position the LLM saw. Decode-time methods make a layer attend to
a selected subset of its visual KV entries through a stand-in cache that gathers them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from ..methods.base import DecodeSample, Method
from ..ops import few_query_attention
from . import compat
from .groups import TokenGroup, llm_attention_mask, rotary_rows
from .state import GenerationState

if TYPE_CHECKING:
    from ..adapters.base import Adapter


def start_decode_step(
    state: GenerationState, kwargs: dict[str, Any], adapter: Adapter, blocks: torch.Tensor | None = None,
    padding: torch.Tensor | None = None,
) -> None:
    """Extend every group's padding mask by this step's tokens and continue the original positions. `blocks`: the
    vision blocks of the multimodal model's call (`Adapter.attention_blocks`), where a continuation brings images
    or videos of its own: their tokens attend to each other both ways, as the stock prefill of that chunk does.
    `padding`: (B, L) the new tokens' columns of the multimodal call's padding mask, where it had one."""
    embeds = kwargs["inputs_embeds"]
    batch, length = embeds.shape[:2]
    device = embeds.device
    if padding is not None and padding.shape == (batch, length):
        new_columns = padding.to(device)
    else:
        new_columns = new_token_columns(kwargs.get("attention_mask"), batch, length, device)
    chunk = None
    if blocks is not None:  # the call's last `length` tokens (tokens it does not type: no block)
        chunk = torch.nn.functional.pad(blocks[:, -length:], (length - min(length, blocks.shape[1]), 0), value=-1)
        chunk = chunk.to(device) if bool((chunk >= 0).any()) else None
    for group in state.groups:
        group.attention_mask = torch.cat([group.attention_mask, new_columns], dim=1)
        group.step_masks = {}
        group.kv_selection = group.kv_chosen = None
        cached = group.attention_mask.shape[1] - length  # cached slots are in no block: only the chunk attends back
        group.step_blocks = None if chunk is None else torch.nn.functional.pad(chunk, (cached, 0), value=-1)
    first = state.groups[0]
    kwargs["attention_mask"] = llm_attention_mask(adapter, first, embeds, compat.cache_of(kwargs), first.step_blocks)
    if kwargs.get("position_ids") is None:
        kwargs["position_ids"] = next_positions(state.last_positions, new_columns)
    state.last_positions = kwargs["position_ids"][..., -1:]
    if state.position_shift is not None:
        kwargs["position_ids"] = kwargs["position_ids"] - state.position_shift


def skip_tokens_already_cached(
    state: GenerationState, kwargs: dict[str, Any], conversation: int | None, token_ids: tuple[str, ...] = ()
) -> None:
    """Trim a continuation (its per-token inputs, the adapter's `token_ids` too) to the tokens the generation has
    not seen yet.

    `generate` sizes what it re-feeds from `cache.get_seq_length()`, which is the compressed length, so a
    multi-turn call (the whole conversation plus the cache of the earlier turns) would feed the tail of the
    earlier turns again. What was seen is told by the 2-D padding mask (it covers the whole conversation),
    where generate dropped an all-ones mask by the text positions it hands over, and where it hands over neither
    (Ovis2.5) by the `conversation` length it held for this step (None: not a call of generate's).
    """
    fed = next(kwargs[name].shape[1] for name in ("input_ids", "inputs_embeds") if kwargs.get(name) is not None)
    if fed <= 1:  # a plain decoding step: nothing to trim (and no position to read back from the device)
        return
    seen = _tokens_already_cached(state, kwargs, fed, conversation)
    if not 0 < seen < fed:
        return
    for name in (*compat.PER_TOKEN_INPUTS, *token_ids):
        if isinstance(kwargs.get(name), torch.Tensor):
            sequence_dim = 1 if name == "inputs_embeds" else -1
            kwargs[name] = kwargs[name].narrow(sequence_dim, seen, kwargs[name].shape[sequence_dim] - seen)


def _tokens_already_cached(state: GenerationState, kwargs: dict[str, Any], fed: int, conversation: int | None) -> int:
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return fed - (mask.shape[1] - state.full_length)
    seen = compat.positions_already_seen(state.last_positions, kwargs.get("position_ids"))
    if seen is None and conversation is not None:  # generate fed the conversation's last `fed` tokens
        seen = fed - (conversation - state.full_length)
    return 0 if seen is None else seen  # a hand-written step feeds new tokens only


def new_token_columns(mask: Any, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """(B, length) the padding mask's columns of a call's `length` new tokens (1: a token, 0: padding; all ones
    where the call has no 2-D mask)."""
    if isinstance(mask, torch.Tensor) and mask.ndim == 2:
        return mask[:, -length:].long().to(device)
    return torch.ones(batch, length, dtype=torch.long, device=device)


def next_positions(last: torch.Tensor, new_columns: torch.Tensor) -> torch.Tensor:
    """Position ids of a call's new tokens after `last` (..., B, 1), in any layout (1-D or M-RoPE rows): each token
    one past the one before, padding (0 in `new_columns`, (B, L): a left-padded next question) adding none."""
    return last + new_columns.cumsum(-1).to(last.device)


def record_decode_reads(state: GenerationState, adapter: Adapter, selects: Callable[[int], bool]) -> None:
    """A decoding step's stats: per row, the visual KV entries its attention read and those cached, over the layers
    that cache every token (their own, or the keys they share; `selects(layer)`: whether its attention reads the
    step's selection) - a sliding-window layer's cache holds the last tokens only, a recurrent layer's none."""
    rows = len(state.groups[0].visual_slots)
    reads, cached = [0] * rows, [0] * rows
    for index in range(len(adapter.layers)):
        source = adapter.kv_source(index)
        if source not in adapter.kv_layers:
            continue
        group = state.group_of(source)
        chosen = group.kv_chosen if selects(source) else None
        for b, slots in enumerate(group.visual_slots):
            cached[b] += len(slots)
            reads[b] += len(slots) if chosen is None else chosen[b]
    state.stats.record_decode_read(reads, cached)


def select_visual_kv(
    method: Method, adapter: Adapter, state: GenerationState, layer_index: int, layer, hidden, group: TokenGroup,
    kwargs,
) -> None:
    """Make this layer's attention read only the selected visual KV entries (plus all others); how many each row
    chose is noted on the group (`kv_chosen`) for the stats."""
    cache = compat.cache_of(kwargs)
    if cache is None:
        return
    with state.stats.timed(hidden.device, decoding=True):
        if group.kv_selection is None:  # once per step and group, at its first selecting layer
            keys = adapter.cached_keys_values(cache, layer_index)[0]  # (B, Hkv, K, d), before this step's update
            selection = _decode_selection(method, adapter, state, layer, hidden, keys, group, kwargs)
            slots, padded, group.kv_chosen = selection
            implementation = compat.attention_implementation(adapter.language_model.config)
            valid = slots >= 0 if padded else None
            mask = select_key_mask(kwargs.get("attention_mask"), slots.clamp_min(0), valid, implementation)
            group.kv_selection = (slots.clamp_min(0), mask)
        index, mask = group.kv_selection
        compat.replace_cache(kwargs, compat.SelectedKV(cache, index))
        kwargs["attention_mask"] = mask


def _decode_selection(
    method, adapter, state, layer, hidden, keys, group: TokenGroup, kwargs
) -> tuple[torch.Tensor, bool, list[int]]:
    """(B, K') cache slots this step reads - every non-visual entry, the method's visual choice, the new entries,
    left-padded with -1 -, whether any row is padded, and how many visual entries each row chose. One host sync a
    step, for K'."""
    batch, past = keys.shape[0], keys.shape[2]
    steps = hidden.shape[1]
    tables = kwargs.get("position_embeddings")  # None: a layer without RoPE
    reads, chosen_counts = [], []
    for b in range(batch):
        valid = group.attention_mask[b, :past].bool()
        slots = group.visual_slots[b]
        queries = adapter.project_queries(layer, hidden[b], *rotary_rows(tables, b))
        real = group.attention_mask[b, past : past + steps].float()  # a next question's padding does not choose
        attention = real @ few_query_attention(queries, keys[b], valid[None, :]) / real.sum().clamp_min(1)
        chosen = slots[method.select_decode_kv(DecodeSample(attention[slots], state.decode_memories[b]))]
        read = valid.clone()
        read[slots] = False
        read[chosen] = True
        reads.append(read)
        chosen_counts.append(len(chosen))
    read = torch.stack(reads)  # (B, past): the slots each row reads, in order
    counts = read.sum(dim=1)
    width, fewest = torch.stack([counts.max(), counts.min()]).tolist()
    last = torch.sort(read.to(torch.int8), dim=1, stable=True).indices[:, past - width :]  # the read ones last
    slots = torch.where(read.gather(1, last), last, -1)
    new = torch.arange(past, past + steps, device=keys.device).expand(batch, steps)
    return torch.cat([slots, new], dim=1), fewest < width, chosen_counts


def select_key_mask(mask, index: torch.Tensor, valid: torch.Tensor | None, attn_implementation: str):
    """The layer's attention mask restricted to the key columns `index` (invalid columns masked out; None:
    every column valid)."""
    if mask is None:
        if valid is None:
            return None
        if attn_implementation == "eager":
            blocked = torch.finfo(torch.float32).min
            return torch.where(valid, 0.0, blocked)[:, None, None, :]
        if "flash" in attn_implementation:
            return valid.long()
        return valid[:, None, None, :]
    columns = index.view(index.shape[0], *([1] * (mask.ndim - 2)), index.shape[1])
    columns = columns.expand(*mask.shape[:-1], index.shape[1])
    selected = mask.gather(-1, columns)
    if valid is None:
        return selected
    keep = valid.view_as(index).view(index.shape[0], *([1] * (mask.ndim - 2)), index.shape[1])
    if selected.dtype == torch.bool:
        return selected & keep
    if selected.is_floating_point():
        return selected.masked_fill(~keep, torch.finfo(selected.dtype).min)
    return selected * keep
