"""The in-encoder stage: frames (EarlyTom) or tokens inside each frame (vid-TLDR) folded together between
vision-tower layers, on the families whose tower encodes a video's frames as a batch; elsewhere the tower
encodes every frame. Frames folding and the stage's composition here; tokens folding in
test_encoder_token_folding.py."""

from __future__ import annotations

import threading

import pytest
import torch

import tokcompress
from tokcompress.adapters import ADAPTERS, adapter_for
from tokcompress.engine.folding import BATCHED as BATCHED_TOWER
from tokcompress.engine.folding import PACKED as PACKED_TOWER
from tokcompress.methods import (
    Compose,
    EarlyTom,
    EncoderOnly,
    FastV,
    FlowCut,
    FrameDedup,
    FrameFusion,
    VidTLDR,
    VisionZip,
)
from tokcompress.methods.earlytom import frame_choice_groups, frame_segments, frame_similarities, middle_merges
from tokcompress.methods.selection import top_tokens_per_group

from .conftest import (
    FAMILIES,
    TINY,
    generate,
    inputs_for,
    logits,
    model_for,
    multimodal,
    shorter,
    video_encoder_inputs,
)
from .test_equivalence import assert_logits_of_the_llm_fed_only

BATCHED = [f for f in FAMILIES if ADAPTERS[f].tower_frames == BATCHED_TOWER]
FOLDING = [f for f in FAMILIES if ADAPTERS[f].tower_frames is not None]  # towers that can fold frames


def still(clip: torch.Tensor) -> torch.Tensor:
    return clip[:1].expand(8, -1, -1, -1).contiguous()


