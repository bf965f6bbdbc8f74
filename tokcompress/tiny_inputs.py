"""Prompts and pixels for the tiny models (tokcompress.tiny), as each family's processor lays out a video, over a
byte-level vocabulary: ids 0-255 are raw UTF-8 bytes, 256+ the special tokens the models need."""

from __future__ import annotations

import math

import torch

from .engine import compat
from .video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_video_pixels,
    gemma4_pixels,
    llava_onevision_pixels,
    minicpm_v_pixels,
    molmo2_pixels,
    nemotron_h_omni_pixels,
    qwen_vl_pixels,
    resize_normalize,
)

PAD, IMAGE, VIDEO, VISION_START, VISION_END = 256, 257, 258, 259, 260
VIDEO_START, VIDEO_END = 262, 263  # GLM-4.1V's video span (261 is the tiny checkpoint's end of turn)
VOCAB = 264
AUDIO, AUDIO_START, AUDIO_END = 264, 265, 266  # Qwen2.5-Omni's audio placeholder and span (its tiny vocabulary: 267)
GEMMA4_AUDIO_BINS = 32  # mel bins of tiny Gemma 4's audio (its subsampling keeps bins / 4 after two stride-2 convs)
QWEN3_LAYOUT = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "cosmos3_omni", "cohere_compass")  # Qwen3-VL's


def text_ids(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def decode(ids) -> str:
    """Byte-level decode; tokens that are not printable ASCII show as their id, e.g. <215>."""
    return "".join(chr(i) if 32 <= i < 127 else f"<{i}>" for i in ids)


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask for a batch of prompts of different lengths."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    return ids, mask


def prompt(video: list[int], question: str, newline: bool = True) -> list[int]:
    """One chat prompt's ids: the video's, then the question (on a line of its own)."""
    return text_ids("user: ") + video + text_ids(("\n" if newline else "") + f"{question}\nassistant:")


def packed_inputs(rows: list[list[int]], patches: list[torch.Tensor], grids: list[torch.Tensor]) -> dict:
    """The left-padded prompts and their videos' flattened patches and grids (the Qwen-VL processors' kind)."""
    ids, mask = left_pad(rows)
    return {
        "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(patches),
        "video_grid_thw": torch.cat(grids),
    }


def frame_batch_video(config, clip: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(placeholder tokens, `pixel_values_videos`) of one video for the families whose tower encodes frames as
    images, as their processors make them."""
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    if config.model_type == "llava_onevision":  # ½ bilinear pooling, one newline after the video
        return clip.shape[0] * math.ceil(side / 2) ** 2 + 1, llava_onevision_pixels(clip, vision.image_size)
    if config.model_type == "llava_next_video":  # CLS dropped, pooled with the configured stride
        return clip.shape[0] * (side // config.spatial_pool_stride) ** 2, clip_video_pixels(clip, vision.image_size)
    if config.model_type == "video_llava":  # CLS kept, no pooling
        return clip.shape[0] * (side * side + 1), clip_video_pixels(clip, vision.image_size)
    raise ValueError(f"{config.model_type!r} does not encode a video's frames as images")


def frame_batch_inputs(model, frames: torch.Tensor | list[torch.Tensor], questions: str | list[str]) -> dict:
    """Model inputs for one video per prompt; all videos of a batch have the same frame count (as in HF)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    if len({len(clip) for clip in frames}) > 1:
        raise ValueError(
            f"{model.config.model_type} takes a batch of videos as one (videos, frames, ...) tensor, so its videos "
            f"need the same frame count (got {[len(clip) for clip in frames]}): sample each clip to one count, or "
            "use a family that packs videos (qwen2_5_vl, qwen3_vl, glm4v, ...)"
        )
    rows, pixels = [], []
    for clip, question in zip(frames, questions):
        placeholders, clip_pixels = frame_batch_video(model.config, clip)
        rows.append(prompt([VIDEO] * placeholders, question))
        pixels.append(clip_pixels)
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels)}


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


