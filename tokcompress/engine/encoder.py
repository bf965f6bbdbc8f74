"""The vision tower: the pre-encoder stage chooses which frame units it encodes, the in-encoder stage folds
frames together between its layers, and its time is measured.

Where the tower encodes each video on its own, the multimodal model's `get_video_features` gets a stand-in (its
forward calls it, and `generate` calls it up front). With a pre-encoder method it asks the method which frame
units of each video to keep, runs the stock encoder on those only, and returns an output that covers every
unit - dropped ones read zeros - so the placeholders, grids and positions stay the model's own. The prefill
then removes the dropped units' tokens before the LLM sees them, exactly as a pre-LLM reduction would. Where
the tower encodes every image before the prompt is read (InternVL), the method chooses from the frames'
features at the prefill instead.

With an in-encoder method, where the tower encodes a video's frames as a batch of images (the LLaVA
families), hooks on its layers fold frames together after the method's merge layers, so every later layer
runs on fewer frames; the tower's output is expanded back to one row per frame (each frame reads the frame
it folded into), and the prefill keeps only the frames that still stood, as for the pre-encoder stage.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..layout import VisualLayout
from ..methods.base import IN_ENCODER, PRE_ENCODER, Method
from ..ops import weighted_merge
from ..stats import Timer
from . import compat

if TYPE_CHECKING:
    from ..adapters.base import Adapter


class TowerCall(NamedTuple):
    """One recorded call: of the vision tower itself ("tower") or of its `tower_attention()` ("attention")."""

    kind: str
    args: tuple
    kwargs: dict[str, Any]

    def argument(self, name: str, position: int) -> Any:
        return self.kwargs[name] if name in self.kwargs else self.args[position]


@dataclass
class EncodedVideos:
    """What one `get_video_features` call did, for the prefill that follows it."""

    units: list[int]  # per video, its frame units
    keep: list[torch.Tensor] | None = None  # per video, the units encoded (to the end); None: all of them
    layer_share: list[float] | None = None  # per video, the share of the tower's frame-layers computed
    compression_time: Timer = field(default_factory=Timer)
    encoder_time: Timer = field(default_factory=Timer)


def encode_videos(method: Method, adapter: Adapter, encode, args: tuple, kwargs: dict[str, Any]):
    """Run the stock `encode` as the method wants; returns its output and the record of what was encoded."""
    encoder_args = compat.bound_arguments(encode, args, kwargs)
    pixels = encoder_args["pixel_values_videos"]
    record = EncodedVideos(units=[])
    if PRE_ENCODER in method.stages and method.compresses():
        with record.compression_time.measure(pixels.device):
            signatures = adapter.frame_signatures(encoder_args)
            keep = [method.reduce_pre_encoder(signature) for signature in signatures]
        record.units = [len(signature) for signature in signatures]
        if any(len(units) < count for units, count in zip(keep, record.units)):
            record.keep = keep
    merging = None
    if IN_ENCODER in method.stages and method.compresses() and adapter.frames_batched_in_tower:
        record.units = record.units or adapter.frame_counts(encoder_args)
        merging = FrameMerging(method, adapter, record.keep or [torch.arange(units) for units in record.units])
    with record.encoder_time.measure(pixels.device), merging or contextlib.nullcontext():
        if record.keep is None:
            output = encode(**encoder_args)
        else:
            output = adapter.encode_frames(encode, encoder_args, record.keep)
    if merging is not None and merging.merged:
        record.keep, record.layer_share = merging.standing, merging.layer_share(record.units)
    return output, record


class FrameMerging:
    """For one encoder call (while entered, on this thread): folds each video's frames together after the
    method's merge layers and expands the tower's output back to one row per frame the call encodes. The
    engine's hooks on the tower (`after_tower_layer`, `after_tower`) hand it the tower's outputs.

    The tower's batch holds the frames of every video in order (`frames[v]`: the units of video v it encodes).
    After a merge, row r of the batch stands for the frames that folded into it; `stages` maps each encoded
    frame to its row for every batch size the tower passed through (-1: dropped), which is how the output's
    tensors - the hidden states of any layer - are expanded."""

    def __init__(self, method: Method, adapter: Adapter, frames: list[torch.Tensor]):
        layers, self.depth = adapter.tower_layers()
        self.method, self.num_layers = method, len(layers)
        self.merge_layers = set(method.encoder_merge_layers(self.depth))
        self.standing = [f.clone() for f in frames]  # per video, the units whose rows are still in the tower
        self.initial = [len(f) for f in frames]
        self.sizes = [torch.ones(len(f)) for f in frames]
        total = sum(len(f) for f in frames)
        self.stages = {total: torch.arange(total)}  # batch size -> (encoded frames,) its row, -1 if dropped
        self.row_of = torch.arange(total)
        self.counts: list[tuple[int, list[int]]] = []  # (layer, frames per video after it) per merge
        self.merged = False

    def __enter__(self) -> FrameMerging:
        _ACTIVE.merging = self
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.merging = None

    def after_layer(self, index: int, output):
        if index not in self.merge_layers:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        rows, sizes, standing, slot_of_row, start = [], [], [], [], 0
        for video, frames in enumerate(self.standing):
            block = hidden[start : start + len(frames)]
            reduction = self.method.reduce_in_encoder(block, self.sizes[video].to(block.device), index, self.depth)
            if reduction is None or len(reduction.keep) == len(frames):
                rows.append(block)
                slot_of_row.append(torch.arange(len(frames)) + sum(len(r) for r in rows[:-1]))
                sizes.append(self.sizes[video])
                standing.append(frames)
            else:
                merge_into = reduction.merge_into
                if merge_into is None:  # a pruning: the others are dropped
                    merge_into = _pruned(reduction.keep, len(frames))
                merged, merged_sizes = weighted_merge(block.flatten(1), self.sizes[video].to(block.device),
                                                      merge_into, len(reduction.keep))
                offset = sum(len(r) for r in rows)
                rows.append(merged.view(-1, *block.shape[1:]).to(block.dtype))
                slot_of_row.append(torch.where(merge_into.cpu() >= 0, merge_into.cpu() + offset, -1))
                sizes.append(merged_sizes.cpu())
                standing.append(frames[reduction.keep.cpu()])
            start += len(frames)
        remaining = sum(len(r) for r in rows)
        if remaining == hidden.shape[0]:
            return None
        slots = torch.cat(slot_of_row)
        self.row_of = torch.where(self.row_of >= 0, slots[self.row_of.clamp_min(0)], -1)
        self.stages[remaining] = self.row_of.clone()
        self.standing, self.sizes, self.merged = standing, sizes, True
        self.counts.append((index, [len(f) for f in standing]))
        hidden = torch.cat(rows)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def expand(self, output):
        """Every tensor of the tower's output that has one row per batch entry at some stage gets one row per
        encoded frame back: the row of the frame it folded into (zeros for a dropped one)."""
        merged_sizes = set(self.stages) - {len(self.row_of)}

        def expand(value):
            if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] in merged_sizes:
                row_of = self.stages[value.shape[0]].to(value.device)
                full = value[row_of.clamp_min(0)]
                return full.masked_fill((row_of < 0).view(-1, *[1] * (value.dim() - 1)), 0)
            if isinstance(value, tuple):
                return tuple(expand(v) for v in value)
            return value

        for key in list(output.keys()):
            output[key] = expand(output[key])
        return output

    def layer_share(self, units: list[int]) -> list[float]:
        """Per video, the share of its frame-layers the tower computed (every layer counts, merging or not)."""
        shares = []
        for video, count in enumerate(units):
            rows, previous = 0, (0, self.initial[video])
            for layer, counts in [*self.counts, (self.num_layers - 1, None)]:
                rows += (layer + 1 - previous[0]) * previous[1]
                previous = (layer + 1, counts[video] if counts else 0)
            shares.append(rows / (self.num_layers * max(count, 1)))
        return shares


_ACTIVE = threading.local()  # the FrameMerging of the encoder call in progress on this thread


def after_tower_layer(index: int, module, args, output):
    """Forward hook of tower layer `index` (the engine puts it first in line, so whatever records the layers'
    outputs - HF's output capture - sees the folded frames)."""
    merging = getattr(_ACTIVE, "merging", None)
    return merging.after_layer(index, output) if merging is not None else None


def after_tower(module, args, output):
    """Forward hook of the vision tower: its output back to one row per encoded frame."""
    merging = getattr(_ACTIVE, "merging", None)
    return merging.expand(output) if merging is not None else None


def _pruned(keep: torch.Tensor, count: int) -> torch.Tensor:
    slot = torch.full((count,), -1, dtype=torch.long, device=keep.device)
    slot[keep] = torch.arange(len(keep), device=keep.device)
    return slot


def frames_chosen_from_features(
    method: Method, embeds: torch.Tensor, layouts: list[VisualLayout], rows_per_sample: int
) -> EncodedVideos:
    """Where the tower encodes before the prompt is read (InternVL), a pre-encoder method chooses frame units
    from their features as the LLM would get them, (units, n, D) per video; the prefill drops the others."""
    record = EncodedVideos(units=[], keep=[])
    with record.compression_time.measure(embeds.device):
        for b in range(0, len(layouts), rows_per_sample):
            layout = layouts[b]
            for video, (units, height, width) in enumerate(layout.grids):
                cells = layout.positions[(layout.video == video) & ~layout.is_separator]
                record.keep.append(method.reduce_pre_encoder(embeds[b, cells].view(units, height * width, -1)))
                record.units.append(units)
    return record


def layouts_with_tower_scores(
    layouts: list[VisualLayout], unit_scores: list[torch.Tensor], encoded_units: list[torch.Tensor] | None, rows: int
) -> list[VisualLayout]:
    """Each row's layout with its tokens' vision-tower attention (`saliency`): `unit_scores` hold one (tokens,)
    row per frame unit the tower encoded, in prompt order (`encoded_units`: per video, which ones; None: all);
    separators and skipped units read 0."""
    scores = iter(unit_scores)
    videos = iter(encoded_units) if encoded_units is not None else None
    out = []
    for layout in layouts[::rows]:
        saliency = torch.zeros(layout.num_tokens, device=layout.positions.device)
        first_frame = 0
        for video, (units, height, width) in enumerate(layout.grids):
            encoded = next(videos).tolist() if videos is not None else range(units)
            grid = torch.zeros(units, height * width, device=saliency.device)
            for unit in encoded:
                grid[unit] = next(scores).to(grid)
            cells = (layout.video == video) & ~layout.is_separator
            saliency[cells] = grid[layout.frame[cells] - first_frame, layout.spatial[cells]]
            first_frame += units
        out += [layout.with_saliency(saliency)] * rows
    return out


def tokens_encoded(record: EncodedVideos | None, layouts: list[VisualLayout], rows_per_sample: int):
    """Per batch row, the indices (into its layout) of the visual tokens whose frame unit was encoded (and still
    stood at the tower's end), and the share of the tower's work done (units encoded, or frame-layers computed);
    None when every unit was."""
    if record is None or record.keep is None:
        return None
    videos_per_sample = [len(layout.grids) for layout in layouts[::rows_per_sample]]
    if sum(videos_per_sample) != len(record.keep):
        raise RuntimeError(
            f"the videos encoded ({len(record.keep)}) are not the prompt's ({sum(videos_per_sample)}): was "
            "get_video_features called on its own before this forward? Encode and run in one forward or generate()"
        )
    firsts = torch.tensor([0, *videos_per_sample]).cumsum(0).tolist()
    rows = []
    for b, layout in enumerate(layouts):
        sample = b // rows_per_sample
        keep = record.keep[firsts[sample] : firsts[sample + 1]]
        frame_offsets = torch.tensor([0, *(t for t, _, _ in layout.grids)]).cumsum(0).tolist()
        encoded = [units.cpu() + offset for units, offset in zip(keep, frame_offsets)]
        encoded = torch.cat(encoded) if encoded else torch.zeros(0, dtype=torch.long)
        kept = layout.is_separator | torch.isin(layout.frame, encoded.to(layout.frame.device))
        fraction = len(encoded) / max(frame_offsets[-1], 1)
        if record.layer_share is not None:  # frames folded inside the tower: the frame-layers it computed
            shares = record.layer_share[firsts[sample] : firsts[sample + 1]]
            fraction = sum(s * t for s, (t, _, _) in zip(shares, layout.grids)) / max(frame_offsets[-1], 1)
        rows.append((kept.nonzero().squeeze(1), fraction))
    return rows
