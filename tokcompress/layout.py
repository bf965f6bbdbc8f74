"""Where the visual tokens of one sample sit, and how they split into videos, frames and a grid."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

SEPARATOR = -1
"""`spatial` value of a visual token that is no cell of its frame's grid: a video's own separator (LLaVA's newline;
its `frame` is SEPARATOR too) or a frame's (Video-LLaVA's CLS token leading each frame; its `frame` is the frame's,
so it stands or falls with that frame)."""


@dataclass(frozen=True)
class VisualLayout:
    """Per-sample description of the visual tokens, in sequence order.

    All tensors have one entry per visual token. Frame ids are global within the sample (the frames of
    a second video continue after those of the first); `spatial` is the raster index inside a frame.
    After a reduction the layout is gathered at the surviving tokens, so the same object type
    describes any stage of compression.
    """

    positions: torch.Tensor  # (N,) index of the token in the LLM input sequence
    video: torch.Tensor  # (N,) which video of the sample the token belongs to
    frame: torch.Tensor  # (N,) global frame id, SEPARATOR for a video's separators
    spatial: torch.Tensor  # (N,) raster index inside its frame, SEPARATOR for separators
    grids: tuple[tuple[int, int, int], ...]  # (frames, height, width) per video
    saliency: torch.Tensor | None = None  # (N,) attention each token got in the vision tower, where a method asks

    @property
    def num_tokens(self) -> int:
        return int(self.positions.numel())

    @property
    def is_separator(self) -> torch.Tensor:
        """Tokens that are no grid cell, a video's separators and a frame's: the steps before the LLM keep them."""
        return self.spatial == SEPARATOR

    def select(self, index: torch.Tensor) -> VisualLayout:
        """The layout of the tokens at `index` (sorted indices into this layout)."""
        saliency = None if self.saliency is None else self.saliency[index]
        return VisualLayout(
            self.positions[index], self.video[index], self.frame[index], self.spatial[index], self.grids, saliency
        )

    def with_saliency(self, saliency: torch.Tensor) -> VisualLayout:
        return replace(self, saliency=saliency)

    def shifted(self, offset: int) -> VisualLayout:
        """The layout with its tokens `offset` positions later in the sequence (a prompt after cached tokens)."""
        return replace(self, positions=self.positions + offset)

    def raster_order(self, tokens: torch.Tensor) -> torch.Tensor:
        """The permutation of `tokens` (indices of cell tokens, frames in order) that sorts them frame-major in raster
        order: the order in which most prompts hold them already (Ovis2.5's holds each frame's in its tower's window
        order)."""
        return torch.argsort(self.frame[tokens] * (1 << 20) + self.spatial[tokens])

    def temporal_predecessor(self) -> torch.Tensor:
        """For each token, the index of the closest earlier token at the same spatial cell of the same video.

        -1 where there is none (first surviving frame of that cell, and separators). On the full grid this is
        the same cell in the previous frame; after tokens were removed it is the previous *surviving* one.
        """
        n = self.num_tokens
        predecessor = torch.full((n,), -1, dtype=torch.long, device=self.frame.device)
        cell = torch.where(self.is_separator, -1, self.video * (1 << 20) + self.spatial)
        # Sort by (cell, frame); neighbours in that order with the same cell are temporal neighbours.
        order = torch.argsort(cell * (1 << 20) + self.frame.clamp_min(0), stable=True)
        same_cell = (cell[order][1:] == cell[order][:-1]) & (cell[order][1:] >= 0)
        predecessor[order[1:][same_cell]] = order[:-1][same_cell]
        return predecessor

    @staticmethod
    def from_frames(
        frame_starts: list[list[int]],
        grids: list[tuple[int, int, int]],
        kept: list[torch.Tensor] | None = None,
        device: torch.device | str | None = None,
    ) -> VisualLayout:
        """Layout of videos whose frames sit apart (Qwen3-VL: each frame between its timestamp and vision
        start / end tokens): `frame_starts[v][f]` is the sequence index of the first token of frame f of video v,
        the frame's tokens following it (`kept`: as in `from_token_positions`)."""
        kept = [None] * len(grids) if kept is None else [mask.cpu().view(t, -1) for mask, (t, _, _) in zip(kept, grids)]
        video_positions = []
        for starts, (t, h, w), mask in zip(frame_starts, grids, kept):
            counts = [h * w] * t if mask is None else mask.sum(dim=1).tolist()  # one host read per video
            video_positions.append(torch.cat([torch.arange(start, start + n) for start, n in zip(starts, counts)]))
        return VisualLayout.from_token_positions(video_positions, grids, kept, device)

    @staticmethod
    def from_token_positions(
        video_positions: list[torch.Tensor],
        grids: list[tuple[int, int, int]],
        kept: list[torch.Tensor | None] | None = None,
        device: torch.device | str | None = None,
    ) -> VisualLayout:
        """Layout of videos whose tokens sit anywhere in the prompt, in order (Qwen2.5-Omni: its frame units in
        runs between its audio tokens, a unit split over two runs at low fps): `video_positions[v]` holds the
        sequence index of each of video v's tokens, frame-major in raster order. `kept[v]`, a (frames, h·w) mask,
        says which cells of each frame the prompt holds where a processor already left some out (VideoLLaMA3's
        compression); None: all of them."""
        if not video_positions:
            return VisualLayout.from_videos([], [], device=device)
        video, frame, spatial, frame_offset = [], [], [], 0
        for v, ((t, h, w), mask) in enumerate(zip(grids, kept or [None] * len(grids))):
            if mask is None:  # every cell, in order
                index = torch.arange(t * h * w)
                frame_of, cell = index // (h * w), index % (h * w)
            else:
                frame_of, cell = mask.cpu().view(t, h * w).nonzero().unbind(1)
            video.append(torch.full((len(cell),), v))
            frame.append(frame_of + frame_offset)
            spatial.append(cell)
            frame_offset += t
        parts = (video_positions, video, frame, spatial)
        return VisualLayout(*(torch.cat(part).to(device=device, dtype=torch.long) for part in parts), tuple(grids))

    @staticmethod
    def from_videos(
        starts: list[int],
        grids: list[tuple[int, int, int]],
        separators_per_video: int = 0,
        device: torch.device | str | None = None,
        separators_per_frame: int = 0,
    ) -> VisualLayout:
        """Layout of videos stored frame-major (raster order inside a frame), each frame led by
        `separators_per_frame` separators of its own (Video-LLaVA's CLS token) and each video followed by
        `separators_per_video` (LLaVA-OV's newline).

        `starts[v]` is the sequence index of the first token of video v.
        """
        positions, video, frame, spatial = [], [], [], []
        frame_offset = 0
        for v, (start, (t, h, w)) in enumerate(zip(starts, grids)):
            per_frame = separators_per_frame + h * w
            n = t * per_frame + separators_per_video
            positions.append(torch.arange(start, start + n))
            video.append(torch.full((n,), v))
            in_frame = torch.arange(t * per_frame) % per_frame - separators_per_frame  # < 0: the frame's separators
            video_separators = torch.full((separators_per_video,), SEPARATOR)
            frame.append(torch.cat([torch.arange(t * per_frame) // per_frame + frame_offset, video_separators]))
            spatial.append(torch.cat([in_frame.clamp_min(SEPARATOR), video_separators]))
            frame_offset += t
        if not positions:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return VisualLayout(empty, empty, empty, empty, ())
        return VisualLayout(
            *(torch.cat(parts).to(device=device, dtype=torch.long) for parts in (positions, video, frame, spatial)),
            tuple(grids),
        )
