"""Folding inside the vision tower, for one encoder call: the engine's hooks on the tower's layers hand their
outputs to the folding of the call in progress on this thread, which merges frames (`FrameMerging`, in a
batched or a packed tower) or tokens inside each frame (`TokenMerging`, batched towers) so that the later
layers encode fewer, and expands the tower's output back to the shape the model expects, each frame or token
reading what it folded into (a packed tower's readouts get their input expanded before they run)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from ..methods.base import Method
from ..ops import attention_row_sharpness, weighted_merge

if TYPE_CHECKING:
    from ..adapters.base import Adapter

BATCHED, PACKED = "batched", "packed"  # how a tower holds a video's frames (`Adapter.tower_frames`)
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

    def before_layer(self, index: int, kwargs: dict) -> dict | None:
        """The call kwargs of a packed tower's layer `index`, changed, or None to leave them."""
        return None

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

    In a BATCHED tower row r of the batch is one frame (`frames[v]`: the units of video v it encodes, in
    order); in a PACKED one frame g is a run of `packed_rows[v]` rows of the sequence, every frame of a video in
    the same (window) order, and each layer gets `cu_seqlens` and rotary rows for the frames that stand. After
    a merge a row stands for the frames that folded into it; `stages` maps each of the tower's original rows to
    its row for every row count the tower passed through (-1: dropped), which is how the output's tensors - the
    hidden states of any layer - are expanded."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor], packed_rows: list[int] | None):
        super().__init__(method, adapter)
        self.standing = [f.clone() for f in frames]  # per video, the units whose rows are still in the tower
        self.initial = [len(f) for f in frames]
        self.sizes = [torch.ones(len(f)) for f in frames]
        self.packed_rows = packed_rows
        first = torch.tensor([0, *self.initial]).cumsum(0)
        self.ordinals = [torch.arange(a, b) for a, b in zip(first[:-1].tolist(), first[1:].tolist())]
        self.row_of = torch.arange(int(first[-1]))  # per encoded frame (in order), its row now; -1: dropped
        if packed_rows is not None:  # per encoded frame, its rows and its first row in the packed sequence
            self.frame_rows = torch.tensor([rows for n, rows in zip(self.initial, packed_rows) for _ in range(n)])
            self.frame_first = self.frame_rows.cumsum(0) - self.frame_rows
        total = len(self.row_of) if packed_rows is None else int(self.frame_rows.sum())
        self.stages = {total: torch.arange(total)}  # row count -> (original rows,) its row then, -1 if dropped
        self.counts: list[tuple[int, list[int]]] = []  # (layer, frames per video after it) per merge
        self._layer_kwargs: dict[tuple, object] = {}  # a packed tower's per-layer arguments for what stands now

    def _videos(self, hidden: torch.Tensor) -> list[torch.Tensor]:
        """The tower's rows as one (frames, tokens, D) block per video."""
        if self.packed_rows is None:
            return list(hidden.split([len(f) for f in self.standing]))
        blocks = hidden.split([len(f) * rows for f, rows in zip(self.standing, self.packed_rows)])
        return [block.view(len(f), rows, -1) for block, f, rows in zip(blocks, self.standing, self.packed_rows)]

    def after_layer(self, index: int, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        blocks, sizes, standing, ordinals, slots, rows = [], [], [], [], [], 0
        for video, block in enumerate(self._videos(hidden)):
            frames, video_sizes, video_ordinals = self.standing[video], self.sizes[video], self.ordinals[video]
            reduction = self.method.reduce_in_encoder(block, video_sizes.to(block.device), index, self.depth)
            if reduction is None or len(reduction.keep) == len(frames):
                merge_into = torch.arange(len(frames))
            else:
                merge_into = reduction.assignment(len(frames))
                merged, video_sizes = weighted_merge(block.flatten(1), video_sizes.to(block.device), merge_into,
                                                     len(reduction.keep))
                block, video_sizes = merged.view(-1, *block.shape[1:]).to(block.dtype), video_sizes.cpu()
                keep, merge_into = reduction.keep.cpu(), merge_into.cpu()
                frames, video_ordinals = frames[keep], video_ordinals[keep]
            slots.append(torch.where(merge_into >= 0, merge_into + rows, -1))
            rows += len(block)
            blocks.append(block)
            sizes.append(video_sizes)
            standing.append(frames)
            ordinals.append(video_ordinals)
        if rows == sum(len(f) for f in self.standing):
            return None
        slots = torch.cat(slots)
        self.row_of = torch.where(self.row_of >= 0, slots[self.row_of.clamp_min(0)], -1)
        self.standing, self.sizes, self.ordinals, self.merged = standing, sizes, ordinals, True
        self.counts.append((index, [len(f) for f in standing]))
        if self.packed_rows is None:
            hidden = torch.cat(blocks)
        else:
            hidden = torch.cat([block.flatten(0, 1) for block in blocks])
        self.stages[hidden.shape[0]] = self._original_rows(self.row_of)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _original_rows(self, row_of: torch.Tensor) -> torch.Tensor:
        """Per original row of the tower, its row now (-1: dropped), from each frame's row now."""
        if self.packed_rows is None:
            return row_of.clone()
        standing_rows = self.frame_rows[torch.cat(self.ordinals)]
        first_now = (standing_rows.cumsum(0) - standing_rows)[row_of.clamp_min(0)]
        rows = _runs(first_now, self.frame_rows)
        return rows.masked_fill(torch.repeat_interleave(row_of < 0, self.frame_rows), -1)

    def before_layer(self, index: int, kwargs: dict) -> dict | None:
        """A packed tower's layer gets the attention segments (`cu_seqlens`: frames or windows inside them) and
        rotary rows of the frames that stand (every frame of a video has the same ones)."""
        if not self.merged or self.packed_rows is None:
            return None
        rows = next(iter(reversed(self.stages)))
        new_kwargs = dict(kwargs)
        segments = kwargs.get("cu_seqlens")
        if segments is not None:
            new_kwargs["cu_seqlens"] = self._cached(("segments", rows, segments.data_ptr(), len(segments)),
                                                    lambda: self._standing_segments(segments))
        rotary = kwargs.get("position_embeddings")
        if rotary is not None:
            new_kwargs["position_embeddings"] = self._cached(
                ("rotary", rows, rotary[0].data_ptr()), lambda: tuple(table[self._standing_rows(table.device)]
                                                                      for table in rotary))
        return new_kwargs

    def _cached(self, key: tuple, compute):
        if key not in self._layer_kwargs:
            self._layer_kwargs[key] = compute()
        return self._layer_kwargs[key]

    def _standing_rows(self, device: torch.device) -> torch.Tensor:
        """The tower's original rows of the frames that stand, in the order they stand in."""
        frames = torch.cat(self.ordinals)
        return _runs(self.frame_first[frames], self.frame_rows[frames]).to(device)

    def _standing_segments(self, segments: torch.Tensor) -> torch.Tensor:
        """`cu_seqlens` over the original rows → over the standing ones: the segments (frames, or windows inside
        them) of the frames that stand, in order."""
        standing = torch.zeros(int(segments[-1]), dtype=torch.bool, device=segments.device)
        standing[self._standing_rows(segments.device)] = True
        lengths = segments.diff()[standing[segments[:-1].clamp_max(len(standing) - 1)]]
        return torch.cat([segments.new_zeros(1), lengths.cumsum(0).to(segments.dtype)])

    def expand_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """A tensor with one row per tower row at some stage gets one row per original row back: the row of the
        frame it folded into (zeros for a dropped one)."""
        original = next(iter(self.stages))
        if not value.dim() or value.shape[0] not in self.stages or value.shape[0] == original:
            return value
        row_of = self.stages[value.shape[0]].to(value.device)
        return value[row_of.clamp_min(0)].masked_fill((row_of < 0).view(-1, *[1] * (value.dim() - 1)), 0)

    def expand(self, output):
        if self.packed_rows is None:
            return super().expand(output)
        for key in ("last_hidden_state", "hidden_states"):  # the readouts' inputs were expanded before they ran
            if output.get(key) is not None:
                value = output[key]
                output[key] = self.expand_tensor(value) if isinstance(value, torch.Tensor) else tuple(
                    self.expand_tensor(v) for v in value)
        return output

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


def before_tower_layer(index: int, module, args, kwargs):
    """Forward pre-hook of a packed tower's layer `index`."""
    folding = getattr(_ACTIVE, "folding", None)
    new_kwargs = folding.before_layer(index, kwargs) if folding is not None else None
    return None if new_kwargs is None else (args, new_kwargs)


def before_tower_readout(module, args):
    """Forward pre-hook of a packed tower's readout (patch merger): its input back to every frame's rows."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is None or not folding.merged:
        return None
    return (folding.expand_tensor(args[0]), *args[1:])


def after_tower_layer(index: int, module, args, output):
    """Forward hook of tower layer `index` (the engine puts it first in line, so whatever records the layers'
    outputs - HF's output capture - sees what folded)."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.after_layer(index, output) if folding is not None else None


def after_tower(module, args, output):
    """Forward hook of the vision tower: its output back in the shape the model expects."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.expand(output) if folding is not None and folding.merged else None


def _runs(starts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The runs start, start + 1, …, start + length − 1, one after the other."""
    return torch.repeat_interleave(starts - (lengths.cumsum(0) - lengths), lengths) + torch.arange(int(lengths.sum()))


def _rows_through_layers(initial: int, counts: list[tuple[int, int]], num_layers: int) -> int:
    """Σ over the tower's layers of the rows (frames or tokens) each one ran on: `initial` at first, then
    `count` from the layer after each (layer, count) merge."""
    total, previous = 0, (0, initial)
    for layer, count in [*counts, (num_layers - 1, 0)]:
        total += (layer + 1 - previous[0]) * previous[1]
        previous = (layer + 1, count)
    return total
