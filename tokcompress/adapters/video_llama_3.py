"""VideoLLaMA3: each frame of a video sits on its own, `Time t.ts:` + its tokens, over a Qwen2 decoder with plain
1-D RoPE. Its SigLIP tower packs the frames' patches (m × m blocks in a row, attention inside each frame) and
pools each block to one token (bilinear, by m). The processor's own compression (`video_compression_mask`, on
by default) already drops the patches of a frame that repeat the previous one's pixels, keeping at least one
token a frame: a frame's prompt tokens are the cells its mask keeps, so the layout starts thinned."""

from __future__ import annotations

import torch

from ..engine import compat
from ..layout import VisualLayout
from .prompt import noted_grids, token_runs
from .qwen2_vl import Qwen2VLAdapter, SiglipTower


class VideoLlama3Adapter(SiglipTower, Qwen2VLAdapter):
    model_type = "video_llama_3"
    mrope = False
    tower_row_outputs = ("hidden_states",)  # its last_hidden_state is read out already: normed, pooled

    def video_layouts(self, input_ids, call_kwargs):
        grids = self._grids(input_ids, call_kwargs)
        mask = call_kwargs.get("video_compression_mask")
        sizes = [t * h * w for t, h, w in grids]
        mask = torch.ones(sum(sizes), dtype=torch.bool) if mask is None else mask.cpu()  # None: every cell
        if len(mask) != sum(sizes) or int((input_ids == self.video_token_id).sum()) != int(mask.sum()):
            return None  # placeholders, mask and features disagree: HF's own error says how
        kept = [cells.view(t, h * w) for cells, (t, h, w) in zip(mask.split(sizes), grids)]
        pending = iter(zip(grids, kept))
        layouts = []
        for ids in input_ids:
            runs = token_runs(ids, self.video_token_id)
            frame_starts, sample_grids, sample_kept = [], [], []
            while runs:
                grid, cells = next(pending, (None, None))
                if grid is None:
                    return None  # more runs than videos: HF's own error says so
                counts = cells.sum(dim=1).tolist()  # every frame keeps at least one (the processor's rule)
                frames, runs = runs[: len(counts)], runs[len(counts) :]
                if [length for _, length in frames] != counts:
                    raise ValueError(
                        f"a video's frames keep {counts} tokens (its `video_compression_mask`) but its runs of video "
                        f"tokens hold {[length for _, length in frames]}; pass the processor's prompt and mask"
                    )
                frame_starts.append([start for start, _ in frames])
                sample_grids.append(grid)
                sample_kept.append(cells)
            layouts.append(VisualLayout.from_frames(frame_starts, sample_grids, sample_kept, device=ids.device))
        return layouts

    def _grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per video of the call, its (frames, H, W) grid of LLM tokens: from `video_grid_thw` and
        `video_merge_sizes`, or (`generate` encodes up front and drops them) as noted on the encoded features."""
        grid_thw = call_kwargs.get("video_grid_thw")
        if grid_thw is not None:
            return self.token_grids(grid_thw, call_kwargs.get("video_merge_sizes"))
        mask = call_kwargs.get("video_compression_mask")
        held = None
        if mask is not None:  # the features hold every cell; the prompt the kept ones
            counts = [len(features) for features in compat.encoded_video(call_kwargs)]
            held = [int(cells.sum()) for cells in mask.cpu().split(counts)]
        fix = "pixel_values_videos, video_grid_thw and video_merge_sizes"
        return noted_grids(call_kwargs, input_ids, self.video_token_id, "VideoLLaMA3", fix, held)

    def token_grids(
        self, grid_thw: torch.Tensor, merge_sizes: torch.Tensor | None = None
    ) -> list[tuple[int, int, int]]:
        merges = merge_sizes.tolist() if merge_sizes is not None else [1] * len(grid_thw)
        return [(t, h // m, w // m) for (t, h, w), m in zip(grid_thw.tolist(), merges)]

    def note_encoded(self, output, encoder_args):
        grids = self.token_grids(encoder_args["video_grid_thw"], encoder_args.get("video_merge_sizes"))
        output[compat.ENCODED_GRIDS] = grids

    def patch_embeddings(self, pixels):
        return self.vision_tower.embeddings(pixels.to(self.vision_tower.dtype))

    def patches_per_token(self, tower_call):
        merges = tower_call.argument("merge_sizes", 2).unique().tolist()
        if len(merges) != 1:
            raise ValueError(f"a VideoLLaMA3 tower call whose videos merge patches differently ({merges})")
        return merges[0] ** 2

