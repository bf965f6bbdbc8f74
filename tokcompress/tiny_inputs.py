"""Prompts and pixels for the tiny models (tokcompress.tiny), as each family's processor lays out a video, over a
byte-level vocabulary: ids 0-255 are raw UTF-8 bytes, 256+ the special tokens the models need. Here the vocabulary,
the prompt helpers and the families whose tower encodes a video's frames as a batch of images; `tiny_packed_inputs`
those whose tower packs them into one sequence."""

from __future__ import annotations

import math

import torch

from .video import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    clip_video_pixels,
    gemma4_pixels,
    llava_onevision_pixels,
    molmo2_pixels,
    nemotron_h_omni_pixels,
    resize_normalize,
)

PAD, IMAGE, VIDEO, VISION_START, VISION_END = 256, 257, 258, 259, 260
VIDEO_START, VIDEO_END = 262, 263  # GLM-4.1V's video span (261 is the tiny checkpoint's end of turn)
VOCAB = 264
AUDIO, AUDIO_START, AUDIO_END = 264, 265, 266  # Qwen2.5-Omni's audio placeholder and span (its tiny vocabulary: 267)
GEMMA4_AUDIO_BINS = 32  # mel bins of tiny Gemma 4's audio (its subsampling keeps bins / 4 after two stride-2 convs)


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
