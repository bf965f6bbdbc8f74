"""Where a prompt holds its videos: runs of placeholder tokens read as frames, the grids noted on features
`generate` encoded up front, and a video's features placed among its frame units - what the adapters share."""

from __future__ import annotations

from typing import Any

import torch

from ..engine import compat
from ..layout import VisualLayout
from ..methods.base import PromptRefused


def noted_grids(
    call_kwargs: dict[str, Any], input_ids: torch.Tensor, token_id: int, family: str, fix: str,
    held: list[int] | None = None,
) -> list[tuple[int, int, int]]:
    """Per video of a call given features `generate` encoded up front, its (frames, H, W) token grid as the patch
    noted it on them (`note_encoded`), repeated as generate repeats each sample's videos for its beams or returned
    sequences: each sample's block once per row it made of the sample, the rows of a sample one after another, a
    row's videos those its placeholders hold (`held`: per encoded video, its placeholders; None: its features)."""
    encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get("video")
    noted = None if encoded is None else encoded.get(compat.ENCODED_GRIDS)
    if noted is None:
        raise ValueError(
            f"{family} video features encoded before the model was patched carry no frame grid: pass {fix} (or "
            "encode after tokcompress.patch)"
        )
    counts = held or [len(features) for features in encoded.pooler_output]
    repeated = bool(noted) and len(counts) > len(noted) and not len(counts) % len(noted)
    if not repeated or len(input_ids) % (len(counts) // len(noted)):
        return noted  # as encoded (or not a repetition of it: the placeholder check refuses the call)
    rows, pending = len(counts) // len(noted), iter(counts)
    grids, first = [], 0
    for row, placeholders in enumerate((input_ids == token_id).sum(dim=1).tolist()):
        videos = 0
        while placeholders > 0:
            placeholders -= next(pending)
            videos += 1
        grids += noted[first : first + videos]
        first += videos if row % rows == rows - 1 else 0
    return grids


def units_in_place(
    features: tuple[torch.Tensor, ...], keep: list[torch.Tensor], totals: list[int]
) -> tuple[torch.Tensor, ...]:
    """Per video, the (kept units · tokens, D) features an encoder call on its kept frame units returned, in place
    among its `totals` units, the dropped ones zeros: an output covering every unit, as `encode_frames` returns."""
    videos = []
    for video, units, total in zip(features, keep, totals):
        kept = video.view(len(units), -1, video.shape[-1])
        full = kept.new_zeros(total, *kept.shape[1:])
        full[units.to(kept.device)] = kept
        videos.append(full.flatten(0, 1))
    return tuple(videos)


def token_runs(ids: torch.Tensor, token_id: int) -> list[tuple[int, int]]:
    """(start, length) of each maximal run of `token_id` in a 1-D id tensor (one host read)."""
    hits = (ids == token_id).nonzero().squeeze(1).cpu()
    if not len(hits):
        return []
    first = torch.cat([torch.ones(1, dtype=torch.bool), hits.diff() != 1]).nonzero().squeeze(1)  # runs' first hits
    lengths = torch.cat([first, torch.tensor([len(hits)])]).diff()
    return list(zip(hits[first].tolist(), lengths.tolist()))


def frame_run_layouts(
    input_ids: torch.Tensor, grids: list[tuple[int, int, int]], token_id: int, hint: str = ""
) -> list[VisualLayout] | None:
    """Per sample, the layout of videos whose every frame is a run of its own (between its timestamp and its
    start / end tokens): `grids` holds each video's (frames, height, width), the samples' videos in order. None
    where the placeholders and the grids disagree in number (the model's own check then says by how much)."""
    runs = [token_runs(ids, token_id) for ids in input_ids]
    if sum(length for sample in runs for _, length in sample) != sum(t * h * w for t, h, w in grids):
        return None
    pending = iter(grids)
    layouts = []
    for ids, sample in zip(input_ids, runs):
        frame_starts, sample_grids = [], []
        while sample:
            t, h, w = next(pending)
            frames, sample = sample[:t], sample[t:]
            if [length for _, length in frames] != [h * w] * t:
                raise PromptRefused(
                    f"a video of {t} frames of {h}×{w} tokens does not match its runs of video tokens "
                    f"({[length for _, length in frames]}); pass the processor's prompt and video{hint}"
                )
            frame_starts.append([start for start, _ in frames])
            sample_grids.append((t, h, w))
        layouts.append(VisualLayout.from_frames(frame_starts, sample_grids, device=ids.device))
    return layouts