def internvl_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], image_size: int = 84, smolvlm: bool = False
) -> dict:
    """Model inputs for one video per prompt, as InternVL's processor lays a video out: each frame an image,
    `FrameN: <img>` + its tokens + `</img>` on its own line (vision start / end stand in for <img> / </img>). With
    `smolvlm`, as SmolVLM's: `\nMM:SS:` (its `Frame from ` left out: byte tokens are long) + fake token + global
    token + its tokens + fake token (vision start, 261, vision start), frames padded to the batch's longest video
    with blank images."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    per_frame = (image_size // 28) ** 2
    pixels, rows = [], []
    for clip, question in zip(frames, questions):
        pixels.append(resize_normalize(clip, image_size, image_size, IMAGENET_MEAN, IMAGENET_STD))
        if smolvlm:
            frame = [VISION_START, 261] + [VIDEO] * per_frame + [VISION_START]
            video = sum((text_ids(f"\n00:{i:02d}:") + frame for i in range(len(clip))), [])
        else:
            frame = [VISION_START] + [VIDEO] * per_frame + [VISION_END]
            video = sum((text_ids(f"Frame{i + 1}: ") + frame + text_ids("\n") for i in range(len(clip))), [])
        rows.append(prompt(video, question, newline=False))
    ids, mask = left_pad(rows)
    if smolvlm:  # (batch, images, 3, H, W), shorter videos padded with all-zero images, which the model skips
        longest = max(len(clip) for clip in pixels)
        padded = torch.stack([torch.cat([p, p.new_zeros(longest - len(p), *p.shape[1:])]) for p in pixels])
        return {"input_ids": ids, "attention_mask": mask, "pixel_values": padded}
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat(pixels)}


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


def gemma4_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], fps: float = 2.0,
    sizes: list[tuple[int, int]] | None = None, max_patches: int = 48, audio_frames: int | None = None,
    unified: bool = False,
) -> dict:
    """Model inputs for one video per prompt as Gemma 4's processor lays them out: per frame `MM:SS <boi>` + its
    tokens + `<eoi>`, frames joined by spaces; 16-px patches ((x, y) positions), 2 × 2 of them a token (96-px
    frames: 3 × 3 tokens, or each video's (height, width) in `sizes`), every frame padded to `max_patches`. With
    `unified`, Gemma 4 Unified's: the 2 × 2 patches merged into one 32-px patch a token, with its (x, y), every frame
    padded to `max_patches` / 4. With `audio_frames` (a multiple of 4), a random track of that many mel frames after
    each video: `<boa>` + a token per 4 frames + `<eoa>` (for `tiny_gemma4(audio=True)`)."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    pixels, positions, counts, rows = [], [], [], []
    for clip, question, (height, width) in zip(frames, questions, sizes or [(96, 96)] * len(frames)):
        patches, xy = gemma4_pixels(clip, height, width, max_patches // 4, 32) if unified else gemma4_pixels(
            clip, height, width, max_patches
        )
        pixels.append(patches)
        positions.append(xy)
        t = len(clip)
        counts.append(t)
        stamps = [f"{' ' if i else ''}{int(i / fps // 60):02d}:{int(i / fps % 60):02d} " for i in range(t)]
        tokens = [VIDEO] * (height // 32 * (width // 32))
        video_ids = sum((text_ids(stamp) + [VISION_START, *tokens, VISION_END] for stamp in stamps), [])
        if audio_frames is not None:
            video_ids += [AUDIO_START, *[AUDIO] * (audio_frames // 4), AUDIO_END]
        rows.append(prompt(video_ids, question))
    ids, mask = left_pad(rows)
    inputs = {
        "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels),
        "video_position_ids": torch.cat(positions), "num_frames_per_video": torch.tensor(counts),
        "mm_token_type_ids": (ids == VIDEO).long() * 2 + (ids == AUDIO).long() * 3,
    }
    if audio_frames is not None:
        if audio_frames % 4:
            raise ValueError(f"audio_frames must be a multiple of 4 (a token per 4 mel frames), got {audio_frames}")
        track = torch.Generator().manual_seed(0)
        inputs["input_features"] = torch.randn(len(rows), audio_frames, GEMMA4_AUDIO_BINS, generator=track)
        inputs["input_features_mask"] = torch.ones(len(rows), audio_frames, dtype=torch.bool)
    return inputs


def molmo2_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], fps: float = 2.0, size: int = 84,
    pooling: int = 2, per_video_pooling: bool = True,
) -> dict:
    """Model inputs for one video per prompt as Molmo2's processor lays them out: per frame `t.t ` + frame start +
    its tokens + frame end, frames joined by spaces; 14-px patches of size² frames, `pooling` × `pooling` of them a
    token (84 px, 2: 3 × 3 tokens), each token's patches listed in `video_token_pooling` (-1 where the grid is
    padded) - within its video (`per_video_pooling`, as transformers ≥ 5.24 read them) or across the batch's."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    cells = -(-size // 14 // pooling)  # tokens across (and down) a frame
    pixels, pooled, grids, rows, offset = [], [], [], [], 0
    for clip, question in zip(frames, questions):
        patches, windows = molmo2_pixels(clip, size, pooling)
        pixels.append(patches)
        pooled.append(torch.where(windows >= 0, windows + offset, -1))
        offset += 0 if per_video_pooling else patches.shape[:2].numel()
        grids.append([len(clip), cells, cells])
        frame = [VIDEO_START, *[VIDEO] * (cells * cells), VIDEO_END]
        video = sum((text_ids(f"{' ' if i else ''}{i / fps:.1f} ") + frame for i in range(len(clip))), [])
        rows.append(prompt(video, question))
    ids, mask = left_pad(rows)
    return {
        "input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels),
        "video_token_pooling": torch.cat(pooled), "video_grids": torch.tensor(grids),
        "mm_token_type_ids": torch.isin(ids, torch.tensor([VIDEO, VIDEO_START, VIDEO_END])).long(),
    }


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


def nemotron_h_omni_inputs(
    frames: torch.Tensor | list[torch.Tensor], questions: str | list[str], size: tuple[int, int] = (96, 96),
    fps: float = 2.0,
) -> dict:
    """Model inputs for one video per prompt as Nemotron-H Omni's processor lays them out: per tubelet of two frames
    `Frame 1 sampled at 0.00 seconds and frame 2 sampled at 0.50 seconds: ` + `<img>` + its tokens + `</img>`,
    tubelets a newline apart; frames of `size` (height, width) in 16-px patches, 2 × 2 of them a token (96 × 96:
    3 × 3 tokens). The tiny model takes the vision start / end as `<img>` / `</img>`. As the processor, it stacks the
    videos of a batch: they need as many tubelets each."""
    frames = [frames] if isinstance(frames, torch.Tensor) else frames
    questions = [questions] * len(frames) if isinstance(questions, str) else questions
    tubelet = [VISION_START, *[VIDEO] * (size[0] // 32 * (size[1] // 32)), VISION_END]
    pixels, rows = [], []
    for clip, question in zip(frames, questions):
        pixels.append(nemotron_h_omni_pixels(clip, *size))
        labels = [
            " and ".join(f"{'frame' if i % 2 else 'Frame'} {i + 1} sampled at {i / fps:.2f} seconds"
                         for i in range(start, min(start + 2, len(clip)))) + ": "
            for start in range(0, len(clip), 2)
        ]
        video = sum((text_ids(("\n" if k else "") + label) + tubelet for k, label in enumerate(labels)), [])
        rows.append(prompt(video, question))
    if len({video.shape for video in pixels}) > 1:
        raise ValueError("Nemotron-H Omni stacks a batch's videos: give them as many frames each")
    ids, mask = left_pad(rows)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values_videos": torch.cat(pixels)}


def video_inputs(model, frames: torch.Tensor | list[torch.Tensor], questions: str | list[str]) -> dict:
    """Inputs for one video per prompt for any tiny model (lists make a left-padded batch)."""
    if model.config.model_type == "qwen2_5_vl":
        return qwen_vl_inputs(frames, questions)
    if model.config.model_type in ("hyperclovax_vision_v2", "exaone4_5"):  # 1-D positions: no token types
        return {k: v for k, v in qwen_vl_inputs(frames, questions).items() if k != "mm_token_type_ids"}
    if model.config.model_type == "llava_onevision1_5":  # one frame a unit (its patch embedding is 2-D), 1-D positions
        inputs = qwen_vl_inputs(frames, questions, temporal_patch_size=1)
        return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    if model.config.model_type in QWEN3_LAYOUT:  # 16 px, 8 fps
        return qwen_vl_inputs(frames, questions, size=128, patch_size=16, fps=8.0)
    if model.config.model_type == "lfm3_vl":  # Qwen3-VL's layout, 1-D positions: no token types
        inputs = qwen_vl_inputs(frames, questions, size=128, patch_size=16, fps=8.0)
        return {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    if model.config.model_type == "cosmos3_edge":  # 16-px patches, one frame a unit, timestamps at 2 fps
        return qwen_vl_inputs(
            frames, questions, size=128, patch_size=16, fps=2.0, temporal_patch_size=1, channels_last=True
        )
    if model.config.model_type == "ernie4_5_vl_moe":
        return ernie_inputs(frames, questions)
    if model.config.model_type in ("internvl", "smolvlm"):
        return internvl_inputs(frames, questions, smolvlm=model.config.model_type == "smolvlm")
    if model.config.model_type in ("glm4v", "glm4v_moe", "glm46v"):
        return qwen_vl_inputs(frames, questions, fps=2.0, glm=True)
    if model.config.model_type == "video_llama_3":
        return video_llama_3_inputs(frames, questions)
    if model.config.model_type in ("gemma4", "gemma4_unified"):
        return gemma4_inputs(frames, questions, unified=model.config.model_type == "gemma4_unified")
    if model.config.model_type in ("muse_glimmer", "muse_spark"):
        return muse_glimmer_inputs(frames, questions)
    if model.config.model_type == "ovis2_5":  # 16-px patches, one frame a unit, the video's tokens in one run
        return qwen_vl_inputs(frames, questions, size=128, patch_size=16, temporal_patch_size=1, siglip_norm=True)
    if model.config.model_type in ("minicpmv4_6", "minicpm_ocr"):
        if model.config.downsample_mode == "4x":  # MiniCPM-OCR's default: a token per 2 × 2 patches
            return minicpm_v_inputs(frames, questions, (112, 112), (1, 2), (112, 56), "4x")
        return minicpm_v_inputs(frames, questions)
    if model.config.model_type == "minicpmv4_7":  # canvas M-RoPE reads the token types
        inputs = minicpm_v_inputs(frames, questions)
        return {**inputs, "mm_token_type_ids": (inputs["input_ids"] == VIDEO).long() * 2}
    if model.config.model_type == "nemotron_h_omni":
        return nemotron_h_omni_inputs(frames, questions)
    if model.config.model_type == "molmo2":
        return molmo2_inputs(frames, questions, per_video_pooling=compat.MOLMO2_POOLING_PER_VIDEO)
    if model.config.model_type in ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker"):
        return qwen_omni_inputs(frames, questions, qwen3=model.config.model_type == "qwen3_omni_moe_thinker")
    return frame_batch_inputs(model, frames, questions)