def rows_entering_tower_layers(model, run, dim: int = 0) -> list[int]:
    """Per tower layer, the size of dimension `dim` of its input while `run()` runs (0: frames, 1: tokens)."""
    layers, _ = adapter_for(model).tower_layers()
    seen: list[int] = []
    hooks = [layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[dim])) for layer in layers]
    try:
        run()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def frames_entering_tower_layers(model, inputs, run) -> list[int]:
    """Per tower layer, the frame units in its input while `run()` runs (a packed tower: its rows over a unit's)."""
    rows_per_unit, adapter = 1, adapter_for(model)
    if adapter.tower_frames == PACKED_TOWER:  # a unit: one grid step of h·w rows, or two (ERNIE-4.5-VL)
        _, height, width = inputs["video_grid_thw"][0].tolist()
        rows_per_unit = height * width * adapter.temporal_merge
    return [rows // rows_per_unit for rows in rows_entering_tower_layers(model, run)]


@pytest.mark.parametrize("family", FOLDING)
def test_folded_frames_leave_the_later_tower_layers_fewer_frames_to_encode(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, [still(clip), still(clip)], ["What is here?", "Describe it."])
    with tokcompress.compress(model, EarlyTom(ratio=0.3)) as handle:
        units = frames_entering_tower_layers(model, inputs, lambda: generate(model, inputs, max_new_tokens=2))
        stats = handle.stats
    assert units[0] == 2 * 8 // TINY[family].frames_per_unit  # two videos of 8 frames
    assert units[-1] < units[0]  # merged after layer 0 of the tiny tower
    assert all(0 < s.encoder_ratio < 1 for s in stats.samples)
    assert abs(stats.achieved_ratio - 0.3) * stats.visual_in <= 1


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
@pytest.mark.parametrize("method", [EarlyTom, VidTLDR])
def test_a_patch_made_at_ratio_one_folds_in_the_tower_once_its_ratio_is_lowered(family, method, clip):
    model = model_for(family)
    inputs = inputs_for(family, still(clip), "What is here?")
    dim = 1 if method is VidTLDR and family == "llava_onevision" else 0  # batched tokens: dimension 1
    with tokcompress.compress(model, method(ratio=1.0)) as handle:
        untouched = rows_entering_tower_layers(model, lambda: generate(model, inputs, max_new_tokens=2), dim)
        handle.ratio = 0.3
        folded = rows_entering_tower_layers(model, lambda: generate(model, inputs, max_new_tokens=2), dim)
        stats = handle.stats
    assert untouched[-1] == untouched[0] and folded[0] == untouched[0] and folded[-1] < folded[0]
    assert stats.samples[0].encoder_ratio < 1


@pytest.mark.parametrize("family", FOLDING)
def test_the_llm_reads_the_frames_that_stood_at_their_original_positions(family, clip):
    """Identical frames fold into identical ones, so the kept tokens' features are the unpatched model's own:
    the LLM fed only those, at their positions, gives the same logits at every step."""
    model = model_for(family)
    inputs = inputs_for(family, still(clip), "What is here?")
    with tokcompress.compress(model, EarlyTom(ratio=0.3)) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        kept, encoder_ratio = handle.stats.samples[0].kept_positions, handle.stats.samples[0].encoder_ratio
    assert encoder_ratio < 1
    assert_logits_of_the_llm_fed_only(model, inputs, kept, out.logits)


@pytest.mark.parametrize(
    ("family", "method"),
    [(family, method) for family in FAMILIES if family not in FOLDING for method in (EarlyTom, VidTLDR)],
)
def test_where_the_tower_cannot_fold_it_encodes_everything_and_the_budget_holds(family, method, clip):
    model = model_for(family)
    inputs = inputs_for(family, still(clip), "What is here?")
    with tokcompress.compress(model, method(ratio=0.3)) as handle:
        generate(model, inputs, max_new_tokens=2)
    assert handle.stats.samples[0].encoder_ratio == 1.0
    assert abs(handle.stats.achieved_ratio - 0.3) * handle.stats.visual_in <= 1


def test_a_packed_tower_runs_its_later_windows_on_the_frames_that_stand_and_reads_out_every_frame(clip, monkeypatch):
    """Qwen2.5-VL with window attention in its last layer too: after identical frame units fold at layer 0,
    layer 1 gets four 4×4-patch windows per unit that stands (and their rotary rows), and the tower's output -
    every unit reading the one it folded into - is the unpatched tower's, bit for bit."""
    model = model_for("qwen2_5_vl")
    monkeypatch.setattr(model.model.visual, "fullatt_block_indexes", [])
    inputs = inputs_for("qwen2_5_vl", still(clip), "What is here?")
    video = {"pixel_values_videos": inputs["pixel_values_videos"], "video_grid_thw": inputs["video_grid_thw"]}
    with torch.no_grad():
        expected = model.model.get_video_features(**video, return_dict=True)
        seen = []
        hook = model.model.visual.blocks[1].register_forward_pre_hook(
            lambda m, args, kwargs: seen.append((args[0].shape[0], kwargs["cu_seqlens"].clone(),
                                                 kwargs["position_embeddings"][0].shape[0])),
            with_kwargs=True)
        try:
            with tokcompress.compress(model, EarlyTom(ratio=0.3)):
                folded = model.model.get_video_features(**video, return_dict=True)
        finally:
            hook.remove()
    (rows, segments, rotary_rows), = seen
    assert rows < 4 * 64 and rows % 64 == 0 and rotary_rows == rows  # 4 units of 8×8 patches, fewer stand
    assert torch.equal(segments, torch.arange(0, rows + 1, 16, dtype=segments.dtype))  # 4×4-patch windows
    assert torch.equal(torch.cat(folded.pooler_output), torch.cat(expected.pooler_output))
    assert torch.equal(folded.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize("family", BATCHED)
@pytest.mark.parametrize("method", [EarlyTom(ratio=0.3), VidTLDR(ratio=0.3), FlowCut(ratio=0.3)], ids=str)
def test_each_video_of_a_batched_tower_call_folds_as_if_encoded_alone(family, method, clip, other_clip):
    """Every video of the call is its own block: what a method folds in one does not depend on the other."""
    model = model_for(family)

    def video_features(frames: list[torch.Tensor]) -> list[torch.Tensor]:
        encode = video_encoder_inputs(inputs_for(family, frames, ["What?"] * len(frames)))
        features = multimodal(model).get_video_features(**encode).pooler_output
        return list(features) if len(features) == len(frames) else list(features.chunk(len(frames)))  # per frame

    with tokcompress.compress(model, method), torch.no_grad():
        together = video_features([clip, other_clip])
        alone = [video_features([frames])[0] for frames in (clip, other_clip)]
    for batched, single in zip(together, alone):
        torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_threads_folding_frames_at_once_each_get_their_own(family, clip):
    """The tower hooks are the patch's; which frames fold is each thread's own encoder call."""
    model = model_for(family)
    prompts = [inputs_for(family, frames, "What is here?") for frames in (still(clip), clip)] * 2
    with tokcompress.compress(model, EarlyTom(ratio=0.3)):
        expected = [generate(model, inputs) for inputs in prompts]
        results: dict[int, torch.Tensor] = {}
        threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, generate(model, prompts[i])))
                   for i in range(len(prompts))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(torch.equal(results[i], expected[i]) for i in range(len(prompts)))


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl"])
def test_a_pre_encoder_method_and_an_in_encoder_one_compose(family, clip):
    """Of 8 frame units whose first repeats, FrameDedup keeps the repeat from the tower and EarlyTom folds some
    of the other 7 inside it."""
    if TINY[family].frames_per_unit == 1:
        frames = torch.cat([clip[:1], clip[:-1]])
    else:  # two-frame units: (0 1) (0 1) (2 3) (4 5) (6 7) (2 3) (4 5) (6 7)
        frames = torch.cat([clip[:2], clip[:2], clip[2:], clip[2:]])
    model = model_for(family)
    inputs = inputs_for(family, frames, "What is here?")
    method = [FrameDedup(ratio=7 / 8, threshold=1.0), EarlyTom(ratio=0.3, tau=-1.0)]  # one segment of 7 units
    with tokcompress.compress(model, method) as handle:
        units = frames_entering_tower_layers(model, inputs, lambda: generate(model, inputs, max_new_tokens=2))
        stats = handle.stats
    assert units[0] == 7 and units[-1] < 7
    assert stats.samples[0].encoder_ratio < 7 / 8
    assert abs(stats.achieved_ratio - 0.3) * stats.visual_in <= 1


