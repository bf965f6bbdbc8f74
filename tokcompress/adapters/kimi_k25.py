"""Kimi K2.5 / K2.6 (`kimi_k25`, Moonshot AI): a MoonViT tower (14-px patches, a learned position grid resized to each
frame plus a sinusoid per frame, axial 2-D RoPE) encodes a video as chunks of the processor's `temporal_patch_size`
frames (4 by default; the last chunk may hold fewer), each chunk one attention sequence of its frames' patches; after
its last layer a chunk's frames are averaged and every 2 × 2 patches become one token. So a chunk is a frame unit:
(h / 2) × (w / 2) tokens in raster order. The decoder is DeepSeek-V3's: multi-head latent attention (MLA - queries
through a low-rank projection; keys and values expanded from a per-token latent, which is what the cache holds; RoPE
on a part of each query / key head, interleaved pairs) and mixture-of-experts MLPs, with 1-D positions.

The processor gives each chunk its own `video_grid_thw` row and its own run of video tokens - its first frame's time,
then `<|media_begin|>video<|media_content|>` + its tokens + `<|media_end|>` -, and the model is not told which chunks
are one video's (the processor's `num_chunks_per_video` does not reach it). So videos are read off the prompt: a run
continues the video before it where only that video's last `<|media_end|>` and its own time lie between them, that
time is not the video's first chunk's (each video's times start over, so two videos back to back part there), and
its chunk holds no more frames than the one before, which is whole (a video's last chunk may be shorter). The time
(`HH:MM:SS.mmm`) takes at most `TIME_TOKENS` tokens, and its runs are as close as the closest two runs of one size in
the prompt, so text between two videos parts them - unless every video of that size is one chunk (at most
`temporal_patch_size` frames) and the text is short enough to pass for a time. The engine hands
the adapter the prompt's ids with a `get_video_features` call (as MiniCPM-V's), so a pre-encoder method keeps whole
chunks out of the tower; features encoded on their own hold every chunk, and the method chooses from them before the
LLM.

Where it departs from the stock forward: none beyond the engine's rules. Nothing folds inside the tower yet (see
`tower_folding_refused`): `earlytom`, `vidtldr` and `flowcut` meet the budget before the LLM. In-LLM scores read
MLA's own queries and keys (its softmax scale included); decoding scores the cached latents expanded to keys. From
transformers 5.24 (5.23 split a video's features as if each frame of a chunk had tokens of its own: every video
failed, patched or not)."""

from __future__ import annotations

import itertools
from typing import ClassVar

import torch
import transformers

from ..engine import compat
from ..layout import VisualLayout
from ..methods.base import PromptRefused
from ..ops import packed_attention_received
from .base import Adapter, rotate
from .latent_attention import LatentAttention
from .prompt import noted_grids, token_runs

TIME_TOKENS = 12
"""Most tokens of a chunk's time, `HH:MM:SS.mmm` (12 characters; about 7 tokens with Kimi's tokenizer, 12 in the byte
vocabulary of the tests)."""


