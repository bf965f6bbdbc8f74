"""Decoding real clips: a long clip never sits in memory at full resolution."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tokcompress.video import read_frames, sample_clip

_PEAK_GROWTH = """
import resource
from tokcompress.video import llava_onevision_pixels, read_frames, sample_clip

before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
pixels = llava_onevision_pixels(read_frames(sample_clip("bigbuckbunny.mp4"), 1024, size=(84, 84)), 84)
assert pixels.shape == (1, 1024, 3, 84, 84)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""


def test_a_1024_frame_clip_decodes_in_a_few_hundred_megabytes():
    """1,024 frames of a 1280×720 clip: 2.8 GB as full-resolution uint8, ~90 MB as 84×84 float pixels."""
    result = subprocess.run([sys.executable, "-c", _PEAK_GROWTH], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout) < 400, f"peak memory grew by {float(result.stdout):.0f} MB"


def test_resizing_while_decoding_equals_resizing_afterwards():
    path = sample_clip("bikes.mp4")
    full = read_frames(path, 12)
    resized = torch.nn.functional.interpolate(
        full.permute(0, 3, 1, 2), size=(56, 70), mode="bilinear", antialias=True, align_corners=False
    ).permute(0, 2, 3, 1)
    assert torch.equal(read_frames(path, 12, size=(56, 70)), resized)


def test_asking_for_more_frames_than_the_clip_has_repeats_frames_and_says_so():
    path = sample_clip("carphone_pristine.mp4")  # 120 frames
    with pytest.warns(UserWarning, match="has 120 frames, so 80 of the 200 asked for repeat others"):
        frames = read_frames(path, 200, size=(36, 44))
    indices = torch.linspace(0, 119, 200).round().long()
    assert frames.shape == (200, 36, 44, 3)
    repeated = (indices[1:] == indices[:-1]).nonzero().squeeze(1)
    assert len(repeated) == 80 and all(torch.equal(frames[i], frames[i + 1]) for i in repeated.tolist())
    assert torch.equal(frames[indices == 60][0], read_frames(path, 3, size=(36, 44))[1])  # the middle frame


def test_reading_what_is_not_a_video_says_what_is_wrong(tmp_path):
    """A missing path, a file decord cannot open as a video and no frames at all: errors a caller can act on (decord's
    own are bare RuntimeErrors, or its DECORDError for a file without a video stream)."""
    with pytest.raises(FileNotFoundError, match="no such video file"):
        read_frames(tmp_path / "missing.mp4", 4)
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    with pytest.raises(ValueError, match=f"cannot decode {not_a_video} as a video"):
        read_frames(not_a_video, 4)
    with pytest.raises(ValueError, match="num_frames must be at least 1, got 0"):
        read_frames(sample_clip("bikes.mp4"), 0)
