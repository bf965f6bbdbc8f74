"""Folding inside the vision tower, for one encoder call: the patch's hooks on the tower (`hook_tower_folding`) hand
its layers' outputs to the folding of the call in progress on this thread, which merges frames (`FrameMerging`) or
tokens inside each frame (`token_merging.TokenMerging`), in a batched or a packed tower, so that the later layers
encode fewer, and expands the tower's output back to the shape the model expects, each frame or token reading what
it folded into (the readouts inside a tower - a patch merger, a pooler - get their input expanded before they run).
Later layers get the per-frame call kwargs of what remains: a packed tower's segments and rotary rows, a batched
one's `Adapter.tower_row_kwargs`."""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from typing import TYPE_CHECKING

import torch

from ..methods.base import IN_ENCODER, Method
from ..ops import weighted_merge
from . import compat
from .rows import LayerInputCache, PackedRows, RowMap, gather_rows, runs

if TYPE_CHECKING:
    from ..adapters.base import Adapter

BATCHED, PACKED = "batched", "packed"  # how a tower holds a video's frames (`Adapter.tower_frames`)
_ACTIVE = threading.local()  # the folding of the encoder call in progress on this thread


class TowerFolding:
    """Entered around one encoder call on one thread; `merged` once anything folded.

    `frames[v]`: the frame units of video v the call encodes, in order. In a BATCHED tower every frame is a
    batch row; in a PACKED one it is a run of `unit_rows[v]` rows of the sequence (every frame of a video in
    the same window order), and each later layer gets the attention segments and rotary rows of the rows
    that remain (`PackedRows`)."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor], encoder_args: dict):
        layers, self.depth = adapter.tower_layers()
        self.method, self.adapter, self.num_layers = method, adapter, len(layers)
        self.merge_layers = set(method.encoder_merge_layers(self.depth))
        self.standing = [f.clone() for f in frames]  # per video, the units whose rows are still in the tower
        self.initial = [len(f) for f in frames]
        self.bounds = [0, *itertools.accumulate(self.initial)]  # video v: the call's frames bounds[v]:bounds[v + 1]
        self.unit_rows = adapter.unit_rows(encoder_args) if adapter.tower_frames == PACKED else None
        self.reads_out = bool(adapter.tower_readouts()) or adapter.tower_expands_at_last_layer
        self.layer_inputs = LayerInputCache()  # a batched tower's per-frame layer kwargs, for what remains
        self.merged = False

    def __enter__(self):
        _ACTIVE.folding = self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.folding = None

    def before_layer(self, index: int, kwargs: dict) -> dict | None:
        """The call kwargs of tower layer `index`, for the rows that remain (None: unchanged)."""
        if self.unit_rows is not None:
            changed = self.rows.layer_kwargs(kwargs)
            if changed is not None and kwargs.get("grid_thw") is not None:  # LFM3-VL's convolutions read the grids
                changed["grid_thw"] = [
                    [len(frames) * self.adapter.temporal_merge, height, width]
                    for frames, (_, height, width) in zip(self.standing, kwargs["grid_thw"])
                ]
            return changed
        remaining = self.remaining()
        if remaining is None:
            return None
        frames, tokens = remaining
        stage = (len(frames), None if tokens is None else tokens.shape[1])
        names = self.adapter.tower_row_kwargs  # and the mask, where frames fold (folding tokens builds its own)
        changed = {}
        for name in (*names, "attention_mask") if tokens is None else names:
            if (value := kwargs.get(name)) is not None:
                changed[name] = self.layer_inputs.get(value, stage, lambda: gather_rows(value, frames, tokens))
        return {**kwargs, **changed} if changed else None

    def remaining(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """In a batched tower, per row now the original row it continues and (where tokens folded) per token the
        original token whose place it keeps, (rows, tokens); None while nothing folded."""
        raise NotImplementedError

    def before_attention(self, index: int, module, args: tuple, kwargs: dict) -> dict | None:
        """The call kwargs of tower layer `index`'s attention, changed, or None to leave them."""
        return None

    def after_layer(self, index: int, output):
        """Tower layer `index`'s output with what folds after it folded, or None to leave it."""
        raise NotImplementedError

    def expand_tensor(self, value: torch.Tensor) -> torch.Tensor:
        """One tensor of the tower's output back in the full shape (unchanged if it is not a folded one)."""
        return self.rows.expand(value)

    def expand(self, output):
        """The tower's output, every tensor in it (the hidden states of any layer) back in the full shape; where
        readouts inside the tower (a merger, a pooler) already read expanded input, only the outputs that hold its
        rows (`Adapter.tower_row_outputs`, and the layers' attention outputs)."""
        keys = [*self.adapter.tower_row_outputs, "attentions"] if self.reads_out else list(output.keys())
        read_out = [value for key, value in output.items() if key not in keys]  # HF may repeat one in hidden_states

        def expand(value):
            if isinstance(value, torch.Tensor):
                return value if any(value is tensor for tensor in read_out) else self.expand_tensor(value)
            return tuple(expand(v) for v in value) if isinstance(value, tuple) else value

        for key in keys:
            if output.get(key) is not None:
                output[key] = expand(output[key])
        return output

    def _videos(self, hidden: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
        """A packed tower's rows as one (frames, tokens[v], D) block per video."""
        blocks = hidden.split([len(f) * n for f, n in zip(self.standing, tokens)])
        return [block.view(len(f), n, -1) for block, f, n in zip(blocks, self.standing, tokens)]


class FrameMerging(TowerFolding):
    """Folds each video's frames together after the method's merge layers (size-weighted), so later layers
    encode fewer; a row then stands for the frames that folded into it, and the output's tensors - the hidden
    states of any layer - expand back to one row per frame (or per packed row) the call encodes."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor], encoder_args: dict):
        super().__init__(method, adapter, frames, encoder_args)
        self.sizes = [torch.ones(len(f)) for f in frames]
        self.ordinals = [torch.arange(a, b) for a, b in itertools.pairwise(self.bounds)]
        self.row_of = torch.arange(self.bounds[-1])  # per encoded frame (in order), its row now; -1: dropped
        if self.unit_rows is None:
            self.rows = RowMap(len(self.row_of))
        else:  # per encoded frame, its packed rows and its first one
            self.rows_of_frame = torch.tensor([rows for n, rows in zip(self.initial, self.unit_rows) for _ in range(n)])
            self.first_row_of_frame = self.rows_of_frame.cumsum(0) - self.rows_of_frame
            self.rows = PackedRows(int(self.rows_of_frame.sum()))
        self.counts: list[tuple[int, list[int]]] = []  # (layer, frames per video after it) per merge

    def after_layer(self, index: int, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        if self.unit_rows is None:
            blocks_in = list(hidden.split([len(f) for f in self.standing]))
        else:
            blocks_in = self._videos(hidden, self.unit_rows)
        blocks, sizes, standing, ordinals, slots, rows = [], [], [], [], [], 0
        for video, block in enumerate(blocks_in):
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
        if self.unit_rows is None:
            hidden = torch.cat(blocks)
            self.rows.add(self.row_of.clone(), len(hidden))
        else:
            hidden = torch.cat([block.flatten(0, 1) for block in blocks])
            frames = torch.cat(self.ordinals)  # the encoded frames that stand, in order
            standing_rows = self.rows_of_frame[frames]
            origin = runs(self.first_row_of_frame[frames], standing_rows)
            first_now = (standing_rows.cumsum(0) - standing_rows)[self.row_of.clamp_min(0)]
            read = runs(first_now, self.rows_of_frame).masked_fill(
                torch.repeat_interleave(self.row_of < 0, self.rows_of_frame), -1)
            self.rows.fold(origin, read)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def remaining(self):
        rows = torch.cat(self.ordinals)  # the encoded frames that stand, each where its row is now
        return None if len(rows) == len(self.row_of) else (rows, None)

    def layer_share(self, units: list[int]) -> list[float]:
        """Per video, the share of its frame-layers the tower computed (every layer counts, merging or not)."""
        return [
            rows_through_layers(self.initial[video], [(layer, c[video]) for layer, c in self.counts], self.num_layers)
            / (self.num_layers * max(count, 1))
            for video, count in enumerate(units)
        ]


def folds_in_tower(method: Method, adapter: Adapter) -> bool:
    """Whether the method acts inside this tower (one that holds frames as a batch or packed, and tokens too where
    it folds tokens), at whatever ratio: the patch's tower hooks stay in place while `handle.ratio` changes."""
    if IN_ENCODER not in method.stages or adapter.tower_frames is None:
        return False
    return method.in_encoder_unit != "token" or adapter.tower_token_folding_refused is None


def folds_tokens_in_tower(method: Method, adapter: Adapter) -> bool:
    """Whether the method folds tokens (not whole frames) inside this tower."""
    return folds_in_tower(method, adapter) and method.in_encoder_unit == "token"


def tower_attends_by_size(method: Method, adapter: Adapter) -> bool:
    """Whether the method folds tokens inside this tower with their mass: its later layers then attend with each
    folded token's log(size) (proportional attention)."""
    return folds_tokens_in_tower(method, adapter) and method.folds_with_mass()


def check_tower_use(method: Method, adapter: Adapter) -> None:
    """ValueError, naming the fix, where the method needs what this model's vision tower cannot give: its attention
    (an encoder-free model has none), or folding inside it - a method (or a composition's member) that acts only
    there, where the tower cannot fold (it would do nothing), or tokens folded where they cannot."""
    no_tower = (
        f"{adapter.model_type} has no vision tower (encoder-free: its patches are projected straight into the LLM); "
        "use a method that reads the tokens' features or the LLM's attention (framefusion, tome, fastv, ...), or "
        "framededup, which chooses frames before they are embedded"
    )
    if method.uses_tower_attention() and not adapter.has_tower:
        raise ValueError(f"{method.name} ranks tokens by the vision tower's attention, but {no_tower}")
    for member in getattr(method, "methods", (method,)):
        if tuple(member.stages) != (IN_ENCODER,) or folds_in_tower(member, adapter):
            continue
        if not adapter.has_tower:
            raise ValueError(f"{member.name} acts only inside the vision tower, but {no_tower}")
        cannot = (
            f"cannot fold frames in {adapter.model_type}: {adapter.tower_folding_refused}"
            if adapter.tower_frames is None else
            f"cannot fold tokens in {adapter.model_type}: {adapter.tower_token_folding_refused} (earlytom folds frames)"
        )
        raise ValueError(
            f"{member.name} acts only inside the vision tower, which {cannot}. Use {member.name.split('@')[0]} whole "
            "(its LLM-side stage then meets the budget) or framededup, which chooses frames from their features"
        )
    if not folds_tokens_in_tower(method, adapter):
        return
    implementation = compat.attention_implementation(adapter.vision_tower.config)
    if adapter.tower_frames == BATCHED and "flash" in implementation and method.folds_with_mass():
        raise ValueError(
            f"{method.name} folds tokens inside the vision tower, whose later layers then need a float attention "
            f"mask (proportional attention), which {implementation} cannot take; load the tower with "
            "attn_implementation='sdpa'"
        )
    if method.uses_tower_attention():
        raise ValueError(
            f"{method.name} folds tokens inside the vision tower and ranks them by the attention of its last "
            "layers, whose rows are then of the folded tokens; compose a token-folding method with one that "
            "does not read the tower's attention (or fold frames: earlytom)"
        )


def hook_tower_folding(method: Method, adapter: Adapter) -> list[torch.utils.hooks.RemovableHandle]:
    """The tower hooks through which the encoder call in progress on a thread folds frames or tokens; they come
    first in line (HF's output capture then records what folded)."""
    layers, _ = adapter.tower_layers()
    per_frame_kwargs = adapter.tower_frames == PACKED or bool(adapter.tower_row_kwargs)
    handles = []
    if adapter.tower_expands_at_last_layer:  # after the fold's own hook on that layer, which comes first
        handles.append(layers[-1].register_forward_hook(_after_last_layer, prepend=True))
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_hook(functools.partial(_after_layer, index), prepend=True))
        if per_frame_kwargs:  # its attention segments, rotary rows, positions, for the rows that remain
            hook = functools.partial(_before_layer, index)
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True, prepend=True))
        if method.in_encoder_unit == "token":  # its saliency and proportional attention, from its projections
            attention = adapter.tower_layer_attention(layer)
            hook = functools.partial(_before_attention, index)
            handles.append(attention.register_forward_pre_hook(hook, with_kwargs=True))
            for projection in adapter.tower_projection_modules(attention):
                handles.append(projection.register_forward_hook(functools.partial(_after_projection, index)))
    for readout in adapter.tower_readouts():
        handles.append(readout.register_forward_pre_hook(_before_readout, with_kwargs=True, prepend=True))
    handles.append(adapter.vision_tower.register_forward_hook(_after_tower, prepend=True))
    return handles