class KimiK25Adapter(LatentAttention, Adapter):
    model_type = "kimi_k25"
    encodes_by_prompt: ClassVar[bool] = True  # its tower call does not say which chunks are one video's
    grid_rows_are_units: ClassVar[bool] = True
    tower_folding_refused: ClassVar[str] = (
        "its chunks' frames attend to each other and are averaged after its last layer, a readout tokcompress does "
        "not fold through yet"
    )

    def __init__(self, model):
        if not compat.KIMI_CHUNKS:
            raise ValueError(
                "tokcompress supports Kimi K2.5 from transformers 5.24, whose model splits a video's features per "
                f"chunk of frames (this is transformers {transformers.__version__}, where every video fails): "
                "upgrade it"
            )
        super().__init__(model)

    @property
    def merge(self) -> int:
        """The side of the square of patches that becomes one token."""
        return self.config.vision_config.merge_kernel_size[0]

    # ------------------------------------------------------------------ layout
    def video_layouts(self, input_ids, call_kwargs):
        grids = self._chunk_grids(input_ids, call_kwargs)
        if int((input_ids == self.video_token_id).sum()) != sum(h * w for _, h, w in grids):
            return None  # placeholders and features disagree in number: the model's own check says by how much
        layouts = []
        for ids, videos in zip(input_ids, self._videos(input_ids, grids)):
            positions = [
                torch.cat([torch.arange(start, start + length) for _, start, length in video]) for video in videos
            ]
            video_grids = [(len(video), *grids[video[0][0]][1:]) for video in videos]
            layouts.append(VisualLayout.from_token_positions(positions, video_grids, device=ids.device))
        return layouts

    def _videos(self, input_ids: torch.Tensor, grids: list[tuple[int, int, int]]) -> list[list[list[tuple]]]:
        """Per sample, its videos, each a list of its chunks' (chunk, start, length): the chunk's index among the
        call's (in prompt order across the samples) and its run of video tokens (see the module's docstring)."""
        samples, first = [], 0
        for ids in input_ids:
            runs = token_runs(ids, self.video_token_id)
            chunks = range(first, first + len(runs))
            if chunks.stop > len(grids) or any(length != h * w for (_, length), (_, h, w) in zip(runs, grids[first:])):
                raise PromptRefused(
                    f"the prompts' runs of video tokens do not match the videos' chunks ({len(grids)} of "
                    f"{[h * w for _, h, w in grids]} tokens): pass the processor's prompt (a run per chunk)"
                )
            tokens = ids.tolist()
            times = [self._time_before(tokens, start) for start, _ in runs]  # (its first token, its tokens)
            gaps = [None] + [
                start - sum(before) if grids[chunk][1:] == grids[chunk - 1][1:] else None
                for chunk, before, (start, _) in zip(chunks[1:], runs, runs[1:])
            ]
            closest = min((gap for gap in gaps if gap is not None), default=None)
            videos: list[list[tuple]] = []
            for index, (chunk, (start, length), gap) in enumerate(zip(chunks, runs, gaps)):
                if gap is not None and gap == closest and self._continues(videos[-1], chunk, times[index], grids):
                    videos[-1].append((chunk, start, length, times[index]))
                else:
                    videos.append([(chunk, start, length, times[index])])
            samples.append([[(chunk, start, length) for chunk, start, length, _ in video] for video in videos])
            first = chunks.stop
        if first != len(grids):
            raise PromptRefused(f"the prompts hold {first} runs of video tokens, the videos {len(grids)} chunks")
        return samples

    def _time_before(self, tokens: list[int], start: int) -> tuple[int, tuple[int, ...]]:
        """The text before a run's `<|media_begin|>` back to the `<|media_end|>` before it (or the prompt's start):
        (where it starts, its tokens) - a chunk's time, after text where a video starts."""
        begin = next((i for i in range(start - 1, -1, -1) if tokens[i] == self.config.vision_start_token_id), start)
        end = next((i for i in range(begin - 1, -1, -1) if tokens[i] == self.config.vision_end_token_id), -1)
        return end + 1, tuple(tokens[end + 1 : begin])

    @staticmethod
    def _continues(video: list[tuple], chunk: int, time: tuple[int, tuple[int, ...]], grids) -> bool:
        """Whether `chunk` (of the previous run's size, as close to it as the prompt's closest two), after `time`, is
        the next chunk of `video` (its chunks' (chunk, start, length, time) so far)."""
        (first, _, _, (_, first_time)), (last, last_start, last_length, _) = video[0], video[-1]
        time_start, tokens = time
        return (
            time_start == last_start + last_length + 1  # only the last chunk's <|media_end|> before this time
            and len(tokens) <= TIME_TOKENS
            and not (tokens and first_time[len(first_time) - len(tokens):] == tokens)  # the first's time: a new video
            and grids[chunk][0] <= grids[last][0] == grids[first][0]  # after a whole chunk, not more frames
        )

    def _chunk_grids(self, input_ids, call_kwargs) -> list[tuple[int, int, int]]:
        """Per chunk of the call, its frames and its (height, width) grid of tokens: from `video_grid_thw`, or
        (generate encodes up front and drops it) as noted on the encoded features."""
        if call_kwargs.get("video_grid_thw") is not None:
            return self.token_grids(call_kwargs["video_grid_thw"])
        return noted_grids(call_kwargs, input_ids, self.video_token_id, "Kimi K2.5", "video_grid_thw")

    def token_grids(self, grid_thw: torch.Tensor) -> list[tuple[int, int, int]]:
        return [(t, h // self.merge, w // self.merge) for t, h, w in grid_thw.tolist()]

    def note_encoded(self, output, encoder_args):
        output[compat.ENCODED_GRIDS] = self.token_grids(encoder_args["video_grid_thw"])

    # ------------------------------------------------------------------ encoder
    def _call_videos(self, encoder_args) -> list[list[int]]:
        """Per video of a `get_video_features` call, its chunks' indices among the call's, read off the prompt the
        engine hands over with it."""
        grids = self.token_grids(encoder_args["video_grid_thw"])
        samples = self._videos(encoder_args[compat.PROMPT_IDS], grids)
        return [[chunk for chunk, _, _ in video] for videos in samples for video in videos]

    def frame_signatures(self, encoder_args):
        """Per video, (chunks, patches of a frame, D): each chunk's patch embeddings (no position table), averaged
        over its frames as its features will be."""
        embed = self.vision_tower.patch_embed.proj
        pixels = encoder_args["pixel_values_videos"].to(embed.weight.dtype)
        grid = encoder_args["video_grid_thw"]
        embedded = embed(pixels).flatten(1).split(grid.prod(dim=-1).tolist())
        chunks = [rows.view(t, h * w, -1).mean(dim=0) for rows, (t, h, w) in zip(embedded, grid.tolist())]
        return [torch.stack([chunks[chunk] for chunk in video]) for video in self._call_videos(encoder_args)]

    def encode_frames(self, encode, encoder_args, keep):
        """The kept chunks' patches and grid rows, then every chunk's features in place, the dropped ones zeros."""
        args = {name: value for name, value in encoder_args.items() if name != compat.PROMPT_IDS}
        videos = self._call_videos(encoder_args)
        kept = sorted(video[unit] for video, units in zip(videos, keep) for unit in units.tolist())
        grid = args["video_grid_thw"]
        counts = grid.prod(dim=-1).tolist()
        firsts = [0, *itertools.accumulate(counts)]
        rows = torch.cat([torch.arange(firsts[chunk], firsts[chunk] + counts[chunk]) for chunk in kept])
        pixels = args["pixel_values_videos"]
        output = encode(**{**args, "pixel_values_videos": pixels[rows.to(pixels.device)], "video_grid_thw": grid[kept]})
        features, encoded, first = iter(output.pooler_output), set(kept), output.pooler_output[0]
        output.pooler_output = tuple(
            next(features) if chunk in encoded else first.new_zeros(h * w, first.shape[-1])
            for chunk, (_, h, w) in enumerate(self.token_grids(grid))
        )
        return output

    # ------------------------------------------------------------------ tower attention
    def tower_attention(self):
        return self.vision_tower.layers[-1].attn

    def tower_attention_received(self, call):  # (rows,): attention runs inside each chunk
        attention, hidden = self.tower_attention(), call.argument("hidden_states", 0)
        cos, sin = (table[:, None].float() for table in call.kwargs["position_embeddings"])
        queries, keys = (
            rotate(projection(hidden).unflatten(-1, (attention.num_heads, -1)).float(), cos, sin).transpose(0, 1)
            for projection in (attention.q_proj, attention.k_proj)
        )
        return packed_attention_received(queries, keys, call.kwargs["cu_seqlens"])

    def tower_token_scores(self, records, input_ids, standing=None):
        """Per chunk encoded, its tokens' scores: the mean over the 2 × 2 patches of each, in every frame of the
        chunk, as the tower pools them."""
        units, grid, side = [], None, self.merge
        for call in records:
            if call.kind == "tower":
                grid = call.argument("grid_thw", 1).tolist()
                continue
            received = self.tower_attention_received(call).split([t * h * w for t, h, w in grid])
            for scores, (t, h, w) in zip(received, grid):
                units.append(scores.view(t, h // side, side, w // side, side).mean(dim=(0, 2, 4)).flatten())
        return units