@pytest.mark.parametrize("llm_side", [FrameFusion(ratio=0.3), FastV(ratio=0.3), VisionZip(ratio=0.3)])
@pytest.mark.parametrize("family", FOLDING)
def test_the_encoder_stage_of_a_method_alone_composes_with_an_llm_side_one(family, llm_side, clip, other_clip):
    """EarlyTom's folding inside the tower, then an LLM-side method on the frames that stood, one budget
    (VisionZip: ranked by the tower attention of the units that stood, videos of different lengths in a batch)."""
    model = model_for(family)
    inputs = inputs_for(family, still(clip), "What is here?")
    method = [EncoderOnly(EarlyTom(ratio=0.3)), llm_side]
    with tokcompress.compress(model, method) as handle:
        units = frames_entering_tower_layers(model, inputs, lambda: generate(model, inputs, max_new_tokens=2))
        stats = handle.stats
        assert stats.method == f"earlytom@encoder+{llm_side.name}"
        assert units[-1] < units[0] and stats.samples[0].encoder_ratio < 1
        assert abs(stats.achieved_ratio - 0.3) * stats.visual_in <= 1
        clips, questions = [still(clip), shorter(family, other_clip)], ["What is here?", "Who?"]
        together = generate(model, inputs_for(family, clips, questions), max_new_tokens=3)
        for b, (frames, question) in enumerate(zip(clips, questions)):
            assert torch.equal(generate(model, inputs_for(family, frames, question), max_new_tokens=3)[0], together[b])


