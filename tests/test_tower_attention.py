"""The vision tower's attention as methods read it (VisionZip's cue), and the methods that read it (VisionZip,
FastVID) against their published rules."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import ADAPTERS, adapter_for
from tokcompress.adapters.qwen2_vl import Qwen2VLAdapter
from tokcompress.engine.encoder import TowerCall
from tokcompress.layout import VisualLayout
from tokcompress.methods import FastVID, LayerBudget, VisionZip, build_method
from tokcompress.methods.fastvid import dynamic_segments
from tokcompress.ops import attention_received, density_peak_clusters
from tokcompress.tiny.common import build as build_tiny

from .conftest import (
    COMPRESSING,
    TINY,
    TOWERED,
    generate,
    inputs_for,
    logits,
    model_for,
    multimodal,
    record_pre_llm_calls,
)
from .test_adapters import internvl_images_and_a_video

RECORDING = "tokcompress_test_recording"
_recorded: list[tuple[torch.nn.Module, torch.Tensor]] = []


def _recording_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa that also keeps the attention probabilities it computed (in fp32), under the call's mask (Gemma 4's tower
    masks its padded patches; EXAONE 4.5's has grouped key heads)."""
    keys = repeat_kv(key, query.shape[1] // key.shape[1])
    logits = query.float() @ keys.float().transpose(-1, -2) * (scaling or query.shape[-1] ** -0.5)
    if attention_mask is not None:
        blocked = ~attention_mask if attention_mask.dtype == torch.bool else attention_mask < -1e30
        logits = logits.masked_fill(blocked, float("-inf"))
    _recorded.append((module, logits.softmax(dim=-1)))
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


AttentionInterface.register(RECORDING, _recording_attention)
AttentionMaskInterface.register(RECORDING, sdpa_mask)  # the masks sdpa gets (Gemma 4's tower masks its padding)


def test_attention_received_is_the_mean_or_first_row_of_the_attention_matrix():
    queries, keys = (torch.randn(3, 2, 10, 8, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    probabilities = (queries @ keys.transpose(-1, -2) * 8**-0.5).softmax(dim=-1)  # (B, H, n, n)
    torch.testing.assert_close(attention_received(queries, keys, chunk=3), probabilities.mean(dim=(1, 2)))
    torch.testing.assert_close(attention_received(queries, keys, from_first=True), probabilities[:, :, 0].mean(dim=1))


@pytest.mark.parametrize("family", TOWERED)
def test_the_tower_attention_a_method_reads_is_the_one_the_tower_computed(family, clip):
    """From one recorded call of the layer's attention: the same head-mean attention the tower's own attention
    function computed (the CLS row on CLIP-like towers, the mean over queries elsewhere)."""
    model = model_for(family)
    adapter = adapter_for(model)
    inputs = inputs_for(family, clip, "What is moving?")
    target = adapter.tower_attention()
    calls = []
    hook = target.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(TowerCall("attention", args, kwargs)), with_kwargs=True
    )
    tower_config = adapter.vision_tower.config
    stock, tower_config._attn_implementation = tower_config._attn_implementation, RECORDING
    _recorded.clear()
    try:
        with torch.no_grad():
            logits(model, inputs)
    finally:
        hook.remove()
        tower_config._attn_implementation = stock
    probabilities = [p for module, p in _recorded if module is target]  # per call, or per frame chunk (Qwen)
    (call,) = calls
    with torch.no_grad():
        received = adapter.tower_attention_received(call)
    if adapter.tower_has_cls:
        expected = torch.cat([p[:, :, 0].mean(dim=1) for p in probabilities])
    else:
        expected = torch.cat([p.mean(dim=2).mean(dim=1).flatten() for p in probabilities])
    torch.testing.assert_close(received.flatten(), expected.flatten(), rtol=1e-4, atol=1e-6)


def saliency_of(family, frames=None, inputs=None) -> VisualLayout:
    """The layout, with its tower attention, that VisionZip gets for a prompt (one video of `frames`)."""
    inputs = inputs if inputs is not None else inputs_for(family, frames, "What is moving?")
    method = VisionZip(ratio=0.5)
    calls = record_pre_llm_calls(method)
    with tokcompress.compress(model_for(family), method):
        logits(model_for(family), inputs)
    ((layout, _),) = calls
    return layout


def test_internvl_scores_the_frames_among_the_prompts_images(clip):
    """The tower encodes a lone image, a tiled one and the video's frames in one call: the video's tokens get
    their own frames' scores."""
    mixed = saliency_of("internvl", inputs=internvl_images_and_a_video(clip))
    torch.testing.assert_close(mixed.saliency, saliency_of("internvl", clip[3:6]).saliency)


@pytest.mark.parametrize("family", TOWERED)
def test_each_tokens_tower_attention_is_its_frames_own(family, clip):
    """A frame unit's tokens get the scores its own encoding gives, wherever it sits in the clip: the scores
    follow their units and cells through pooling, windows (Qwen2.5-VL) and the prompt's images (InternVL)."""
    per_unit = TINY[family].frames_per_unit
    full = saliency_of(family, clip)
    for unit in (0, 8 // per_unit - 1):
        frames = clip[unit * per_unit : (unit + 1) * per_unit]
        alone = saliency_of(family, torch.cat([frames, frames]))
        torch.testing.assert_close(full.saliency[full.frame == unit], alone.saliency[alone.frame == 0])


@pytest.mark.parametrize("family", TOWERED)
def test_visionzip_keeps_the_tokens_the_tower_attends_to_most(family, clip):
    """The engine hands VisionZip each token's tower attention, pooled to the LLM's tokens: in every frame the
    dominant tokens it keeps are that frame's most attended ones."""
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    method = VisionZip(ratio=0.5, contextual_share=0.0)
    seen = record_pre_llm_calls(method)
    with tokcompress.compress(model, method) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
    ((layout, reduction),) = seen
    assert layout.saliency is not None and bool((layout.saliency[~layout.is_separator] > 0).all())
    assert abs(sample.achieved_ratio - 0.5) * sample.visual_in <= 1.0
    kept = torch.zeros(layout.num_tokens, dtype=torch.bool)
    kept[reduction.keep] = True
    for frame in torch.unique(layout.frame[~layout.is_separator]).tolist():
        cells = (layout.frame == frame) & ~layout.is_separator  # Video-LLaVA's CLS is kept first, unscored
        in_frame = layout.saliency[cells]
        count = int(kept[cells].sum())
        assert 0 < count < int(cells.sum()) or TINY[family].tokens_per_unit <= 2
        assert set(torch.topk(in_frame, count).indices.tolist()) == set(kept[cells].nonzero().squeeze(1).tolist())


def visionzip_published(features: torch.Tensor, attention: torch.Tensor, dominant: int, contextual: int) -> list[int]:
    """VisionZip on one frame (methods.md §3.4, a tower without CLS): the `dominant` most attended tokens; the
    others, in order, every step-th a target (step = max(1, M // contextual)), each other one joining its most
    similar target (cosine). Per token, the token it ends in."""
    count = len(attention)
    top = sorted(range(count), key=lambda i: (-float(attention[i]), i))[:dominant]
    rest = [i for i in range(count) if i not in top]
    targets = rest[:: max(1, len(rest) // contextual)][:contextual]
    unit = torch.nn.functional.normalize(features, dim=-1)
    destination = {i: i for i in top + targets}
    for i in rest:
        if i not in targets:
            destination[i] = max(targets, key=lambda t: (float(unit[i] @ unit[t]), -t))
    return [destination[i] for i in range(count)]


@pytest.mark.parametrize("seed", range(5))
def test_visionzip_agrees_with_the_published_rule_on_every_frame(seed):
    """Three frames of 36 tokens keeping 13, 12 and 12 (10 / 9 / 9 dominant + 3 contextual): the published
    rule frame by frame, however the frames are batched."""
    generator = torch.Generator().manual_seed(seed)
    features, attention = torch.randn(108, 16, generator=generator), torch.rand(108, generator=generator)
    layout = VisualLayout.from_videos([0], [(3, 6, 6)]).with_saliency(attention)
    method = VisionZip(ratio=37 / 108, contextual_share=0.25)
    reduction = method.reduce_pre_llm(features, layout, LayerBudget(method.ratio, 108, 4))
    keep = reduction.keep.tolist()
    ours = [keep[m] for m in reduction.merge_into.tolist()]
    expected = []
    for frame, dominant in enumerate([10, 9, 9]):
        cells = slice(36 * frame, 36 * (frame + 1))
        expected += [36 * frame + d for d in visionzip_published(features[cells], attention[cells], dominant, 3)]
    assert ours == expected


def test_visionzip_without_the_towers_attention_says_so():
    layout = VisualLayout.from_videos([0], [(1, 2, 2)])
    with pytest.raises(RuntimeError, match="vision tower's attention"):
        VisionZip(ratio=0.5).reduce_pre_llm(torch.randn(4, 8), layout, LayerBudget(0.5, 4, 4))


@pytest.mark.parametrize("family", [f for f in TINY if issubclass(ADAPTERS[f], Qwen2VLAdapter) and TINY[f].mrope])
def test_qwen_tower_scores_are_put_back_in_the_order_the_tower_outputs_its_tokens(family, clip):
    """Qwen2.5-VL's blocks see merged patches in window order; scores go back to the video's order exactly as
    its merged features do (at 168 px: 3 × 3 windows, an order that is not its own inverse)."""
    model = model_for(family)
    adapter = adapter_for(model)
    if family == "qwen2_5_vl":
        inputs = tiny.qwen_vl_inputs(clip, "What is moving?", size=168)
    else:
        inputs = inputs_for(family, clip, "What is moving?")
    merged = []
    tower, outside = adapter.vision_tower, adapter.multimodal_model  # Cosmos3 Edge, ERNIE merge after the tower
    merger = next(getattr(owner, name) for owner, name in ((tower, "merger"), (outside, "projector"),
                                                           (outside, "resampler_model")) if hasattr(owner, name))
    hook = merger.register_forward_hook(lambda module, args, output: merged.append(output))
    try:
        with torch.no_grad():
            features = multimodal(model).get_video_features(
                inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True
            ).pooler_output
    finally:
        hook.remove()
    torch.testing.assert_close(adapter.in_patch_order(merged[0], inputs["video_grid_thw"]), torch.cat(features))


def test_fastvid_cuts_segments_where_the_video_changes():
    steady, other = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.2, 1.0, 0.0])
    frames = torch.stack([steady] * 3 + [other] * 3)
    assert dynamic_segments(frames, segments=2, threshold=0.9) == [[0, 1, 2], [3, 4, 5]]
    assert dynamic_segments(frames, segments=1, threshold=-1.0) == [[0, 1, 2, 3, 4, 5]]
    assert dynamic_segments(frames, segments=8, threshold=0.9) == [[i] for i in range(6)]  # the official c on 6


def fastvid_published(features, attention, frame_of, quotas, segments, threshold, share, stride) -> list[int]:
    """FastVID on one video (methods.md §8) with each frame's retained count given: DySeg cuts, each frame's
    top-attended r − int(r·d) tokens, the segment's contextual count over its anchors (every p-th frame back
    from the last: context · S // ceil(S / p) each), their non-salient tokens' density peaks, every other
    non-salient token of the segment to its most similar peak. Per token, the token it ends in."""
    count, frames = len(frame_of), len(quotas)
    unit = torch.nn.functional.normalize(features, dim=-1)
    means = torch.nn.functional.normalize(torch.stack([features[frame_of == f].mean(0) for f in range(frames)]), dim=-1)
    similarity = [float(means[t] @ means[t + 1]) for t in range(frames - 1)]
    lowest = sorted(range(frames - 1), key=lambda t: (similarity[t], t))[: segments - 1]
    cuts = sorted(set(lowest) | {t for t in range(frames - 1) if similarity[t] < threshold})
    bounds = [0, *(t + 1 for t in cuts), frames]
    destination = {}
    for start, end in zip(bounds[:-1], bounds[1:]):
        others = {}
        for f in range(start, end):
            tokens = [i for i in range(count) if frame_of[i] == f]
            salient = sorted(tokens, key=lambda i: (-float(attention[i]), i))[: quotas[f] - int(quotas[f] * share)]
            destination.update({i: i for i in salient})
            others[f] = [i for i in tokens if i not in salient]
        size = end - start
        anchors = [end - 1 - k * stride for k in range(-(-size // stride))]
        per_anchor = (quotas[start] - (quotas[start] - int(quotas[start] * share))) * size // len(anchors)
        peaks = []
        for anchor in anchors:
            _, centres = density_peak_clusters(features[others[anchor]], per_anchor, neighbours=4)
            peaks += [others[anchor][c] for c in centres.tolist()]
        for f in range(start, end):
            for i in others[f]:
                nearest = max(peaks, key=lambda t: (float(unit[i] @ unit[t]), -peaks.index(t)))
                destination[i] = i if i in peaks else nearest
    return [destination.get(i, -1) for i in range(count)]


@pytest.mark.parametrize("seed", range(4))
def test_fastvid_agrees_with_the_published_rule_on_a_video_with_a_cut(seed):
    """8 frames of 9 tokens, the scene changing after frame 3; 5 tokens a frame: 3 salient, 2 contextual."""
    generator = torch.Generator().manual_seed(seed)
    scenes = torch.randn(2, 16, generator=generator) * 3
    features = torch.cat([scenes[f // 4] + torch.randn(9, 16, generator=generator) for f in range(8)])
    attention = torch.rand(72, generator=generator)
    layout = VisualLayout.from_videos([0], [(8, 3, 3)]).with_saliency(attention)
    method = FastVID(ratio=40 / 72, segments=2, similarity_threshold=0.5, contextual_share=0.4, anchor_stride=2)
    reduction = method.reduce_pre_llm(features, layout, LayerBudget(method.ratio, 72, 4))
    keep = reduction.keep.tolist()
    ours = [keep[m] if m >= 0 else -1 for m in reduction.merge_into.tolist()]
    expected = fastvid_published(features, attention, layout.frame, [5] * 8, 2, 0.5, 0.4, 2)
    assert ours == expected and len(keep) == 40


@pytest.mark.parametrize("ratio", [0.5, 0.7, 0.9])
def test_fastvid_meets_high_ratios_where_anchors_cannot_hold_a_segments_context(ratio):
    """A calm clip of 16 frames in long segments: at high ratios a segment's contextual tokens outnumber its anchor
    frames' non-salient ones; the rest are its other frames' most attended tokens, so the budget is met."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(36, 32, generator=generator) * 3
    features = torch.cat([base + 0.3 * torch.randn(36, 32, generator=generator) for _ in range(16)])
    attention = torch.rand(16 * 36, generator=generator)
    layout = VisualLayout.from_videos([0], [(16, 6, 6)]).with_saliency(attention)
    method = FastVID(ratio=ratio, segments=2)
    budget = LayerBudget(ratio, 16 * 36, 28)
    reduction = method.reduce_pre_llm(features, layout, budget)
    assert reduction.keep.numel() == budget.tokens_before_llm(16 * 36)
    kept_attention = attention[reduction.keep]
    assert kept_attention.mean() > attention.mean()  # the extra ones are the most attended


def test_fastvid_refuses_bad_knobs_and_needs_the_towers_attention():
    with pytest.raises(ValueError, match="contextual_share"):
        FastVID(contextual_share=1.0)
    with pytest.raises(ValueError, match="segments"):
        FastVID(segments=0)
    with pytest.raises(RuntimeError, match="vision tower's attention"):
        FastVID(ratio=0.5).reduce_pre_llm(torch.randn(4, 8), VisualLayout.from_videos([0], [(1, 2, 2)]),
                                          LayerBudget(0.5, 4, 4))


def _variant(family: str, **changes):
    """The family's tiny model with its config changed (same seed: the same weights where the shapes agree)."""
    model = model_for(family)
    config = copy.deepcopy(model.config)
    for name, value in changes.items():
        setattr(config, name, value)
    return build_tiny(type(model), config, "sdpa", 0)


TOWER_READERS = [name for name in COMPRESSING if build_method(name).uses_tower_attention()]


def test_llava_next_videos_learned_pooling_scores_each_window_as_its_cells_mean(clip):
    """`spatial_pool_mode="conv"` pools the features with a learned convolution, which cannot take scores: each
    window is scored as its cells' mean (what the stock average pooling gives), and every method reading the tower's
    attention runs."""
    model = _variant("llava_next_video", spatial_pool_mode="conv")
    cells = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    scores = torch.rand(3, 1 + cells)  # CLS first
    averaged = adapter_for(model_for("llava_next_video")).pool_tower_scores(scores)
    torch.testing.assert_close(adapter_for(model).pool_tower_scores(scores), averaged)
    inputs = inputs_for("llava_next_video", clip, "What is moving?")
    for method in TOWER_READERS:
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            generate(model, inputs, max_new_tokens=2)
        (sample,) = handle.stats.samples
        assert sample.achieved_ratio < 0.5, method


def test_features_of_several_tower_layers_refuse_what_acts_at_one_when_patching(clip):
    """A list `vision_feature_layer` joins several layers' features: a method reading the tower's attention or
    folding inside it is refused when patching, naming the setting; one acting before the tower runs."""
    model = _variant("video_llava", vision_feature_layer=[-2, -1])
    inputs = inputs_for("video_llava", clip, "What is moving?")
    reference = logits(model, inputs)
    for method in ("visionzip", "earlytom", "vidtldr"):
        with pytest.raises(ValueError, match=r"vision_feature_layer is \[-2, -1\]"):
            tokcompress.patch(model, method, ratio=0.3)
        torch.testing.assert_close(logits(model, inputs), reference, rtol=0, atol=0)  # nothing left patched
    with tokcompress.compress(model, "framededup", ratio=0.3) as handle:
        generate(model, inputs, max_new_tokens=2)
    assert handle.stats.samples[0].achieved_ratio < 0.5
