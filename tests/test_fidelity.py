"""Fidelity: each method's decisions agree with a plain transcription of its published rule.

The transcriptions below follow `shared/reference/methods.md` step by step, written as loops rather than
tensor tricks, so a later change that drifts from the paper fails here. Where a method departs on purpose
(its docstring's "Departures"), the test compares only what both rules decide.
"""

from __future__ import annotations

import math

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.layout import SEPARATOR, VisualLayout
from tokcompress.methods import (
    METHODS,
    DyCoke,
    FrameDedup,
    FrameFusion,
    LayerBudget,
    ToMe,
)
from tokcompress.methods.base import DecodeSample, LayerSample

from .conftest import generate, inputs_for, logits, model_for, softmax_layers

NO_PUBLISHED_RULE = {"none", "random", "uniform"}
# transcribed in test_tower_attention.py (visionzip, fastvid), test_fidelity_holitom_aim_tsllava.py,
# test_encoder_merging.py (earlytom, vidtldr), test_flowcut.py, test_fidelity_sttm.py, test_fidelity_quota_prumerge.py,
# test_fidelity_evs.py
TRANSCRIBED = {
    "tome", "fastv", "framefusion", "dycoke", "framededup", "divprune", "vidcom2", "pdrop", "prunevid", "sparsevlm",
    "visionzip", "fastvid", "holitom", "aim", "tsllava", "earlytom", "vidtldr", "sttm", "flowcut", "quota", "prumerge",
    "evs",
}
TEMPORAL_MERGERS = ("tome", "framefusion", "dycoke", "framededup", "prunevid", "evs")