def _before_attention(index: int, module, args, kwargs):
    """Forward pre-hook of tower layer `index`'s attention."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is None:
        return None
    new_kwargs = folding.before_attention(index, module, args, kwargs)
    return None if new_kwargs is None else (args, new_kwargs)


def _after_projection(index: int, module, args, output):
    """Forward hook of a projection inside tower layer `index`'s attention."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is not None:  # a TokenMerging: only token-folding methods hook projections
        folding.after_projection(index, module, args, output)


def _before_layer(index: int, module, args, kwargs):
    """Forward pre-hook of tower layer `index`, where its call kwargs hold something per frame (arguments after the
    rows given by position - LLaVA-OV-1.5's `cu_seqlens` - are read, and passed on, by name)."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is None:
        return None
    if len(args) > 1:
        args, kwargs = args[:1], {**dict(zip(_parameters(type(module).forward)[2:], args[1:])), **kwargs}
    new_kwargs = folding.before_layer(index, kwargs)
    return None if new_kwargs is None else (args, new_kwargs)


@functools.cache
def _parameters(forward) -> tuple[str, ...]:
    """A layer class's forward parameters by name (self first), read once per class: the hook runs every layer."""
    return tuple(inspect.signature(forward).parameters)


def _before_readout(module, args, kwargs):
    """Forward pre-hook of a readout inside the tower (patch merger, pooler): its input (the first argument, or
    `hidden_states`) back to every frame's rows and tokens."""
    folding = getattr(_ACTIVE, "folding", None)
    if folding is None or not folding.merged:
        return None
    if args:
        return (folding.expand_tensor(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": folding.expand_tensor(kwargs["hidden_states"])}


def _after_layer(index: int, module, args, output):
    """Forward hook of tower layer `index`."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.after_layer(index, output) if folding is not None else None


def _after_last_layer(module, args, output):
    """Forward hook of the tower's last layer, where the adapter says its rows expand there."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.expand_tensor(output) if folding is not None and folding.merged else None


def _after_tower(module, args, output):
    """Forward hook of the vision tower: its output back in the shape the model expects."""
    folding = getattr(_ACTIVE, "folding", None)
    return folding.expand(output) if folding is not None and folding.merged else None


def rows_through_layers(initial: int, counts: list[tuple[int, int]], num_layers: int) -> int:
    """Σ over the tower's layers of the rows (frames or tokens) each one ran on: `initial` at first, then
    `count` from the layer after each (layer, count) merge."""
    total, previous = 0, (0, initial)
    for layer, count in [*counts, (num_layers - 1, 0)]:
        total += (layer + 1 - previous[0]) * previous[1]
        previous = (layer + 1, count)
    return total
