"""Prompts and pixels for the tiny models whose tower packs a video's frames into one sequence (tokcompress.tiny's
`packed`: the Qwen-VL families, ERNIE-4.5-VL, VideoLLaMA3, Muse Glimmer, the Qwen omni thinkers, MiniCPM-V, Kimi
K2.5), as
each family's processor lays out a video; `tiny_inputs` holds the vocabulary and the other families'."""

from __future__ import annotations

import torch

from .tiny_inputs import (
    AUDIO,
    AUDIO_END,
    AUDIO_START,
    VIDEO,
    VIDEO_END,
    VIDEO_START,
    VISION_END,
    VISION_START,
    left_pad,
    prompt,
    text_ids,
)
from .video import kimi_k25_pixels, minicpm_v_pixels, qwen_vl_pixels


def packed_inputs(rows: list[list[int]], patches: list[torch.Tensor], grids: list[torch.Tensor]) -> dict:
    """The left-padded prompts and their videos' flattened patches and grids (the Qwen-VL processors' kind)."""
    ids, mask = left_pad(rows)
    return {
        "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(patches),
        "video_grid_thw": torch.cat(grids),
    }


def qwen_vl_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: int = 112, patch_size: int = 14,
    fps: float | None = None, glm: bool = False, temporal_patch_size: int = 2, channels_last: bool = False,
    siglip_norm: bool = False,
) -> dict:
    """Model inputs for one video per prompt (videos may have different frame counts), as the Qwen-VL and GLM-4.1V
    processors lay them out: vision start + all the video's tokens + vision end (Qwen2/2.5-VL); given the `fps`,
    each temporal patch on its own: `<t seconds>` + vision start + its tokens + vision end (Qwen3-VL, Qwen3.5,
    Cosmos3 Edge with one frame a patch and `channels_last` pixels; t: the patch's mean frame time); with `glm`,
    video start, then per temporal patch image start + its tokens + image end + its first frame's whole second,
    then video end (GLM-4.1V); `siglip_norm`: pixels normalised with mean and std 0.5 (Ovis2.5, whose video start
    and end the tiny model takes as vision start and end)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, rows = [], [], []
    step = temporal_patch_size
    for clip, question in zip(frames, questions):
        flat, grid = qwen_vl_pixels(
            clip, size, size, patch_size=patch_size, temporal_patch_size=step, channels_last=channels_last,
            siglip_norm=siglip_norm,
        )
        t, h, w = grid[0].tolist()
        patches.append(flat)
        grids.append(grid)
        unit = [VISION_START] + [VIDEO] * (h * w // 4) + [VISION_END]
        if glm:
            seconds = (text_ids(str(int(step * i / (fps or 1)))) for i in range(t))
            video = [VIDEO_START] + sum((unit + second for second in seconds), []) + [VIDEO_END]
        elif fps is None:
            video = [VISION_START] + [VIDEO] * (t * h * w // 4) + [VISION_END]
        else:
            video = sum((text_ids(f"<{(step * i + (step - 1) / 2) / fps:.1f} seconds>") + unit for i in range(t)), [])
        rows.append(prompt(video, question))
    inputs = packed_inputs(rows, patches, grids)
    return {**inputs, "mm_token_type_ids": (inputs["input_ids"] == VIDEO).long() * 2}


def muse_glimmer_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: int = 112, fps: float = 2.0
) -> dict:
    """Model inputs for one video per prompt as Muse Glimmer's processor lays them out: video start, then per
    temporal patch (2 frames) `Time: t.ts` + its tokens, patches joined by a separator (here VISION_START), video
    end; t is the patch's first frame time. Its pixels are 14-px patches in raster order, 2 × 2 of them a token."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, rows = [], [], []
    for clip, question in zip(frames, questions):
        flat, grid = qwen_vl_pixels(clip, size, size, raster=True)
        t, h, w = grid[0].tolist()
        patches.append(flat)
        grids.append(grid)
        units = [text_ids(f"Time: {2 * i / fps:.1f}s") + [VIDEO] * (h * w // 4) for i in range(t)]
        video = [VIDEO_START] + sum((unit + [VISION_START] for unit in units), [])[:-1] + [VIDEO_END]
        rows.append(prompt(video, question))
    return packed_inputs(rows, patches, grids)


def ernie_inputs(frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: int = 112) -> dict:
    """Model inputs for one video per prompt as ERNIE-4.5-VL's processor lays them out: video start + the video's
    tokens (frame pairs, 2 × 2 merged 14-px patches; an odd last frame repeated) + video end, with token types and
    the experts' modality ids (start and end count as video)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, rows = [], [], []
    for clip, question in zip(frames, questions):
        flat, grid = qwen_vl_pixels(torch.cat([clip, clip[-1:]]) if len(clip) % 2 else clip, size, size,
                                    temporal_patch_size=1)
        t, h, w = grid[0].tolist()
        patches.append(flat)
        grids.append(grid)
        rows.append(prompt([VIDEO_START] + [VIDEO] * (t * h * w // 8) + [VIDEO_END], question))
    inputs = packed_inputs(rows, patches, grids)
    ids = inputs["input_ids"]
    video = (ids == VIDEO) | (ids == VIDEO_START) | (ids == VIDEO_END)
    return {**inputs, "mm_token_type_ids": (ids == VIDEO).long() * 2, "moe_mm_token_type_ids": video.long() * 2}


def video_llama_3_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], fps: float = 2.0,
    compression: float | None = None, sizes: list[tuple[int, int]] | None = None,
) -> dict:
    """Model inputs for one video per prompt as VideoLLaMA3's processor lays them out: per frame `Time t.ts:` + its
    tokens (2 × 2 merged 16-px patches; 128-px frames, 4 × 4 tokens, or each video's (height, width) in `sizes`).
    With a `compression` threshold, its `video_compression_mask`: a frame keeps the tokens whose patches differ
    from the previous frame's by more than it (mean |Δ| of normalised pixels × 255), at least one; None: every
    token (compression off)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, masks, rows = [], [], [], []
    for clip, question, (height, width) in zip(frames, questions, sizes or [(128, 128)] * len(frames)):
        flat, grid = qwen_vl_pixels(clip, height, width, patch_size=16, temporal_patch_size=1)
        t, h, w = grid[0].tolist()
        blocks = flat.view(t, h * w // 4, -1)
        kept = torch.ones(t, h * w // 4, dtype=torch.bool)
        if compression is not None:
            kept[1:] = (blocks[1:] - blocks[:-1]).abs().mean(dim=-1) * 255 > compression
            kept[kept.sum(dim=1) == 0, 0] = True
        patches.append(flat)
        grids.append(grid)
        masks.append(kept.flatten())
        video = sum((text_ids(f"Time {i / fps:.1f}s:") + [VIDEO] * int(n) for i, n in enumerate(kept.sum(dim=1))), [])
        rows.append(prompt(video, question))
    extra = {"video_merge_sizes": torch.full((len(grids),), 2), "video_compression_mask": torch.cat(masks)}
    return {**packed_inputs(rows, patches, grids), **extra}


def qwen_omni_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], audio_frames: int | None = None,
    fps: float = 2.0, qwen3: bool = False,
) -> dict:
    """Model inputs for one video per prompt as the Qwen-Omni processors lay them out: vision start + the video's
    tokens + vision end (Qwen2.5-Omni: 112-px frames of 14-px patches; Qwen3-Omni with `qwen3`: 128-px frames of
    16-px patches; 2-frame units of 4 × 4 tokens). With `audio_frames` (mel frames of a random 16-bin track per
    video), its audio in the video (`use_audio_in_video`): vision start + audio start + the units and audio tokens at
    their times (25 a second; Qwen2.5-Omni per 2-second chunk its units, then its audio; Qwen3-Omni each unit at
    its start time) + audio end + vision end."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    size, patch = (128, 16) if qwen3 else (112, 14)
    patches, grids, rows = [], [], []
    for clip, question in zip(frames, questions):
        flat, grid = qwen_vl_pixels(clip, size, size, patch_size=patch)
        t, h, w = grid[0].tolist()
        unit = [VIDEO] * (h * w // 4)
        if audio_frames is None:
            video = unit * t
        else:  # (time in position ids - 25 a second -, is audio, tokens) of each unit and audio token
            units = [(u * 2 / fps * 25, False, unit) for u in range(t)]
            audio = [(i, True, [AUDIO]) for i in range(omni_audio_tokens(audio_frames, qwen3))]
            if qwen3:  # each unit at its start time, before the audio tokens of that time
                ordered = sorted(units + audio, key=lambda item: item[:2])
                video = [AUDIO_START, *(token for *_, tokens in ordered for token in tokens), AUDIO_END]
            else:  # per 2-second chunk its video tokens, then its audio tokens (the processor's chunking)
                video_times = [time for time, _, tokens in units for _ in tokens]
                video_chunks = omni_chunks(video_times, 50)
                audio_chunks = omni_chunks([time for time, *_ in audio], 50)
                video = [AUDIO_START]
                for chunk in range(max(len(video_chunks), len(audio_chunks))):
                    video += [VIDEO] * (len(video_chunks[chunk]) if chunk < len(video_chunks) else 0)
                    video += [AUDIO] * (len(audio_chunks[chunk]) if chunk < len(audio_chunks) else 0)
                video += [AUDIO_END]
        rows.append(prompt([VISION_START, *video, VISION_END], question))
        patches.append(flat)
        grids.append(grid)
    extra = {"video_second_per_grid": torch.full((len(grids),), 2 / fps)}
    if audio_frames is not None:
        generator = torch.Generator().manual_seed(0)
        extra.update(
            input_features=torch.randn(len(grids), 16, audio_frames, generator=generator),
            feature_attention_mask=torch.ones(len(grids), audio_frames, dtype=torch.long), use_audio_in_video=True,
        )
    return {**packed_inputs(rows, patches, grids), **extra}


def omni_chunks(times: list[float], per_chunk: int) -> list[range]:
    """Qwen2.5-Omni's processor's chunks of tokens by time: a chunk ends at the first token at or past its end, and
    the next chunk's end is one chunk further - so a token that jumps two chunk ends (a unit at fps below 1) stands
    in a chunk of its own, the rest of its unit in the next."""
    chunks, start, end = [], 0, per_chunk
    for i, time in enumerate(times):
        if time >= end:
            chunks.append(range(start, i))
            start, end = i, end + per_chunk
    return [*chunks, range(start, len(times))]


def omni_audio_tokens(mel_frames: int, qwen3: bool) -> int:
    """The audio tokens a Qwen-Omni audio encoder makes of `mel_frames`: Qwen2.5-Omni's two stride-2 steps; Qwen3-Omni's
    three per 100-frame window (13 tokens a whole window)."""
    if not qwen3:
        return ((mel_frames - 1) // 2 + 1 - 2) // 2 + 1
    rest = (mel_frames % 100 - 1) // 2 + 1
    return ((rest - 1) // 2 + 1 - 1) // 2 + 1 + mel_frames // 100 * 13


def minicpm_v_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], source: tuple[int, int] = (112, 112),
    slices: tuple[int, int] = (1, 2), tile: tuple[int, int] = (112, 112), mode: str = "16x",
) -> dict:
    """Model inputs for one video per prompt as MiniCPM-V 4.6's processor lays them out: `<image_id>0</image_id>`,
    then per frame `<image>` + its source's tokens + `</image>` and its `slices` (rows × columns) each as `<slice>` +
    its tokens + `</slice>`, rows a newline apart; 14-px patches, a token per 4 × 4 of them (the "16x" `mode`) or
    2 × 2 ("4x"): by default 2 × 2 tokens a view, 12 a frame (its stock window merger runs one attention call per
    2 × 2 window: larger views slow every test). The tiny model takes `<image>` / `</image>` as vision start / end
    and `<slice>` / `</slice>` as video start / end."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    side = 14 * (4 if mode == "16x" else 2)  # pixels a token spans
    source_run = [VISION_START, *[VIDEO] * (source[0] // side * (source[1] // side)), VISION_END]
    tile_run = [VIDEO_START, *[VIDEO] * (tile[0] // side * (tile[1] // side)), VIDEO_END]
    rows_of_tiles = sum((text_ids("\n" if row else "") + tile_run * slices[1] for row in range(slices[0])), [])
    frame = source_run + (rows_of_tiles if slices != (1, 1) else [])
    pixels, sizes, rows = [], [], []
    for clip, question in zip(frames, questions):
        clip_pixels, clip_sizes = minicpm_v_pixels(clip, source, slices, tile)
        pixels.append(clip_pixels)
        sizes.append(clip_sizes)
        rows.append(prompt(text_ids("<image_id>0</image_id>") + frame * len(clip), question))
    ids, mask = left_pad(rows)
    return {
        "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels, dim=-1)[None],
        "target_sizes_videos": torch.cat(sizes),
    }


def kimi_k25_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: int = 112, chunk: int = 2,
    fps: float = 2.0,
) -> dict:
    """Model inputs for one video per prompt as Kimi K2.5's processor lays them out: per chunk of `chunk` frames (the
    processor's `temporal_patch_size`, 4 by default) its first frame's time `HH:MM:SS.mmm`, then
    `<|media_begin|>video<|media_content|>` + its tokens + `<|media_end|>` (the tiny model takes them as vision start,
    video start and vision end); frames of `size` px in 14-px patches, 2 × 2 of them a token."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    patches, grids, rows = [], [], []
    for clip, question in zip(frames, questions):
        flat, grid = kimi_k25_pixels(clip, size, size, temporal_patch_size=chunk)
        patches.append(flat)
        grids.append(grid)
        video = []
        for index, (_, height, width) in enumerate(grid.tolist()):
            milliseconds = round(index * chunk / fps * 1000)
            seconds = milliseconds // 1000
            stamp = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{milliseconds % 1000:03d}"
            video += text_ids(stamp) + [VISION_START, *text_ids("video"), VIDEO_START]
            video += [VIDEO] * (height * width // 4) + [VISION_END]
        rows.append(prompt(video, question))
    return packed_inputs(rows, patches, grids)