def test_every_registered_method_is_transcribed_here_or_has_no_published_rule():
    assert set(METHODS) == NO_PUBLISHED_RULE | TRANSCRIBED


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_docstring_lists_its_departures(name):
    assert "Departures" in METHODS[name].__doc__


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def features(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def destinations(reduction, count: int) -> list[int]:
    """Per token, the token it folds into (itself when kept, -1 when dropped)."""
    if reduction.merge_into is None:
        kept = set(reduction.keep.tolist())
        return [i if i in kept else -1 for i in range(count)]
    return [int(reduction.keep[m]) if m >= 0 else -1 for m in reduction.merge_into.tolist()]


# ---------------------------------------------------------------------------------------------- ToMe


def tome_bipartite_round(a: torch.Tensor, b: torch.Tensor, merges: int) -> dict[int, int]:
    """ToMe's bipartite soft matching: every A token's most similar B token (cosine); the `merges` best edges
    fold A into B. Returns {A index: B index} for the merged A tokens."""
    best = {}
    for i in range(len(a)):
        scores = [cosine(a[i], b[j]) for j in range(len(b))]
        best[i] = (max(scores), scores.index(max(scores)))
    ranked = sorted(best, key=lambda i: -best[i][0])
    return {i: best[i][1] for i in ranked[:merges]}


@pytest.mark.parametrize("merges", [1, 4, 9])
def test_tome_first_round_is_bipartite_matching_of_neighbouring_frames(merges):
    layout = VisualLayout.from_videos([0], [(2, 3, 3)])
    tokens = features(18, 16)
    ratio = (18 - merges) / 18
    reduction = ToMe(ratio=ratio).reduce_pre_llm(tokens, layout, LayerBudget(ratio, 18, 4))
    expected = tome_bipartite_round(tokens[:9], tokens[9:], merges)
    ours = destinations(reduction, 18)
    assert {i: ours[i] - 9 for i in range(9) if ours[i] != i} == expected
    assert ours[9:] == list(range(9, 18))  # B tokens survive


def test_tome_pairs_the_surviving_frames_in_later_rounds():
    """Frames 0≈1 and 2≈3: round one folds 0 into 1 and 2 into 3; round two matches frame 1 against frame 3."""
    layout = VisualLayout.from_videos([0], [(4, 2, 2)])
    base = features(2, 4, 16)
    noise = 0.01 * features(2, 4, 16, seed=1)
    frames = torch.stack([base[0], base[0] + noise[0], base[1], base[1] + noise[1]])
    reduction = ToMe(ratio=5 / 16).reduce_pre_llm(frames.reshape(16, 16), layout, LayerBudget(5 / 16, 16, 4))
    ours = destinations(reduction, 16)
    assert all(ours[i] == ours[4 + i] and ours[8 + i] == ours[12 + i] for i in range(4))  # round one: same cells
    merged_1 = (frames[0] + frames[1]) / 2
    merged_3 = (frames[2] + frames[3]) / 2
    expected = tome_bipartite_round(merged_1, merged_3, 3)  # round two: 3 more merges reach 5 tokens
    assert {i: ours[4 + i] - 12 for i in range(4) if ours[4 + i] != 4 + i} == expected


def test_tome_merges_at_most_half_of_a_window_per_round():
    """A three-token frame (A = 0, 2; B = 1): 0 ≈ 1 merges first, then the survivor pair 1, 2 merges into 2."""
    layout = VisualLayout.from_videos([0], [(1, 1, 3)])
    tokens = features(3, 8)
    tokens[0] = tokens[1] + 0.01 * features(8, seed=1)
    reduction = ToMe(ratio=1 / 3).reduce_pre_llm(tokens, layout, LayerBudget(1 / 3, 3, 4))
    assert reduction.keep.tolist() == [2]  # had both A tokens merged in one round, token 1 would survive
    assert destinations(reduction, 3) == [2, 2, 2]


# ---------------------------------------------------------------------------------------------- FastV


def fastv_published_keep(attentions, scoring_layer: int, visual: list[int], count: int) -> list[int]:
    """FastV: the last query's attention at the scoring layer, mean over heads, top `count` visual tokens, sorted."""
    row = attentions[scoring_layer][0, :, -1, :].mean(dim=0)
    ranked = sorted(visual, key=lambda p: -float(row[p]))
    return sorted(ranked[:count])


@pytest.mark.parametrize(("scoring", "scoring_layer"), [("previous_layer", 1), ("same_layer", 2)])
def test_fastv_keeps_the_top_of_the_scoring_layers_attention_row(family, clip, scoring, scoring_layer):
    """Default scoring is the official code's: layer K−1's attention (here K = 2, eager and unpatched)."""
    model = model_for(family, "eager")
    if scoring_layer not in softmax_layers(model):
        pytest.skip("a linear-attention layer has no attention map (Qwen3.5 scores with the next softmax layer's)")
    if compat.layer_type(adapter_for(model).language_model.config, scoring_layer) == compat.SLIDING_LAYER:
        pytest.skip("a sliding layer's map covers its window only; scores read it without (Gemma 4's stated choice)")
    inputs = inputs_for(family, clip, "What is moving?")
    visual = (inputs["input_ids"][0] == tiny.VIDEO).nonzero().squeeze(1).tolist()
    with torch.no_grad():
        attentions = dict(zip(softmax_layers(model), model(**inputs, output_attentions=True).attentions))
    with tokcompress.compress(model, "fastv", ratio=0.75, scoring=scoring) as handle:
        logits(model, inputs)
        sample = handle.stats.samples[0]
    assert sample.visual_per_layer[:2] == [len(visual)] * 2  # the paper's K = 2
    assert sample.kept_positions == fastv_published_keep(attentions, scoring_layer, visual, sample.visual_out)


@pytest.mark.parametrize(
    ("method", "layers", "ratio"),
    [("fastv", 4, 0.25), ("fastv", 8, 0.25), ("fastv", 28, 1 / 14), ("framefusion", 4, 0.1)],
)
def test_no_layer_is_left_without_visual_tokens_while_budget_remains(clip, method, layers, ratio):
    model = tiny.tiny_llava_onevision(num_layers=layers)
    inputs = tiny.video_inputs(model, clip, "What is moving?")
    with tokcompress.compress(model, method, ratio=ratio) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
    assert min(sample.visual_per_layer) >= 1, sample.visual_per_layer
    assert abs(sample.achieved_ratio - ratio) * sample.visual_in <= 1.0


# ---------------------------------------------------------------------------------------------- FrameFusion


def framefusion_published_merge(similarity: list[float], predecessor: list[int], threshold: float, upper: float):
    """One merge call of the official code (methods.md §1.4, steps 1c-1e): per token, the token it folds into."""
    count = len(similarity)
    candidates = [i for i in range(count) if similarity[i] >= threshold]
    if len(candidates) / count < upper:
        marked = set(candidates)
    else:
        marked = set(sorted(range(count), key=lambda i: -similarity[i])[: int(upper * count)])
    destination = list(range(count))
    for i in marked:
        anchor = predecessor[i]
        while anchor in marked:  # a run of marked tokens collapses onto the token before it
            anchor = predecessor[anchor]
        destination[i] = anchor
    return destination


def framefusion_pruning_ratio(sparsity: list[float], cost: float, num_layers: int) -> float:
    """The official cost model (methods.md §1.4 step 4), with the model's real layer count."""
    remaining_fraction, total = 1.0, 0.0
    for ratio in sparsity:
        remaining_fraction *= 1 - ratio
        total += remaining_fraction
    following = (num_layers * cost - total) / ((num_layers - len(sparsity)) * remaining_fraction)
    return 0.0 if following > 1 else 1 - following


def _video_with_similar_cells(similar: dict[int, float]) -> tuple[torch.Tensor, VisualLayout]:
    """4 frames of 2×2 cells; token t (t ≥ 4) is its predecessor plus noise of size similar[t] (else random)."""
    layout = VisualLayout.from_videos([0], [(4, 2, 2)])
    tokens = features(16, 32)
    for t in sorted(similar):
        tokens[t] = tokens[t - 4] + similar[t] * features(32, seed=t)
    return tokens, layout


@pytest.mark.parametrize(
    "similar",
    [
        {4: 0.1, 5: 0.2, 8: 0.15, 13: 0.3},  # few similar tokens: every candidate merges, 8 chains onto 0
        {t: 0.05 * (t - 3) for t in range(4, 16)},  # too many: the best int(upper · count) merge
    ],
)
def test_framefusion_merges_as_the_official_rule_does(similar):
    tokens, layout = _video_with_similar_cells(similar)
    method = FrameFusion(ratio=0.3, similarity_threshold=0.6, num_queries=1)
    budget = LayerBudget(0.3, 16, 28)
    sample = LayerSample(0, tokens, layout, budget, {}, lambda q: torch.rand(16))
    ours = destinations(method.reduce_in_llm(sample), 16)
    predecessor = layout.temporal_predecessor().tolist()
    similarity = [cosine(tokens[i], tokens[p]) if p >= 0 else -2.0 for i, p in enumerate(predecessor)]
    upper = framefusion_pruning_ratio([], 0.3, 28)
    assert int(upper * 16) == 16 - budget.tokens_per_layer()  # the two budgets agree here (see Departures)
    assert ours == framefusion_published_merge(similarity, predecessor, 0.6, upper)


def test_framefusion_handed_fewer_tokens_than_its_budget_keeps_them_all():
    """An earlier stage (framededup at whole frames) left 16 of 64 tokens, under framefusion's 0.3 · 64: nothing
    to merge or prune (it used to read the negative allowance as a slice end and drop all but two)."""
    tokens, layout = _video_with_similar_cells({t: 0.01 for t in range(4, 16)})  # every frame repeats the first
    method = FrameFusion(ratio=0.3, similarity_threshold=0.6, num_queries=1)
    sample = LayerSample(0, tokens, layout, LayerBudget(0.3, 64, 28), {}, lambda q: torch.rand(16))
    reduction = method.reduce_in_llm(sample)
    assert reduction is None or destinations(reduction, 16) == list(range(16))


def test_framefusion_prunes_the_anchors_the_last_query_attends_to_most():
    """After merging stopped, the next call keeps the top anchors by attention (methods.md §1.4 step 2)."""
    tokens, layout = _video_with_similar_cells({})
    method = FrameFusion(ratio=0.3, similarity_threshold=0.6, num_queries=1)
    attention = torch.rand(16, generator=torch.Generator().manual_seed(3))
    memory = {"merging_done": True, "prune_next": True}  # merging stopped at layer 0 with nothing merged
    sample = LayerSample(1, tokens, layout, LayerBudget(0.3, 16, 28, 1, 16), memory, lambda q: attention)
    kept = method.reduce_in_llm(sample).keep.tolist()
    official_count = round(16 * (1 - framefusion_pruning_ratio([0.0], 0.3, 28)))
    assert abs(len(kept) - official_count) <= 1
    top = sorted(range(16), key=lambda i: -float(attention[i]))
    assert kept == sorted(top[: len(kept)])


# ---------------------------------------------------------------------------------------------- DyCoke


def dycoke_published_ttm(frames: torch.Tensor, keep: int) -> dict[int, set[int]]:
    """DyCoke TTM (methods.md §2.4): per frame, the cells it keeps (a dropped odd last frame keeps none)."""
    count, cells = frames.shape[:2]
    kept = {t: set(range(cells)) for t in range(count - count % 2)}

    def least_similar(reference: int, frame: int) -> set[int]:
        similarity = [cosine(frames[reference, c], frames[frame, c]) for c in range(cells)]
        return set(sorted(range(cells), key=lambda c: similarity[c])[:keep])

    for t in range(0, count - 1, 2):  # pass 1: frame t+1 against frame t
        kept[t + 1] = least_similar(t, t + 1)
    for t in range(0, count - 4, 4):  # pass 2: frame t+2 against frame t (not in the last group)
        kept[t + 2] = least_similar(t, t + 2)
    return kept


def test_dycoke_keeps_the_same_novel_cells_as_the_official_ttm():
    frames = features(8, 4, 16)
    frames[1:4] = frames[0] + 0.5 * features(3, 4, 16, seed=1)  # groups whose frames resemble their anchor
    frames[5:8] = frames[4] + 0.5 * features(3, 4, 16, seed=2)
    layout = VisualLayout.from_videos([0], [(8, 2, 2)])
    # anchors 0 and 4 whole, the six other frames one cell each: the official keep = int((1 − K) · 4) = 1
    keep = DyCoke(ratio=14 / 32).reduce_pre_llm(frames.reshape(32, 16), layout, LayerBudget(14 / 32, 32, 4)).keep
    ours = {t: {c for c in range(4) if 4 * t + c in set(keep.tolist())} for t in range(8)}
    official = dycoke_published_ttm(frames, keep=1)
    both_prune = [1, 2, 3, 5, 7]  # the official code leaves frame 6 (last group's third) whole: a Departure
    assert {t: ours[t] for t in [0, 4, *both_prune]} == {t: official[t] for t in [0, 4, *both_prune]}


def test_dycoke_decoding_selects_the_top_attended_entries_when_attention_moves():
    attention = torch.rand(10, generator=torch.Generator().manual_seed(0))
    selection = DyCoke(decode_keep=0.25).select_decode_kv(DecodeSample(attention, {}))
    # P = 0.75: int(n · (1 − P)) = round(n · decode_keep) here (the counts can differ by one: see Departures)
    official = sorted(sorted(range(10), key=lambda i: -float(attention[i]))[: int(10 * (1 - 0.75))])
    assert selection.tolist() == official


# ---------------------------------------------------------------------------------------------- FrameDedup


def longvu_select_frames(signatures: torch.Tensor, threshold: float, window: int = 16) -> list[int]:
    """LongVU's frame dedup (methods-2.md §17.4 step 1): in windows of 16 frames, a frame's score is the mean cosine
    of its flattened features with every frame of the window, itself included; the middle frame scores 0; frames
    scoring below the threshold are kept."""
    vectors = [frame.flatten() for frame in signatures]
    kept = []
    for start in range(0, len(vectors), window):
        members = list(range(start, min(start + window, len(vectors))))
        for i in members:
            score = sum(cosine(vectors[i], vectors[j]) for j in members) / len(members)
            if i == start + len(members) // 2:
                score = 0.0
            if score < threshold:
                kept.append(i)
    return kept


@pytest.mark.parametrize(("frames", "window"), [(8, 16), (20, 16), (12, 4)])
def test_framededup_keeps_the_frames_longvu_keeps(frames, window):
    signatures = features(frames, 6, 10)
    for repeat in range(1, frames, 3):  # every third frame repeats the one before, nearly
        signatures[repeat] = signatures[repeat - 1] + 0.05 * features(6, 10, seed=repeat)
    for threshold in (0.2, 0.5):
        method = FrameDedup(ratio=0.99, threshold=threshold, window=window)  # the cap left out of the way
        expected = longvu_select_frames(signatures, threshold, window)
        assert len(expected) <= round(0.99 * frames)
        assert method.reduce_pre_encoder(signatures).tolist() == expected


# ---------------------------------------------------------------------------------------------- all temporal mergers


@pytest.mark.parametrize("method", TEMPORAL_MERGERS)
def test_identical_frames_collapse_to_one_frame_one_token_per_cell(family, clip, method):
    """Separators stay: a video's (LLaVA-OV's newline), and a frame's own (Video-LLaVA's CLS) at least while its frame
    does."""
    model = model_for(family)
    repeated = clip[:1].expand(8, -1, -1, -1).contiguous()
    inputs = inputs_for(family, repeated, "What is in the picture?")
    (layout,) = adapter_for(model).visual_layouts(inputs)
    visual = layout.positions.tolist()
    separators = layout.positions[layout.is_separator].tolist()
    per_frame = layout.grids[0][1] * layout.grids[0][2]
    with tokcompress.compress(model, method, ratio=(per_frame + len(separators)) / len(visual)) as handle:
        generate(model, inputs, max_new_tokens=2)
        kept = handle.stats.samples[0].kept_positions
    cells = [visual.index(p) for p in kept if p not in separators]
    assert len(set(layout.frame[cells].tolist())) == 1, f"kept tokens span frames: {cells}"
    assert sorted(layout.spatial[cells].tolist()) == list(range(per_frame))
    standing = torch.isin(layout.frame, layout.frame[cells]) | (layout.frame == SEPARATOR)  # framededup drops frames
    assert set(layout.positions[layout.is_separator & standing].tolist()) <= set(kept)


# ---------------------------------------------------------------------------------------------- proportional attention


def _masks_seen_by_layers(model):
    seen: list[tuple[int, torch.Tensor]] = []

    def record(index):
        def hook(module, args, kwargs):
            seen.append((index, kwargs.get("attention_mask")))

        return hook

    layers = adapter_for(model).language_model.layers
    return seen, [layers[i].register_forward_pre_hook(record(i), with_kwargs=True) for i in softmax_layers(model)]


def test_tome_proportional_attention_adds_log_size_to_merged_keys(family, clip):
    """Eight identical frames at a one-frame budget: each kept cell stands for 8 frames' tokens (Qwen: 4 patches)."""
    model = model_for(family)
    repeated = clip[:1].expand(8, -1, -1, -1).contiguous()
    inputs = inputs_for(family, repeated, "What is in the picture?")
    ids = inputs["input_ids"][0]
    (layout,) = adapter_for(model).visual_layouts(inputs)
    visual, separators = layout.positions.tolist(), layout.positions[layout.is_separator].tolist()
    per_frame, copies = layout.grids[0][1] * layout.grids[0][2], layout.grids[0][0]
    ratio = (len(separators) + per_frame) / len(visual)
    with tokcompress.compress(model, "tome", ratio=ratio) as handle:
        seen, hooks = _masks_seen_by_layers(model)
        try:
            generate(model, inputs, max_new_tokens=2)
        finally:
            for hook in hooks:
                hook.remove()
        kept = handle.stats.samples[0].kept_positions
    survivors = sorted(set(range(len(ids))) - set(visual) | set(kept))
    merged_slots = [survivors.index(p) for p in kept if p not in separators]
    other_slots = [s for s in range(len(survivors)) if s not in merged_slots]
    assert len(seen) == 2 * len(softmax_layers(model))  # prefill and one decoding step
    config = adapter_for(model).language_model.config
    for layer, mask in seen:
        if compat.layer_type(config, layer) == compat.SLIDING_LAYER:
            continue  # its window (Gemma 4) may leave the merged tokens out of the last row's reach
        last_row = mask[0, 0, -1]
        torch.testing.assert_close(last_row[merged_slots], torch.full((per_frame,), math.log(copies)))
        assert bool((last_row[other_slots] == 0).all())


def test_tome_proportional_attention_is_the_same_under_sdpa_and_eager(family, clip):
    inputs = inputs_for(family, clip, "What is moving?")
    results = {}
    for implementation in ("sdpa", "eager"):
        model = model_for(family, implementation)
        with tokcompress.compress(model, "tome", ratio=0.3):
            results[implementation] = logits(model, inputs)
    torch.testing.assert_close(results["sdpa"], results["eager"], rtol=1e-4, atol=1e-4)
    model = model_for(family)
    with tokcompress.compress(model, "tome", ratio=0.3, proportional_attention=False):
        assert not torch.allclose(logits(model, inputs), results["sdpa"], atol=1e-4)


def test_proportional_attention_is_refused_under_flash_attention(monkeypatch):
    model = model_for("llava_onevision")
    monkeypatch.setattr(adapter_for(model).language_model.config, "_attn_implementation", "flash_attention_2")
    with pytest.raises(ValueError, match="proportional_attention=False"):
        tokcompress.patch(model, "tome", ratio=0.3)
    tokcompress.patch(model, "tome", ratio=0.3, proportional_attention=False).unpatch()


# ---------------------------------------------------------------------------------------------- per-family defaults


@pytest.mark.parametrize(("family_name", "threshold", "queries"), [("llava_onevision", 0.6, 1), ("qwen2_5_vl", 0.5, 4)])
def test_framefusion_takes_the_official_per_family_defaults(family_name, threshold, queries):
    model = model_for(family_name)
    with tokcompress.compress(model, "framefusion", ratio=0.3) as handle:
        assert (handle.method.similarity_threshold, handle.method.num_queries) == (threshold, queries)
    with tokcompress.compress(model, "framefusion", ratio=0.3, similarity_threshold=0.9, num_queries=2) as handle:
        assert (handle.method.similarity_threshold, handle.method.num_queries) == (0.9, 2)
