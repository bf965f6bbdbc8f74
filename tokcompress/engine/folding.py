"""Folding inside the vision tower, for one encoder call: the engine's hooks on the tower's layers hand their
outputs to the folding of the call in progress on this thread, which merges frames (`FrameMerging`) or tokens
inside each frame (`TokenMerging`) so that the later layers encode fewer, and expands the tower's output back
to the shape the model expects, each frame or token reading what it folded into."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from ..methods.base import Method
from ..ops import attention_row_sharpness, weighted_merge

if TYPE_CHECKING:
    from ..adapters.base import Adapter

_ACTIVE = threading.local()  # the folding of the encoder call in progress on this thread


class _Folding:
    """Entered around one encoder call on one thread; `merged` once anything folded."""

    def __init__(self, method: Method, adapter: Adapter):
        layers, self.depth = adapter.tower_layers()
        self.method, self.adapter, self.num_layers = method, adapter, len(layers)
        self.merge_layers = set(method.encoder_merge_layers(self.depth))
        self.merged = False

    def __enter__(self):
        _ACTIVE.folding = self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.folding = None

    def before_attention(self, index: int, module, kwargs: dict) -> dict | None:
        """The call kwargs of tower layer `index`'s attention, changed, or None to leave them."""
        return None

    def after_layer(self, index: int, output):
        """Tower layer `index`'s output with what folds after it folded, or None to leave it."""
        raise NotImplementedError

    def expand_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """One tensor of the tower's output back in the full shape (unchanged if it is not a folded one)."""
        raise NotImplementedError

    def expand(self, output):
        """The tower's output, every tensor in it (the hidden states of any layer) back in the full shape."""

        def expand(value):
            if isinstance(value, torch.Tensor):
                return self.expand_tensor(value)
            return tuple(expand(v) for v in value) if isinstance(value, tuple) else value

        for key in list(output.keys()):
            output[key] = expand(output[key])
        return output


class FrameMerging(_Folding):
    """Folds each video's frames together after the method's merge layers and expands the tower's output back
    to one row per frame the call encodes.

    The tower's batch holds the frames of every video in order (`frames[v]`: the units of video v it encodes).
    After a merge, row r of the batch stands for the frames that folded into it; `stages` maps each encoded
    frame to its row for every batch size the tower passed through (-1: dropped), which is how the output's
    tensors - the hidden states of any layer - are expanded."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor]):
        super().__init__(method, adapter)
        self.standing = [f.clone() for f in frames]  # per video, the units whose rows are still in the tower
        self.initial = [len(f) for f in frames]
        self.sizes = [torch.ones(len(f)) for f in frames]
        total = sum(len(f) for f in frames)
        self.stages = {total: torch.arange(total)}  # batch size -> (encoded frames,) its row, -1 if dropped
        self.row_of = torch.arange(total)
        self.counts: list[tuple[int, list[int]]] = []  # (layer, frames per video after it) per merge

    def after_layer(self, index: int, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        rows, sizes, standing, slots, start = [], [], [], [], 0
        for video, frames in enumerate(self.standing):
            block, video_sizes = hidden[start : start + len(frames)], self.sizes[video]
            start += len(frames)
            reduction = self.method.reduce_in_encoder(block, video_sizes.to(block.device), index, self.depth)
            if reduction is None or len(reduction.keep) == len(frames):
                merge_into = torch.arange(len(frames))
            else:
                merge_into = reduction.assignment(len(frames))
                merged, video_sizes = weighted_merge(block.flatten(1), video_sizes.to(block.device), merge_into,
                                                     len(reduction.keep))
                block, video_sizes = merged.view(-1, *block.shape[1:]).to(block.dtype), video_sizes.cpu()
                frames, merge_into = frames[reduction.keep.cpu()], merge_into.cpu()
            slots.append(torch.where(merge_into >= 0, merge_into + sum(len(r) for r in rows), -1))
            rows.append(block)
            sizes.append(video_sizes)
            standing.append(frames)
        remaining = sum(len(r) for r in rows)
        if remaining == hidden.shape[0]:
            return None
        slots = torch.cat(slots)
        self.row_of = torch.where(self.row_of >= 0, slots[self.row_of.clamp_min(0)], -1)
        self.stages[remaining] = self.row_of.clone()
        self.standing, self.sizes, self.merged = standing, sizes, True
        self.counts.append((index, [len(f) for f in standing]))
        hidden = torch.cat(rows)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def expand_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor with one row per batch entry at some stage gets one row per encoded frame back: the row of
        the frame it folded into (zeros for a dropped one)."""
        if not value.dim() or value.shape[0] not in self.stages or value.shape[0] == len(self.row_of):
            return value
        row_of = self.stages[value.shape[0]].to(value.device)
        return value[row_of.clamp_min(0)].masked_fill((row_of < 0).view(-1, *[1] * (value.dim() - 1)), 0)

    def layer_share(self, units: list[int]) -> list[float]:
        """Per video, the share of its frame-layers the tower computed (every layer counts, merging or not)."""
        return [
            _rows_through_layers(self.initial[video], [(layer, c[video]) for layer, c in self.counts], self.num_layers)
            / (self.num_layers * max(count, 1))
            for video, count in enumerate(units)
        ]