def test_the_encoder_stage_alone_hands_the_llm_the_frames_that_stood(clip):
    model = model_for("qwen2_5_vl")
    inputs = inputs_for("qwen2_5_vl", still(clip), "What is here?")
    with tokcompress.compress(model, EncoderOnly(EarlyTom(), ratio=0.5)) as handle, torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
        sample = handle.stats.samples[0]
    assert handle.method.stages == ("in_encoder",) and handle.method.method.ratio == 0.5
    assert sample.achieved_ratio == 0.75  # the middle pair of the 4 identical units folded: 3 stood, every token
    assert_logits_of_the_llm_fed_only(model, inputs, sample.kept_positions, out.logits)


@pytest.mark.parametrize("family", [f for f in FOLDING if ADAPTERS[f].tower_token_folding_refused is None])
def test_folding_tokens_in_the_tower_refuses_a_method_that_ranks_by_the_towers_attention(family):
    with pytest.raises(ValueError, match="rows are then of the folded tokens"):
        tokcompress.patch(model_for(family), [EncoderOnly(VidTLDR()), VisionZip(ratio=0.3)])


@pytest.mark.parametrize("family", [f for f in FAMILIES if ADAPTERS[f].tower_frames is None and ADAPTERS[f].has_tower])
def test_a_method_acting_only_inside_a_tower_that_cannot_fold_is_refused_with_the_alternatives(family):
    """InternVL's and SmolVLM's towers encode every image before the prompt is read: an in-encoder stage alone
    would do nothing there, so it is refused (alone or in a composition), naming what does act."""
    for method in ([EncoderOnly(EarlyTom()), FastV(ratio=0.3)], "flowcut@encoder"):
        with pytest.raises(ValueError, match=r"acts only inside the vision tower.*Use (earlytom|flowcut) whole"):
            tokcompress.patch(model_for(family), method, ratio=None)
    tokcompress.patch(model_for(family), "earlytom", ratio=0.3).unpatch()


@pytest.mark.parametrize("family", [f for f in FOLDING if ADAPTERS[f].tower_token_folding_refused])
def test_a_tower_that_folds_only_frames_refuses_a_token_fold_alone_and_leaves_whole_methods_to_the_llm(family, clip):
    """LFM3-VL's convolution layers read every patch of a frame's grid: a token-folding stage alone is refused,
    naming why and what acts; a method whole (vidtldr) runs its LLM-side stage on every token the tower encoded,
    and folding frames (earlytom) leaves the later layers fewer rows, their convolutions the grids of what stands."""
    model = model_for(family)
    for method in ("vidtldr@encoder", "flowcut@encoder"):
        with pytest.raises(ValueError, match=r"cannot fold tokens in .*convolution.*Use (vidtldr|flowcut) whole"):
            tokcompress.patch(model, method, ratio=None)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "vidtldr", ratio=0.3) as handle:
        rows = rows_entering_tower_layers(model, lambda: logits(model, inputs))
    assert len(set(rows)) == 1 and abs(handle.stats.achieved_ratio - 0.3) * handle.stats.visual_in <= 1
    still = clip[:1].expand(8, -1, -1, -1).contiguous()  # identical frames: earlytom folds them after its layer
    with tokcompress.compress(model, "earlytom", ratio=0.3) as handle:
        rows = rows_entering_tower_layers(model, lambda: logits(model, inputs_for(family, still, "What?")))
    assert rows[0] > rows[-1] and handle.stats.samples[0].encoder_ratio < 1


def test_encoder_only_refuses_what_has_no_encoder_stage_or_is_a_composition():
    with pytest.raises(ValueError, match="framefusion acts at no encoder stage"):
        EncoderOnly(FrameFusion())
    with pytest.raises(TypeError, match="one tokcompress method"):
        EncoderOnly(Compose(methods=(FrameDedup(), FrameFusion())))
    with pytest.raises(TypeError, match="one tokcompress method"):
        EncoderOnly("earlytom")


