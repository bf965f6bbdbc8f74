"""Each method keeps what its algorithm says it keeps, on cases built to show it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.layout import VisualLayout
from tokcompress.methods import DyCoke, FastV, LayerBudget, PDrop, RandomPrune, UniformSample, build_method
from tokcompress.methods.base import DecodeSample, LayerSample, TokenReduction

from .conftest import generate, inputs_for, logits, model_for


def visual_positions(inputs) -> torch.Tensor:
    return (inputs["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1)


def test_framefusion_merges_far_less_on_a_moving_clip_than_on_a_static_one(clip):
    """At a generous budget, merging is content-adaptive: it stops early when frames differ."""
    model = model_for("llava_onevision")
    static = clip[:1].expand(8, -1, -1, -1).contiguous()
    first_layer = {}
    for name, frames in (("static", static), ("moving", clip)):
        inputs = inputs_for("llava_onevision", frames, "What?")
        with tokcompress.compress(model, "framefusion", ratio=0.6, similarity_threshold=0.95) as handle:
            logits(model, inputs)
            first_layer[name] = handle.stats.samples[0].visual_per_layer[0]
    assert first_layer["static"] < first_layer["moving"]


def test_fastv_selects_the_peaks_of_the_attention_row():
    layout = VisualLayout.from_videos([0], [(2, 2, 3)])
    scores = torch.full((12,), 0.01)
    scores[[3, 7, 10]] = torch.tensor([0.5, 0.3, 0.2])
    # layers 0-1 saw all 12 tokens, so layers 2-3 keep (0.625 · 12 · 4 − 24) / 2 = 3, ranked by layer 1's attention
    method, memory = FastV(ratio=0.625, layer=2), {}
    for layer, attention in ((1, scores), (2, torch.rand(12))):
        budget = LayerBudget(0.625, 12, 4, layer, 12 * layer)
        sample = LayerSample(layer, torch.zeros(12, 4), layout, budget, memory, lambda q, a=attention: a)
        reduction = method.reduce_in_llm(sample)
    assert reduction.keep.tolist() == [3, 7, 10]


def test_random_is_seeded_and_uniform_spreads_over_frames_and_cells():
    layout = VisualLayout.from_videos([0], [(4, 3, 3)], separators_per_video=1)
    budget = LayerBudget(0.5, layout.num_tokens, 4)
    features = torch.zeros(layout.num_tokens, 8)
    draw = lambda seed: RandomPrune(ratio=0.5, seed=seed).reduce_pre_llm(features, layout, budget).keep.tolist()  # noqa: E731
    assert draw(0) == draw(0) and draw(0) != draw(1)
    assert layout.num_tokens - 1 in draw(3)  # the separator survives
    keep = UniformSample(ratio=0.5).reduce_pre_llm(features, layout, budget).keep
    per_frame = torch.bincount(layout.frame[keep][layout.frame[keep] >= 0], minlength=4)
    assert per_frame.max() - per_frame.min() <= 1
    cells = [set(layout.spatial[keep][layout.frame[keep] == f].tolist()) for f in range(4)]
    assert cells[0] != cells[1] and len(set().union(*cells)) >= 7


def test_dycoke_keeps_the_novel_tokens_of_each_pruned_frame():
    layout = VisualLayout.from_videos([0], [(4, 2, 2)])
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(1, 4, 16, generator=generator).expand(4, -1, -1).clone()  # four identical frames ...
    features[1, 2] = torch.randn(16, generator=generator)  # ... except one cell in frame 1 and one in frame 3
    features[3, 0] = torch.randn(16, generator=generator)
    keep = DyCoke(ratio=7 / 16).reduce_pre_llm(features.reshape(16, 16), layout, LayerBudget(7 / 16, 16, 4)).keep
    # anchor frame 0 whole; frames 1-3 keep one token each: the changed cells, and any one of frame 2's (all tie)
    kept = keep.tolist()
    assert kept[:5] == [0, 1, 2, 3, 4 + 2] and 8 <= kept[5] < 12 and kept[6] == 12 + 0


def test_dycoke_reuses_its_selection_while_attention_is_stable_and_reselects_when_it_moves():
    method = DyCoke(decode_keep=0.25)
    memory: dict = {}
    first = torch.tensor([0.1, 0.5, 0.1, 0.1, 0.05, 0.05, 0.05, 0.05])
    selection = method.select_decode_kv(DecodeSample(first, memory))
    assert selection.tolist() == [0, 1]
    nudged = first.clone()
    nudged[3] += 0.02  # cosine ≈ 1: reuse, even though token 3 now beats token 0
    assert method.select_decode_kv(DecodeSample(nudged, memory)).tolist() == [0, 1]
    moved = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0])
    assert method.select_decode_kv(DecodeSample(moved, memory)).tolist() == [4, 5]


def test_decoding_reads_count_each_layers_own_visual_entries_after_an_in_llm_member(clip):
    """pdrop then dycoke: deeper layers cache fewer visual entries (pdrop's stages), and each stage's selection picks
    from its own. The share read is measured from the keys each layer's last query may attend to while decoding."""
    model = model_for("qwen2_5_vl")
    inputs = inputs_for("qwen2_5_vl", [clip, clip[:4]], ["What is moving here?", "Why?"])  # padded: masks built
    adapter = adapter_for(model)
    text = int(inputs["attention_mask"][0].sum() - (inputs["input_ids"][0] == adapter.video_token_id).sum())
    seen: list[list[int]] = []
    with tokcompress.compress(model, [PDrop(ratio=0.3), DyCoke(ratio=0.5, decode_layer=1, decode_keep=0.25)]) as handle:
        hooks = [adapter.language_model.register_forward_pre_hook(lambda *_: seen.append([]))]
        for layer in adapter.layers:  # after the patch's own hooks: what each layer is handed
            hooks.append(layer.register_forward_pre_hook(
                lambda module, args, kwargs: seen[-1].append(int(kwargs["attention_mask"][0, 0, -1].sum())),
                with_kwargs=True,
            ))
        try:
            generate(model, inputs, max_new_tokens=3)
        finally:
            for hook in hooks:
                hook.remove()
        sample = handle.stats.samples[0]
    reads = [[keys - text - step for keys in step_keys] for step, step_keys in enumerate(seen[1:], start=1)]
    assert sample.decode_visual_read == [sum(step) for step in reads]
    assert sample.decode_visual_cached == [sum(sample.visual_per_layer)] * 2
    assert reads[0][0] == sample.visual_per_layer[0] and reads[0][1] < sample.visual_per_layer[1]  # from layer 1


def test_dycoke_decoding_reads_only_the_selected_visual_entries(family, clip):
    model = model_for(family)
    inputs = inputs_for(family, clip, "What is moving?")
    with tokcompress.compress(model, "dycoke", ratio=0.5, decode_keep=0.25, decode_layer=1) as handle:
        generate(model, inputs, max_new_tokens=3)
        sample = handle.stats.samples[0]
    selected = round(0.25 * sample.visual_out)
    adapter = adapter_for(model)  # the layers caching every token (own KV or shared); from layer 1 they select
    caching = [i for i in range(len(adapter.layers)) if adapter.kv_source(i) in adapter.kv_layers]
    selecting = sum(adapter.kv_source(i) >= 1 for i in caching)
    read = (len(caching) - selecting) * sample.visual_out + selecting * selected
    # per decoding step (the first token comes from prefill)
    assert sample.decode_visual_read == [read] * 2
    assert sample.decode_visual_cached == [len(caching) * sample.visual_out] * 2
    assert sample.decode_read_ratio == pytest.approx(read / (len(caching) * sample.visual_out))
    # the decoding steps' selection is timed apart from the prefill's compression (time to first token)
    assert handle.stats.decode_compression_seconds > 0 and "ms while decoding" in str(handle.stats)
    with tokcompress.compress(model, "dycoke", ratio=0.5, decode_keep=1.0) as handle:
        full = generate(model, inputs, max_new_tokens=3)
    with tokcompress.compress(model, "dycoke", ratio=0.5, decode_keep=0.25, decode_layer=1):
        assert generate(model, inputs, max_new_tokens=3).shape == full.shape


def test_tome_merges_identical_neighbours_first_and_keeps_distinct_tokens():
    layout = VisualLayout.from_videos([0], [(4, 2, 2)])
    features = torch.randn(4, 4, 16, generator=torch.Generator().manual_seed(0))
    features[1] = features[0]  # frame 1 repeats frame 0: its cells should merge into frame 0's
    from tokcompress.methods import ToMe

    reduction = ToMe(ratio=12 / 16).reduce_pre_llm(features.reshape(16, 16), layout, LayerBudget(12 / 16, 16, 4))
    assert reduction.keep.numel() == 12
    merged_away = sorted(set(range(16)) - set(reduction.keep.tolist()))
    assert all(i < 8 for i in merged_away)  # the four merges happened inside the repeated pair of frames
    assert all(reduction.merge_into[i] >= 0 for i in merged_away)  # folded, not dropped
    tiny_budget = ToMe(ratio=1 / 16).reduce_pre_llm(features.reshape(16, 16), layout, LayerBudget(1 / 16, 16, 4))
    assert tiny_budget.keep.numel() == 1 and bool((tiny_budget.merge_into == 0).all())  # one token stands for all


@pytest.mark.parametrize(
    "name", ["aim", "tome", "tsllava", "holitom", "fastvid", "prunevid", "dycoke", "earlytom", "visionzip", "prumerge"]
)
def test_a_methods_choice_follows_each_tokens_cell_not_the_order_a_frame_is_held_in(name):
    """Ovis2.5's prompt holds each frame's tokens in its tower's window order: a method that reads frames by their
    cells keeps and folds together the same cells whatever order the frame comes in."""
    frames, side, dim = 4, 4, 8
    cells = side * side
    window = torch.tensor([0, 1, 2, 4, 5, 6, 8, 9, 10, 3, 7, 11, 12, 13, 14, 15])  # 3 × 3 windows: token k, cell
    # window[k] (2 × 2 ones would keep each cell's column parity: ToMe's and AIM's split could not tell)
    generator = torch.Generator().manual_seed(0)
    grid = torch.randn(1, cells, dim, generator=generator) + 0.3 * torch.randn(frames, cells, dim, generator=generator)
    saliency = torch.rand(frames, cells, generator=generator)
    raster = VisualLayout.from_videos([0], [(frames, side, side)])
    held = dataclasses.replace(raster, spatial=window.repeat(frames))
    cell_of_held = (torch.arange(frames)[:, None] * cells + window).flatten()  # per held token, its cell
    ratio = 0.1 if name == "tome" else 0.4  # tome: down into one frame, where it splits by cells
    method, budget = build_method(name, ratio=ratio), LayerBudget(ratio, frames * cells, 4)
    outcomes = []
    for layout, order in ((raster, torch.arange(frames * cells)), (held, cell_of_held)):
        layout = layout.with_saliency(saliency.flatten()[order])
        reduction = method.reduce_pre_llm(grid.flatten(0, 1)[order], layout, budget)
        slot = reduction.assignment(len(order))
        survivor = torch.where(slot >= 0, order[reduction.keep[slot.clamp_min(0)]], -1)  # its survivor's cell
        outcome = torch.empty_like(survivor)
        outcome[order] = survivor  # per cell
        outcomes.append(outcome)
    assert torch.equal(outcomes[0], outcomes[1])


def test_a_reduction_keeping_a_token_leaves_it_unfolded_whatever_the_reduction_kept():
    """The engine keeps a prompt's last token (a prompt may end with its video): kept as itself out of a merge, a
    pruning, or a merge that kept nothing (framefusion on a short clip)."""
    merge = TokenReduction.from_destinations(torch.tensor([0, 0, 2, 2, 2]))
    kept = merge.keeping(4, 5)
    assert kept.keep.tolist() == [0, 2, 4] and kept.merge_into.tolist() == [0, 0, 1, 1, 2]
    assert TokenReduction.prune(torch.tensor([1, 3])).keeping(4, 5).keep.tolist() == [1, 3, 4]
    nothing = TokenReduction(torch.zeros(0, dtype=torch.long), torch.full((5,), -1))
    assert nothing.keeping(4, 5).keep.tolist() == [4] and nothing.keeping(4, 5).merge_into.tolist() == [-1] * 4 + [0]


def test_list_knobs_take_semicolons_where_commas_part_arguments():
    """lmms-eval's `--model_args` parts its arguments at commas: a list knob takes `;` between its items too."""
    from tokcompress.methods import EarlyTom, VidTLDR

    assert EarlyTom(merge_layers="6;21;23").encoder_merge_layers(26) == [6, 21, 23]
    assert EarlyTom(merge_layers="6,21,23").encoder_merge_layers(26) == [6, 21, 23]
    assert VidTLDR(merge_schedule="0.255;0.114").schedule() == [0.255, 0.114]
    with pytest.raises(ValueError, match="commas or semicolons"):
        EarlyTom(merge_layers="6;x")
