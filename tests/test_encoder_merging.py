"""The in-encoder stage: frames (EarlyTom) or tokens inside each frame (vid-TLDR) folded together between
vision-tower layers, on the families whose tower encodes a video's frames as a batch; elsewhere the tower
encodes every frame."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

import tokcompress
from tokcompress.adapters import ADAPTERS, adapter_for
from tokcompress.adapters.base import Adapter
from tokcompress.engine.folding import BATCHED as BATCHED_TOWER
from tokcompress.engine.folding import PACKED as PACKED_TOWER
from tokcompress.engine.rows import PackedRows
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
from tokcompress.methods.base import TowerTokens
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
from .test_fidelity import features

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


# ---------------------------------------------------------------------------------------------- vid-TLDR


def batched_tower_pass(model, method, inputs):
    """A `generate` call under `method` in a batched tower: per layer, the tokens entering it; the attention masks
    its layer 1 got; the tower's rows as its layers left them (its last_hidden_states, or what its pooler reads);
    the stats."""
    adapter = adapter_for(model)
    masks, outputs = [], []

    def rows_read_out(module, args, kwargs):
        outputs.append(args[0] if args else kwargs["hidden_states"])

    with tokcompress.compress(model, method) as handle:  # the patch's hooks first, then these
        hooks = [
            adapter.tower_layer_attention(adapter.tower_layers()[0][1]).register_forward_pre_hook(
                lambda m, a, k: masks.append(k.get("attention_mask")), with_kwargs=True
            ),
            *[readout.register_forward_pre_hook(rows_read_out, with_kwargs=True)
              for readout in adapter.tower_readouts()],
        ]
        if not adapter.tower_readouts():
            hooks.append(adapter.vision_tower.register_forward_hook(
                lambda m, a, out: outputs.append(out.last_hidden_state)))
        try:
            tokens = rows_entering_tower_layers(model, lambda: generate(model, inputs, max_new_tokens=2), dim=1)
        finally:
            for hook in hooks:
                hook.remove()
    return tokens, masks, outputs, handle.stats


@pytest.mark.parametrize("family", BATCHED)
def test_vidtldr_leaves_the_later_tower_layers_fewer_tokens_and_expands_the_output_back(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    tokens, masks, projected, stats = batched_tower_pass(model, VidTLDR(ratio=0.3), inputs)
    (features,) = projected  # the model's own selection and pooling see every tower token, merged ones repeated
    units = 8 // TINY[family].frames_per_unit  # Nemotron-H Omni: tubelets of two frames
    assert features.shape[:2] == (units, tokens[0])
    assert len(torch.unique(features[0], dim=0)) == tokens[1] - round(0.114 * tokens[1])  # merged after layer 1 too
    fixed = adapter_for(model).tower_prefix_tokens
    real = (adapter_for(model).tower_real_tokens(inputs) or tokens[:1])[0]  # Gemma 4: its padding goes too
    assert tokens[1] == real - round(0.255 * real) and 0 < stats.samples[0].encoder_ratio < 1
    (mask,) = masks  # layer 1 attends with log(size) on its keys: sizes are positive, and the tokens ahead of the
    # patches (a CLS; RADIO's class and register tokens) stand alone
    assert mask.shape == (units, 1, 1, tokens[1]) and torch.isfinite(mask).all()
    assert (mask[..., :fixed] == 0).all()
    assert abs(stats.achieved_ratio - 0.3) * stats.visual_in <= 1


@pytest.mark.parametrize(
    "family",
    [
        family for family in
        ("qwen2_5_vl", "qwen3_vl", "glm4v", "video_llama_3", "cosmos3_edge", "muse_glimmer", "ovis2_5",
         "llava_onevision1_5")
        if family in TINY  # Ovis2.5, LLaVA-OV-1.5: transformers 5.25+
    ],
)
def test_vidtldr_in_a_packed_tower_runs_later_layers_on_the_kept_tokens_in_their_places(family, clip, monkeypatch):
    """After layer 0 every temporal patch keeps 48 of its 64 rows: layer 1 gets exactly those rows' rotary rows
    (Cosmos3 Edge's tower has none) and attention segments (Qwen2.5-VL here windowed: 4×4-patch windows that lost
    some rows; Qwen3-VL, GLM: each unit whole) and attends with log(size) on each key (proportional attention,
    through ours: the stock attention takes no bias), and the readout (the merger; GLM's post-norm) reads all 64
    rows again, the folded
    ones repeating their kept token (Muse Glimmer: its last layer's output, before the tower leaves window order;
    Ovis2.5: its last layer's output, which its visual tokenizer reads; LLaVA-OV-1.5: a class row more per unit, which
    stays as it is, and its last layer's output, before the tower splits the class rows off)."""
    from tokcompress.engine import compat

    model = model_for(family)
    adapter = adapter_for(model)
    visual, (blocks, _) = adapter.vision_tower, adapter.tower_layers()
    attention = [adapter.tower_layer_attention(block) for block in blocks]
    if family == "qwen2_5_vl":
        monkeypatch.setattr(visual, "fullatt_block_indexes", [])
    inputs = inputs_for(family, clip, "What is moving?")
    method = VidTLDR(ratio=0.3, merge_schedule="0.25")
    plans = []
    merge = method.merge_in_encoder_tokens
    monkeypatch.setattr(method, "merge_in_encoder_tokens", lambda *a: plans.append(merge(*a)) or plans[-1])

    def layer_one_and_merger_inputs(patched: bool):
        seen = {}
        with tokcompress.compress(model, method) if patched else contextlib.nullcontext(), torch.no_grad():
            hooks = [  # after the patch's: they see what it hands on
                blocks[1].register_forward_pre_hook(
                    lambda m, a, k: seen.update(rows=a[0].shape[0],
                                                segments=k["cu_seqlens"] if "cu_seqlens" in k else a[1],
                                                rotary=(k.get("position_embeddings") or (None,))[0],
                                                longest=k.get("max_seqlen")),
                    with_kwargs=True),
                adapter.tower_readouts()[0].register_forward_pre_hook(lambda m, a: seen.update(merger=a[0]))
                if adapter.tower_readouts() else blocks[-1].register_forward_hook(  # Muse, Ovis: expanded there
                    lambda m, a, out: seen.update(merger=out)),
                *(attention[layer].register_forward_pre_hook(
                    lambda m, a, k, layer=layer: seen.update({f"bias{layer}": k.get(compat.KEY_BIAS)}),
                    with_kwargs=True) for layer in (0, 1)),
                attention[1].register_forward_pre_hook(
                    lambda m, a, k: seen.update(implementation=m.config._attn_implementation), with_kwargs=True),
            ]
            try:
                model.model.get_video_features(**video_encoder_inputs(inputs))
            finally:
                for hook in hooks:
                    hook.remove()
        return seen

    stock, folded = layer_one_and_merger_inputs(False), layer_one_and_merger_inputs(True)
    (plan,) = plans
    units, tokens = plan.merge_into.shape
    fixed = adapter.tower_prefix_tokens
    kept = 48 + fixed
    assert plan.keep.shape == (units, kept) and folded["rows"] == units * kept
    assert (plan.keep[:, :fixed] == 0).all() and (plan.merge_into[:, :fixed] == 0).all()  # the class row stands alone
    origin = (torch.arange(units)[:, None] * tokens + plan.keep).flatten()  # the kept tokens' original rows
    if adapter.tower_rotary:
        torch.testing.assert_close(folded["rotary"], stock["rotary"][origin], rtol=0, atol=0)
    window = torch.searchsorted(stock["segments"][1:], origin, right=True)
    lengths = torch.bincount(window, minlength=len(stock["segments"]) - 1)
    assert folded["segments"].tolist() == [0, *lengths[lengths > 0].cumsum(0).tolist()]
    if stock["longest"] is not None:  # the longest segment left: the fused kernel sizes its grid by it (Muse
        assert folded["longest"] == int(lengths.max())  # Glimmer's layers take none: it reads the segments)
    if family == "qwen2_5_vl":
        assert len(folded["segments"]) == len(stock["segments"]) > units + 1  # windows, every one still there
    assert folded["merger"].shape == stock["merger"].shape
    merged_rows = folded["merger"].view(units, tokens, -1)
    assert all(len(torch.unique(frame, dim=0)) == kept for frame in merged_rows)
    assert stock["implementation"] == "sdpa" and folded["implementation"] == compat.SEGMENT_ATTENTION
    assert folded["bias0"] is None and stock["bias1"] is None
    sizes = torch.zeros(units, kept).scatter_add(1, plan.merge_into, plan.weight)  # size × saliency of what folded
    torch.testing.assert_close(folded["bias1"], sizes.log().flatten())  # each kept token's, in row order


@pytest.mark.parametrize("family", [f for f in FOLDING if ADAPTERS[f].tower_readouts is not Adapter.tower_readouts])
def test_a_towers_outputs_keep_their_stock_shapes_whatever_folds_where_it_reads_them_out(family, clip):
    """Folding three quarters of every unit's rows away leaves as many rows as a 2 × 2 readout makes: only the
    outputs that hold the layers' rows (their hidden states and attention outputs) expand back (GLM's downsampled,
    VideoLLaMA3's and Gemma 4's pooled last_hidden_state stay as the tower read them out)."""
    model = model_for(family)
    encode = {**video_encoder_inputs(inputs_for(family, clip, "What?")), "output_hidden_states": True,
              "output_attentions": True}
    with torch.no_grad():
        stock = model.model.get_video_features(**encode)
        with tokcompress.compress(model, "vidtldr", ratio=0.3, merge_schedule="0.5,0.5"):
            folded = model.model.get_video_features(**encode)
    for key in ("last_hidden_state", "pooler_output", "hidden_states", "attentions"):
        assert shapes(stock[key]) == shapes(folded[key]), key


def shapes(value) -> list[tuple[int, ...]]:
    """The shapes of the tensors in an output, in order (nested tuples and lists: per layer, per window; the Nones
    of layers that recorded no attention weights - sdpa's - left out)."""
    if isinstance(value, (tuple, list)):
        return [shape for part in value for shape in shapes(part)]
    return [] if value is None else [tuple(value.shape)]


def test_a_packed_tower_refuses_kept_rows_out_of_their_order():
    """Attention segments are rebuilt from the remaining rows' order: a method keeping rows unsorted is refused."""
    rows = PackedRows(4)
    with pytest.raises(ValueError, match="must be sorted"):
        rows.fold(torch.tensor([2, 1]), torch.tensor([1, 0, -1, -1]))
    rows.fold(torch.tensor([1, 2]), torch.tensor([0, 0, 1, -1]))
    assert rows.expand(torch.tensor([[5.0], [7.0]])).flatten().tolist() == [5.0, 5.0, 7.0, 0.0]


def test_vidtldr_refuses_a_flash_attention_tower(monkeypatch):
    model = model_for("llava_onevision")
    monkeypatch.setattr(model.model.vision_tower.config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="float attention mask"):
        tokcompress.patch(model, VidTLDR(ratio=0.3))


def vidtldr_published_merge(tokens: torch.Tensor, sharpness: torch.Tensor, merges: int) -> dict[int, tuple[int, float]]:
    """One frame, no CLS: per source token, (its destination, its weight), by the published steps."""
    values = sharpness.tolist()
    s = [(v - min(values)) / (max(values) - min(values)) for v in values]
    mean = sum(s) / len(s)
    background = [v < mean for v in s]
    top = max(v - mean for v in s)
    s = [0.0 if bg else (v - mean) / top for v, bg in zip(s, background)]
    best = {}
    for a in range(0, len(tokens), 2):
        similarity = {b: float(torch.cosine_similarity(tokens[a], tokens[b], dim=0)) for b in range(1, len(tokens), 2)}
        partner = max(similarity, key=lambda b: (similarity[b], -b))
        best[a] = (similarity[partner], partner)
    sources = sorted(best, key=lambda a: -best[a][0])[:merges]
    return {a: (best[a][1], s[a]) for a in sources}


@pytest.mark.parametrize("fixed", [0, 1])
def test_vidtldr_merges_the_best_matched_even_tokens_weighted_by_saliency_as_published(fixed):
    tokens, sharpness = features(2, 13, 8, seed=11), features(2, 13, seed=12)
    frames = TowerTokens(tokens, torch.ones(2, 13), 0, 4, fixed, 13, None, sharpness=lambda: sharpness, heads=None)
    folding = VidTLDR().merge_in_encoder_tokens(frames)
    merge_into, weight = folding.merge_into, folding.weight
    merges = round(0.255 * 13)
    for row in range(2):
        expected = vidtldr_published_merge(tokens[row, fixed:], sharpness[row, fixed:], merges)
        kept = [t for t in range(13) if t - fixed not in expected or t < fixed]
        assert folding.keep[row].tolist() == kept
        for token in range(13):
            destination, factor = expected.get(token - fixed, (token - fixed, 1.0)) if token >= fixed else (token, 1.0)
            assert int(merge_into[row, token]) == kept.index(destination + fixed if token >= fixed else token)
            assert float(weight[row, token]) == pytest.approx(factor, abs=1e-6)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "exaone4_5"])
def test_a_packed_tower_at_ratio_1_attends_as_its_own_implementation_whatever_the_ratio_was(family, clip):
    """Proportional attention needs ours in a packed tower (one sdpa call per window, with the keys' log(size)), but
    only while tokens fold: at ratio 1 the tower keeps its own (here eager), so the logits are the stock ones bit for
    bit, before and after the handle's ratio went below 1 and back."""
    model = model_for(family, "eager")
    inputs = inputs_for(family, clip, "What is moving?")
    tower = adapter_for(model).vision_tower.config
    with torch.no_grad():
        stock = model(**inputs).logits
        with tokcompress.compress(model, "vidtldr", ratio=1.0) as handle:
            assert tower._attn_implementation == "eager"
            torch.testing.assert_close(model(**inputs).logits, stock, rtol=0, atol=0)
            handle.ratio = 0.3
            assert tower._attn_implementation != "eager"
            assert handle.stats.samples[0].encoder_ratio == 1  # the last forward's, at ratio 1
            model(**inputs)
            assert handle.stats.samples[0].encoder_ratio < 1
            handle.ratio = 1.0
            torch.testing.assert_close(model(**inputs).logits, stock, rtol=0, atol=0)
        assert tower._attn_implementation == "eager"