# ---------------------------------------------------------------------------------------------- transcription


def earlytom_published_similarity(frames: torch.Tensor) -> list[list[float]]:
    """Mean over positions of the cosine between two frames' tokens, pair by pair."""
    return [[float(torch.cosine_similarity(a, b, dim=-1).mean()) for b in frames] for a in frames]


def earlytom_published_segments(similarity, tau: float, window: int, ema: float) -> list[tuple[int, int]]:
    """EarlyTom's streaming segmentation (windows of at most `window` frames)."""
    segments, start, smoothed = [], 0, 1.0
    for i in range(1, len(similarity)):
        smoothed = ema * similarity[start][i] + (1 - ema) * smoothed
        if smoothed < tau or i - start >= window:
            segments.append((start, i))
            start, smoothed = i, 1.0
    return segments + [(start, len(similarity))]


def earlytom_published_mixing(similarity, start: int, end: int) -> list[tuple[int, int]]:
    """The mixing walk over a segment's middle frames (pairs merge when ≥ the first-to-last similarity and the
    next pair's)."""
    threshold, middle = similarity[start][end - 1], list(range(start + 1, end - 1))
    pairs = [similarity[middle[j]][middle[j + 1]] for j in range(len(middle) - 1)]
    merges, j = [], 0
    while j < len(pairs):
        if pairs[j] >= threshold and (j + 1 == len(pairs) or pairs[j] >= pairs[j + 1]):
            merges.append((middle[j], middle[j + 1]))
            j += 2
        else:
            j += 1
    return merges


@pytest.mark.parametrize("seed", range(4))
def test_earlytom_segments_and_folds_frames_as_the_published_walk(seed):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(3, 6, 16, generator=generator)
    # three scenes of 5, 4 and 3 frames, each frame its scene plus noise
    frames = torch.cat([base[s] + 0.3 * torch.randn(n, 6, 16, generator=generator) for s, n in enumerate((5, 4, 3))])
    published = earlytom_published_similarity(frames)
    similarity = frame_similarities(frames)
    torch.testing.assert_close(torch.tensor(similarity), torch.tensor(published), rtol=1e-5, atol=1e-6)
    segments = frame_segments(similarity, 0.6, 8, 0.9)
    assert segments == earlytom_published_segments(published, 0.6, 8, 0.9)
    assert len(segments) >= 3
    for start, end in segments:
        assert middle_merges(similarity, start, end) == earlytom_published_mixing(published, start, end)
    reduction = EarlyTom(ratio=0.1).reduce_in_encoder(frames, torch.ones(12), 0, 4)
    folded = [b for start, end in segments for _, b in earlytom_published_mixing(published, start, end)]
    assert sorted(set(range(12)) - set(reduction.keep.tolist())) == sorted(folded)


def test_earlytom_static_frames_keep_the_best_token_of_each_raster_window_and_dynamic_ones_their_best():
    scores = torch.tensor([0.1, 0.9, 0.3, 0.2, 0.8, 0.4, 0.7, 0.6, 0.5, 0.05])
    frames = scores.expand(4, -1).flatten()  # 4 frames of 10 tokens: static / static / dynamic / static
    group, counts = frame_choice_groups(torch.tensor([4, 0, 3, 10]), torch.tensor([True, True, False, True]), 10)
    kept = top_tokens_per_group(frames, group.flatten(), counts).tolist()
    assert [k for k in kept if k < 10] == [1, 4, 6, 8]  # 4 windows: sizes 3, 3, 2, 2, the best of each
    assert [k - 20 for k in kept if 20 <= k < 30] == [1, 4, 6]  # the 3 best
    assert [k - 30 for k in kept if k >= 30] == list(range(10)) and not [k for k in kept if 10 <= k < 20]