class TokenMerging(_Folding):
    """Inside every frame (the tower's batch rows), tokens fold together after the method's merge layers,
    size-tracked: every later layer adds log(size) to each key's attention logits (proportional attention, a
    float mask), and the tower's output is expanded back to every token of the grid, each reading the token it
    folded into - so the model's own feature selection and pooling run unchanged."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor]):
        super().__init__(method, adapter)
        self.standing = frames  # per video, the units the call encodes: every one stands
        self.rows, self.fixed = sum(len(f) for f in frames), int(adapter.tower_has_cls)  # a leading CLS never folds
        self.sizes: torch.Tensor | None = None  # (rows, tokens) once something folded
        self.key_bias: torch.Tensor | None = None  # (rows, 1, 1, tokens) log(size), what later layers' keys add
        self.token_of: torch.Tensor | None = None  # (rows, original tokens): the current token of each
        self.stages: dict[int, torch.Tensor] = {}  # tokens per frame -> token_of at that stage
        self.counts: list[tuple[int, int]] = []  # (layer, tokens per frame after it) per merge
        self.attention_input = None

    def before_attention(self, index, module, kwargs):
        if index in self.merge_layers:
            self.attention_input = (module, kwargs["hidden_states"])
        if self.key_bias is None:
            return None
        mask = kwargs.get("attention_mask")
        return {**kwargs, "attention_mask": self.key_bias if mask is None else mask + self.key_bias}

    def after_layer(self, index, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output  # (rows, tokens, D)
        rows, count = hidden.shape[:2]
        module, normed = self.attention_input
        with torch.no_grad():
            sharpness = attention_row_sharpness(*self.adapter.tower_queries_keys(module, normed))
        sizes = self.sizes if self.sizes is not None else hidden.new_ones(rows, count, dtype=torch.float32)
        plan = self.method.merge_in_encoder_tokens(hidden, sizes, sharpness, index, self.depth, self.fixed)
        if plan is None:
            return None
        merge_into, weight = plan
        kept = int(merge_into.max()) + 1
        if kept == count:
            return None
        slot = merge_into + torch.arange(rows, device=merge_into.device)[:, None] * kept
        weights = (sizes * weight).flatten()
        merged, merged_sizes = weighted_merge(hidden.flatten(0, 1), weights, slot.flatten(), rows * kept)
        if self.token_of is None:
            self.token_of = torch.arange(count, device=merge_into.device).expand(rows, count)
        self.token_of = merge_into.gather(1, self.token_of)
        self.stages[kept] = self.token_of
        self.sizes, self.merged = merged_sizes.view(rows, kept), True
        self.key_bias = self.sizes.log().to(hidden.dtype)[:, None, None, :]
        self.counts.append((index, kept))
        hidden = merged.view(rows, kept, -1).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def expand_tensor(self, value):
        """(rows, tokens at some stage, D) back to (rows, every token, D): each token reads the one it folded into."""
        if value.dim() != 3 or value.shape[0] != self.rows or value.shape[1] not in self.stages:
            return value
        index = self.stages[value.shape[1]].to(value.device)
        return value.gather(1, index[..., None].expand(-1, -1, value.shape[-1]))

    def layer_share(self, units: list[int]) -> list[float]:
        """Per video, the share of its token-layers the tower computed."""
        full = self.token_of.shape[1]
        share = _rows_through_layers(full, self.counts, self.num_layers) / (self.num_layers * full)
        return [len(frames) / max(count, 1) * share for frames, count in zip(self.standing, units)]


def before_tower_attention(index: int, module, args, kwargs):
    """Forward pre-hook of tower layer `index`'s attention."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is None:
        return None
    new_kwargs = folding.before_attention(index, module, kwargs)
    return None if new_kwargs is None else (args, new_kwargs)


def after_tower_layer(index: int, module, args, output):
    """Forward hook of tower layer `index` (the engine puts it first in line, so whatever records the layers'
    outputs - HF's output capture - sees what folded)."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.after_layer(index, output) if folding is not None else None


def after_tower(module, args, output):
    """Forward hook of the vision tower: its output back in the shape the model expects."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.expand(output) if folding is not None and folding.merged else None


def _rows_through_layers(initial: int, counts: list[tuple[int, int]], num_layers: int) -> int:
    """Σ over the tower's layers of the rows (frames or tokens) each one ran on: `initial` at first, then
    `count` from the layer after each (layer, count) merge."""
    total, previous = 0, (0, initial)
    for layer, count in [*counts, (num_layers - 1, 0)]:
        total += (layer + 1 - previous[0]) * previous[1]
        previous = (layer + 1, count)
    return total
