"""The vision tower: the pre-encoder stage chooses which frame units it encodes, the in-encoder stage folds
frames or tokens together between its layers, and its time is measured.

Where the tower encodes each video on its own, the multimodal model's `get_video_features` gets a stand-in (its
forward calls it, and `generate` calls it up front). With a pre-encoder method it asks the method which frame
units of each video to keep, runs the stock encoder on those only, and returns an output that covers every
unit - dropped ones read zeros - so the placeholders, grids and positions stay the model's own. The prefill
then removes the dropped units' tokens before the LLM sees them, exactly as a pre-LLM reduction would. Where
a call packs its videos' units with nothing to tell them apart (MiniCPM-V), the adapter reads them off the
prompt's ids, which the engine hands it. Where the tower encoded every unit - InternVL's encodes every image
before the prompt is read; features encoded on their own - the method chooses from the frames' features at the
prefill instead.

With an in-encoder method, the call folds frames, or tokens inside each frame, together between the tower's
layers (`folding`) where the tower holds them as a batch of images (the LLaVA families, Gemma 4) or as runs of a
packed sequence (Qwen-VL), so every later layer runs on fewer; the tower's output is
expanded back to its full shape (each frame or token reads what it folded into), and the prefill keeps only
the frames that still stood, as for the pre-encoder stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from ..layout import SEPARATOR, VisualLayout
from ..methods.base import PRE_ENCODER, Method, PromptRefused
from ..stats import Timer
from . import compat
from .folding import FrameMerging, folds_in_tower
from .token_merging import TokenMerging

if TYPE_CHECKING:
    from ..adapters.base import Adapter


class TowerCall(NamedTuple):
    """One recorded call of a module `Adapter.tower_records` names, by its kind: the vision tower itself ("tower"),
    its `tower_attention()` ("attention"), or what else a family records."""

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
    layer_share: list[float] | None = None  # per video, the share of the tower's frame- (or token-) layers computed
    compression_time: Timer = field(default_factory=Timer)
    encoder_time: Timer = field(default_factory=Timer)
    tower_calls: list[TowerCall] = field(default_factory=list)  # recorded while it encoded, for a method's scores
    from_features: bool = False  # `keep` chosen at the prefill from the encoded features (the tower encoded all)

    def take_tower_calls(self) -> list[TowerCall]:
        """The tower's recorded calls, once: what they hold (its last layers' inputs) is freed after the prefill
        that scores with them."""
        calls, self.tower_calls = self.tower_calls, []
        return calls

    def take_times(self) -> tuple[Timer, Timer]:
        """(compression, encoder) time of the encoding, once: a later prefill reusing its features spent none."""
        times = self.compression_time, self.encoder_time
        self.compression_time, self.encoder_time = Timer(), Timer()
        return times


def encode_videos(
    method: Method, adapter: Adapter, encode, args: tuple, kwargs: dict[str, Any],
    prompt_ids: torch.Tensor | None = None, compressible: bool = True,
):
    """Run the stock `encode` as the method wants; returns its output and the record of what was encoded.
    `prompt_ids`: the ids of the prompt whose videos these are, where known (for `Adapter.encodes_by_prompt`);
    `compressible`: whether the tower may leave frames out or fold them - not where no prefill removes them after
    (a forward whose LLM cannot find them, a call continuing a cache): the zeros or copies in their place would reach
    the LLM."""
    encoder_args = compat.bound_arguments(encode, args, kwargs)
    # the output is read and extended here as a ModelOutput, made a tuple again (as the stock one) for the caller
    as_tuple = encoder_args.get("return_dict") is False
    encoder_args["return_dict"] = True
    pixels = encoder_args["pixel_values_videos"]
    record = EncodedVideos(units=[])
    by_prompt = {compat.PROMPT_IDS: prompt_ids} if adapter.encodes_by_prompt else {}
    chooses = compressible and adapter.encoder_side and (prompt_ids is not None or not adapter.encodes_by_prompt)
    if PRE_ENCODER in method.stages and method.compresses() and chooses:
        with record.compression_time.measure(pixels.device):
            signatures = adapter.frame_signatures({**encoder_args, **by_prompt})
            keep = [method.reduce_pre_encoder(signature) for signature in signatures]
        record.units = [len(signature) for signature in signatures]
        if any(len(units) < count for units, count in zip(keep, record.units)):
            record.keep = keep
    folding = None
    if compressible and method.compresses() and folds_in_tower(method, adapter):
        record.units = record.units or adapter.frame_counts(encoder_args)
        frames = record.keep or [torch.arange(units) for units in record.units]
        folding = (TokenMerging if method.in_encoder_unit == "token" else FrameMerging)(
            method, adapter, frames, encoder_args
        )
    with record.encoder_time.measure(pixels.device), folding or contextlib.nullcontext():
        if record.keep is None:
            output = encode(**encoder_args)
        else:
            kept_args = compat.without_precomputed_geometry(encode, encoder_args)  # for every frame: stale now
            output = adapter.encode_frames(encode, {**kept_args, **by_prompt}, record.keep)
    if folding is not None and folding.merged:
        record.keep, record.layer_share = folding.standing, folding.layer_share(record.units)
    if as_tuple:
        return output.to_tuple(), record
    adapter.note_encoded(output, encoder_args)
    if method.compresses():
        output[compat.ENCODING_RECORD] = record
    return output, record


def frames_chosen_from_features(
    method: Method, embeds: torch.Tensor, layouts: list[VisualLayout], rows_per_sample: int
) -> EncodedVideos:
    """Where the tower encoded every frame unit (InternVL's encodes before the prompt is read; features encoded on
    their own), a pre-encoder method chooses frame units from their features as the LLM would get them, (units, n,
    D) per video; the prefill drops the others."""
    record = EncodedVideos(units=[], keep=[], from_features=True)
    with record.compression_time.measure(embeds.device):
        for b in range(0, len(layouts), rows_per_sample):
            layout = layouts[b]
            first_frame = 0
            for video, (units, height, width) in enumerate(layout.grids):
                # a frame may leave cells of its video's grid out (MiniCPM-V): those read zeros, which leave the
                # signatures' cosines as they are
                cells = (layout.video == video) & ~layout.is_separator
                signatures = embeds.new_zeros(units, height * width, embeds.shape[-1])
                held = embeds[b, layout.positions[cells]]
                signatures[layout.frame[cells] - first_frame, layout.spatial[cells]] = held
                record.keep.append(method.reduce_pre_encoder(signatures))
                record.units.append(units)
                first_frame += units
    return record


def refuse_unencoded_last_tokens(method: Method, kept: list, layouts: list[VisualLayout], last: torch.Tensor) -> None:
    """PromptRefused where a prompt ends with its video and the tower left out the frame unit of its last token (`last`:
    per row, its position): the token the next one is predicted from would hold zeros."""
    for (tokens, _), layout, position in zip(kept, layouts, last.tolist()):
        (hit,) = (layout.positions == position).nonzero(as_tuple=True)
        if len(hit) and not bool(torch.isin(hit.to(tokens.device), tokens).any()):
            raise PromptRefused(
                f"the prompt ends with its video, and {method.name} left the frame unit of its last token out of the "
                "vision tower, so the next token would be predicted from zeros: end the prompt with text (a chat "
                "template's assistant turn does)"
            )


def layouts_with_tower_scores(
    layouts: list[VisualLayout], unit_scores: list[torch.Tensor], encoded_units: list[torch.Tensor] | None, rows: int
) -> list[VisualLayout]:
    """Each row's layout with its tokens' vision-tower attention (`saliency`): `unit_scores` hold one (tokens,)
    row per frame unit the tower encoded, in prompt order (`encoded_units`: per video, which ones; None: all), or
    (rows, columns) for the top-left corner of a grid its unit does not fill; separators and skipped units read 0."""
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
                score = next(scores).to(grid)
                if score.dim() == 2:  # the top-left corner of the grid (a frame smaller than its video's grid)
                    score = torch.nn.functional.pad(score, (0, width - score.shape[1], 0, height - score.shape[0]))
                grid[unit] = score.flatten()
            cells = (layout.video == video) & ~layout.is_separator
            saliency[cells] = grid[layout.frame[cells] - first_frame, layout.spatial[cells]]
            first_frame += units
        out += [layout.with_saliency(saliency)] * rows
    return out


def tokens_encoded(record: EncodedVideos | None, layouts: list[VisualLayout], rows_per_sample: int):
    """Per batch row, the indices (into its layout) of the visual tokens whose frame unit was encoded (and still
    stood at the tower's end), and the share of the tower's work done - its token-layers: units encoded (or the
    share of their layers computed) weighed by their tokens, so a large video counts for more than a small one (1 for
    a row without video); None when every unit was."""
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
        # a video's separators stay; a frame's own (Video-LLaVA's CLS) go with their frame
        kept = (layout.frame == SEPARATOR) | torch.isin(layout.frame, encoded.to(layout.frame.device))
        areas = [height * width for _, height, width in layout.grids]
        if record.layer_share is not None:  # frames folded inside the tower: the frame-layers it computed
            computed = [s * t for s, (t, _, _) in zip(record.layer_share[firsts[sample] : firsts[sample + 1]],
                                                       layout.grids)]
        else:
            computed = [len(units) for units in keep]
        total = sum(t * area for (t, _, _), area in zip(layout.grids, areas))
        fraction = sum(units * area for units, area in zip(computed, areas)) / total if total else 1.0
        rows.append((kept.nonzero().squeeze(1), fraction))
    return rows
