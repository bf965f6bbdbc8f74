"""FlowCut: tokens pruned step by step inside the vision tower, ranked by the information flowing to them."""

from __future__ import annotations

import math

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.layout import VisualLayout
from tokcompress.methods import EncoderOnly, FlowCut, LayerBudget, VidTLDR
from tokcompress.methods.base import LayerSample, ModelSpec, TowerTokens, kept_layer_average
from tokcompress.methods.flowcut import instruction_flow
from tokcompress.methods.selection import top_tokens
from tokcompress.methods.tome import first_copies

from .conftest import TINY, generate, inputs_for, model_for, multimodal, video_encoder_inputs
from .test_encoder_merging import BATCHED
from .test_encoder_token_folding import batched_tower_pass
from .test_fidelity import features


def tower_tokens(frames: int, count: int, fixed: int, layer: int, depth: int, seed: int, carried=None, grid=None):
    tokens = features(frames, count, 8, seed=seed)
    heads = tuple(features(frames, 2, count, 4, seed=seed + i) for i in (1, 2, 3))
    return TowerTokens(tokens, torch.ones(frames, count), layer, depth, fixed, grid or count, carried,
                       sharpness=None, heads=lambda: heads)


def published_flow(queries, keys, values, fixed: int) -> list[float]:
    """One frame, by the published steps: per head, the global query's softmax over the tokens (its CLS row, or
    the mean query's), averaged over heads, normalised over the patches; with a CLS plus the normalised head-mean
    softmax of v_CLS · v_j; times the L1 norm of the head-mean value."""
    heads, count, dim = queries.shape
    query = [queries[h, 0] if fixed else queries[h].mean(dim=0) for h in range(heads)]
    relation = [sum(torch.softmax(keys[h] @ query[h] / math.sqrt(dim), 0)[j] for h in range(heads)) / heads
                for j in range(count)]
    patches = range(fixed, count)
    score = [relation[j] / sum(relation[i] for i in patches) for j in patches]
    if fixed:
        semantic = [sum(torch.softmax(values[h] @ values[h, 0], 0)[j] for h in range(heads)) / heads for j in patches]
        score = [s + m / sum(semantic) for s, m in zip(score, semantic)]
    return [float(s * values[:, j].mean(dim=0).abs().sum()) for s, j in zip(score, patches)]


@pytest.mark.parametrize("fixed", [0, 1])
def test_flowcut_keeps_the_tokens_information_flows_to_and_drops_the_rest_without_weight(fixed):
    """A step 4 layers before the last pruning one drops (n − T)/√4 of the patches: the lowest by cum = (carried +
    score) / 2; each dropped one reads its most similar kept patch (never the CLS) and adds no weight to it; the
    kept ones carry their cum on."""
    count, frames = 21, 2
    carried = features(frames, count, seed=9).abs()
    view = tower_tokens(frames, count, fixed, layer=2, depth=8, seed=3, carried=carried)
    folding = FlowCut(ratio=0.3).merge_in_encoder_tokens(view)
    free, target = count - fixed, round(0.3 * (count - fixed))
    kept_count = free - round((free - target) / math.sqrt(4))
    queries, keys, values = view.heads()
    for row in range(frames):
        flow = [(float(c) + s) / 2 for c, s in zip(carried[row, fixed:], published_flow(
            queries[row], keys[row], values[row], fixed))]
        best = sorted(range(free), key=lambda j: -flow[j])[:kept_count]
        kept = list(range(fixed)) + sorted(j + fixed for j in best)
        assert folding.keep[row].tolist() == kept
        torch.testing.assert_close(folding.carry[row, fixed:], torch.tensor([flow[j - fixed] for j in kept[fixed:]]))
        unit = torch.nn.functional.normalize(view.tokens[row], dim=-1)
        for token in range(count):
            if token in kept:
                assert int(folding.merge_into[row, token]) == kept.index(token) and folding.weight[row, token] == 1
            else:
                similarity = {k: float(unit[token] @ unit[k]) for k in kept[fixed:]}
                assert kept[int(folding.merge_into[row, token])] == max(similarity, key=similarity.get)
                assert folding.weight[row, token] == 0


def test_flowcut_prunes_every_other_layer_down_to_the_tower_budget():
    """Depth 8: layers 0, 2, 4 and 6 prune 36 patches (T = 11) to 26, 18, 13 and 11, as (n − T)/√r, r = 6, 4, 2, 0;
    `tower_ratio` sets T apart from the LLM's ratio."""
    method = FlowCut(ratio=0.3)
    assert method.encoder_merge_layers(8) == [0, 2, 4, 6] and method.encoder_merge_layers(2) == [0]
    assert FlowCut().encoder_merge_layers(1) == []
    for tower_ratio, expected in [(None, [26, 18, 13, 11]), (0.5, [29, 23, 19, 18])]:
        count, carried, counts = 36, None, []
        for layer in method.encoder_merge_layers(8):
            view = tower_tokens(3, count, 0, layer, 8, seed=layer, carried=carried, grid=36)
            folding = FlowCut(ratio=0.3, tower_ratio=tower_ratio).merge_in_encoder_tokens(view)
            count, carried = folding.keep.shape[1], folding.carry
            counts.append(count)
        assert counts == expected
    with pytest.raises(ValueError, match="tower_ratio"):
        FlowCut(tower_ratio=0.0)


def test_a_token_the_global_query_looks_at_with_a_large_value_survives_the_first_cut():
    count = 30
    view = tower_tokens(1, count, 0, layer=0, depth=26, seed=5)
    queries, keys, values = view.heads()
    keys[0, :, 17] = queries[0].mean(dim=1) * 4
    values[0, :, 17] *= 10
    folding = FlowCut(ratio=0.1).merge_in_encoder_tokens(view)
    assert folding.keep.shape[1] < count and 17 in folding.keep[0].tolist()


@pytest.mark.parametrize("family", BATCHED)
def test_flowcut_leaves_a_batched_tower_its_own_attention_and_every_token_of_the_grid(family, clip, monkeypatch):
    """Pruning adds no weight, so later layers attend as the stock tower (no float mask: flash attention is
    allowed) on fewer tokens, and the output holds the grid, each dropped token repeating a kept one."""
    model = model_for(family)
    adapter = adapter_for(model)
    inputs = inputs_for(family, clip, "What?")
    tokens, masks, outputs, _ = batched_tower_pass(model, FlowCut(ratio=0.3), inputs)
    fixed, share = adapter.tower_prefix_tokens, FlowCut(ratio=0.3).bind(adapter.spec).tower_share()
    real = (adapter.tower_real_tokens(inputs) or tokens[:1])[0]  # Gemma 4: its padding goes too
    assert tokens[1] == fixed + round(share * (real - fixed)) and masks == [None]
    (output,) = outputs
    assert output.shape[1] == tokens[0] and all(len(torch.unique(frame, dim=0)) == tokens[1] for frame in output)
    monkeypatch.setattr(adapter.vision_tower.config, "_attn_implementation", "flash_attention_2")
    tokcompress.patch(model, FlowCut(ratio=0.3)).unpatch()


@pytest.mark.parametrize("method", [FlowCut(ratio=0.3, inner_prune=0.0), VidTLDR(ratio=0.3)])
def test_the_llm_gets_distinct_tokens_where_the_tower_kept_enough(method, clip):
    """Video-LLaVA projects each tower token on its own: the tower's repeats reach the prompt as exact copies, and
    fold first, so the 89 visual tokens the budget keeps are 89 different ones (the tower kept 12 of 37 a frame)."""
    model = model_for("video_llava")
    adapter = adapter_for(model)
    inputs = inputs_for("video_llava", clip, "What?")
    seen = {}
    with tokcompress.compress(model, method) as handle:
        hook = adapter.layers[0].register_forward_pre_hook(lambda m, args: seen.update(hidden=args[0][0]))
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            hook.remove()
        (sample,) = handle.stats.samples
    is_visual = inputs["input_ids"][0] == adapter.video_token_id
    survives = ~is_visual
    survives[sample.kept_positions] = True
    visual = seen["hidden"][is_visual[survives]]
    assert len(visual) == round(0.3 * sample.visual_in) == len(torch.unique(visual, dim=0))


def test_repeats_fold_into_their_first_copy_in_their_frame_up_to_the_limit():
    layout = VisualLayout(torch.arange(8), torch.zeros(8, dtype=torch.long), torch.tensor([0, 0, 0, 0, 1, 1, 1, -1]),
                          torch.tensor([0, 1, 2, 3, 0, 1, 2, -1]), ((2, 1, 4),))
    distinct = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    features = distinct[[0, 1, 0, 1, 0, 5, 5, 0]] * torch.tensor([1, 1, 1, 1 + 1e-7, 1, 1, 1, 1])[:, None]
    assert first_copies(features, layout, limit=8).tolist() == [0, 1, 0, 1, 4, 5, 5, 7]  # not across frames
    assert first_copies(features, layout, limit=2).tolist() == [0, 1, 0, 1, 4, 5, 6, 7]  # the first repeats
    assert first_copies(features + torch.tensor([0, 0, 1e-3, 0, 0, 0, 0, 0])[:, None], layout, 8).tolist()[2] == 2
    one_token_frames = VisualLayout.from_videos([0], [(3, 1, 1)])
    assert first_copies(distinct[:3], one_token_frames, limit=3).tolist() == [0, 1, 2]


def test_repeats_are_found_as_comparing_every_pair_would():
    """Sorting along fixed directions and comparing neighbours finds what comparing every pair finds: two videos of
    different frame sizes (padded columns), copies equal to within the tolerance, a shared large component."""
    generator = torch.Generator().manual_seed(1)
    for trial in range(20):
        shapes = [tuple(int(torch.randint(1, 4, (1,), generator=generator)) for _ in range(3)) for _ in range(2)]
        layout = VisualLayout.from_videos([0, shapes[0][0] * shapes[0][1] * shapes[0][2] + 1], shapes, 1)
        count = layout.num_tokens
        distinct = torch.randn(max(count // 2, 1), 8, generator=generator) + (100.0 if trial % 2 else 0.0)
        features = distinct[torch.randint(len(distinct), (count,), generator=generator)]
        features = features * (1 + 1e-7 * torch.randn(count, 1, generator=generator))  # copies, not bitwise
        expected = list(range(count))
        for token in range(count):
            if layout.is_separator[token]:
                continue
            same_frame = [t for t in range(token) if layout.video[t] == layout.video[token]
                          and layout.frame[t] == layout.frame[token]]
            expected[token] = next((t for t in same_frame if torch.dist(features[t], features[token])
                                    <= 1e-5 * features[t].norm()), token)
        assert first_copies(features, layout, limit=count).tolist() == expected


@pytest.mark.parametrize(
    "family",
    [
        family for family in (
            "llava_onevision", "video_llava", "qwen2_5_vl", "video_llama_3", "qwen2_5_omni_thinker", "gemma4",
            "cosmos3_edge", "ernie4_5_vl_moe", "molmo2", "muse_glimmer", "ovis2_5",
        ) if family in TINY  # Ovis2.5: transformers 5.25+
    ],
)
@pytest.mark.parametrize("method", [FlowCut(ratio=0.3), VidTLDR(ratio=0.3, merge_schedule="0.2")])
def test_scores_read_the_projections_the_tower_computed(family, method, clip):
    """A merge layer's queries, keys and values come from its attention's own call: each projection runs once."""
    model = model_for(family)
    adapter = adapter_for(model)
    attention = adapter.tower_layer_attention(adapter.tower_layers()[0][0])
    calls = {}
    with tokcompress.compress(model, method):
        hooks = [module.register_forward_hook(lambda m, a, out: calls.update({m: calls.get(m, 0) + 1}))
                 for module in attention.modules() if isinstance(module, torch.nn.Linear)]
        try:
            with torch.no_grad():
                multimodal(model).get_video_features(**video_encoder_inputs(inputs_for(family, clip, "What?")))
        finally:
            for hook in hooks:
                hook.remove()
    assert len(calls) >= 2 and set(calls.values()) == {1}


@pytest.mark.parametrize("family", [
    family for family in ("qwen2_5_vl", "video_llama_3", "cosmos3_edge", "ernie4_5_vl_moe", "muse_glimmer", "ovis2_5")
    if family in TINY
])
def test_flowcut_leaves_a_packed_tower_its_own_attention(family, clip):
    """No log(size) to add: a packed tower keeps its stock attention (on the CPU; the fused varlen kernel on a GPU)
    and its later layers get no key bias."""
    model = model_for(family)
    adapter = adapter_for(model)
    attention = adapter.tower_layer_attention(adapter.tower_layers()[0][1])
    seen = []
    with tokcompress.compress(model, FlowCut(ratio=0.3)):
        hook = attention.register_forward_pre_hook(
            lambda m, a, k: seen.append((m.config._attn_implementation, compat.KEY_BIAS in k)), with_kwargs=True
        )
        try:
            generate(model, inputs_for(family, clip, "What is moving?"), max_new_tokens=2)
        finally:
            hook.remove()
    assert seen == [("sdpa", False)]


# ------------------------------------------------------------------------------------- the step inside the LLM


def published_instruction_flow(query, keys, query_value, values) -> list[float]:
    """FlowCut's LLM-side score (its LLaVA-NeXT variant), by the steps: per query head, softmax(q · K_vis / √d)
    against its key head; per value head, softmax(v_q · V_vis / √d); each averaged over heads and normalised to sum
    to one; their sum times the L1 norm of the head-mean value."""
    heads, dim = query.shape
    kv_heads, count, _ = keys.shape
    group = heads // kv_heads
    relation = sum(torch.softmax(keys[h // group] @ query[h] / math.sqrt(dim), 0) for h in range(heads)) / heads
    semantic = sum(torch.softmax(values[h] @ query_value[h] / math.sqrt(dim), 0) for h in range(kv_heads)) / kv_heads
    return [float((relation[j] / relation.sum() + semantic[j] / semantic.sum()) * values[:, j].mean(dim=0).abs().sum())
            for j in range(count)]


def test_the_llm_step_scores_by_the_last_tokens_flow_and_drops_its_share_before_layer_2():
    """Layer 1 scores with the last token's q and v (four query heads over two KV heads); before layer 2 the
    layer budget's tokens stay - the best by that score, in order - and the rest are dropped."""
    count = 12
    queries, keys, values = (features(heads, count + 1, 8, seed=seed) for heads, seed in ((4, 1), (2, 2), (2, 3)))
    visual = torch.arange(count)  # the visual tokens, then the last token: what it asks the engine to project
    method = FlowCut(ratio=0.5)
    layout = VisualLayout.from_videos([0], [(2, 2, 3)])
    memory = {}

    def last_and_visual(projections):
        return lambda last_and_visual=False: projections if last_and_visual else pytest.fail("projects all tokens")

    scoring = LayerSample(1, features(count, 8, seed=4), layout, LayerBudget(0.5, count, 8, 1, 2 * count), memory,
                          lambda q: None, queries_and_keys=last_and_visual((queries, keys, visual)),
                          values=last_and_visual(values))
    assert method.reduce_in_llm(scoring) is None and not method.in_llm_finished(scoring)
    flow = published_instruction_flow(queries[:, -1], keys[:, visual], values[:, -1], values[:, visual])
    torch.testing.assert_close(memory["flow"], torch.tensor(flow))
    budget = LayerBudget(0.5, count, 8, 2, 2 * count)
    pruning = LayerSample(2, features(count, 8, seed=5), layout, budget, memory, lambda q: None)
    reduction = method.reduce_in_llm(pruning)
    keep = budget.tokens_per_layer()
    assert keep == 4 and reduction.keep.tolist() == sorted(sorted(range(count), key=lambda j: -flow[j])[:keep])
    assert reduction.merge_into is None and method.in_llm_finished(pruning)


def test_the_visual_token_the_last_token_looks_at_with_a_large_value_survives_the_llm_step():
    queries, keys, values = features(2, 14, 4, seed=6), features(2, 14, 4, seed=7), features(2, 14, 4, seed=8)
    keys[:, 7] = queries[:, -1] * 3  # visual token 4 (at 7) answers the last token's query
    values[:, 7] *= 2
    score = instruction_flow(queries[:, -1], keys[:, 3:13], values[:, -1], values[:, 3:13])
    assert top_tokens(score, 2).tolist().count(4) == 1


def test_flowcut_bound_to_a_model_gives_the_tower_and_the_llm_the_counts_the_layer_average_allows():
    """On a 28-layer LLM at 0.3: 0.56 of the tokens enter it, half of them stay from layer 2 on - a layer average
    of 0.3 - and the tower keeps that 0.56 of each frame; without the LLM step the tower and the LLM get the
    ratio."""
    spec = ModelSpec("llava_onevision", 28)
    bound = FlowCut(ratio=0.3).bind(spec)
    assert bound.tower_share() == pytest.approx(0.3 * 28 / (2 + 26 * 0.5)) and bound == FlowCut(ratio=0.3)
    budget = LayerBudget(0.3, 1000, 28)
    entering = bound.tokens_into_llm(budget, 1000)
    assert entering == 560
    assert abs((2 * entering + 26 * round(entering / 2)) / 28 - 300) < 1
    plain = FlowCut(ratio=0.3, inner_prune=0.0).bind(spec)
    assert plain.tower_share() == pytest.approx(0.3) and plain.tokens_into_llm(budget, 1000) == 300
    assert FlowCut(ratio=0.3, tower_ratio=0.2).bind(spec).tower_share() == 0.2
    assert EncoderOnly(FlowCut(ratio=0.3)).bind(spec).method.tower_share() == 0.3  # alone in the tower: its ratio
    assert FlowCut(ratio=0.3).bind(ModelSpec("tiny", 2)).tower_share() == pytest.approx(0.3 * 2 / 1.5)  # at layer 1
    assert FlowCut(ratio=0.3).bind(ModelSpec("tiny", 1)).tower_share() == 0.3  # one layer: no step inside the LLM
    with pytest.raises(ValueError, match="inner_layer=28"):
        FlowCut(inner_layer=28).bind(spec)
    with pytest.raises(ValueError, match="inner_prune"):
        FlowCut(inner_prune=1.0)


def test_a_new_ratio_moves_the_towers_default_share_with_it(clip):
    """The share is worked out from the ratio at each bind, not stored in the knobs: after `handle.ratio = 0.1`
    the tower keeps what 0.1 leaves room for; a one-layer LLM has no inner step and takes a new ratio too."""
    model = model_for("llava_onevision")
    with tokcompress.compress(model, FlowCut(ratio=0.3)) as handle:
        handle.ratio = 0.1
        method = handle.method
        assert method.tower_ratio is None and method.tower_share() == pytest.approx(
            0.1 / kept_layer_average(adapter_for(model).spec.num_layers, (2, 0.5)))
    shallow = tiny.tiny_llava_onevision(num_layers=1)
    with tokcompress.compress(shallow, FlowCut(ratio=0.3)) as handle:
        handle.ratio = 0.5
        generate(shallow, inputs_for("llava_onevision", clip, "What?"), max_new_tokens=1)
        assert abs(handle.stats.achieved_ratio - 0.5) * handle.stats.visual_in <= 1


@pytest.mark.parametrize("family", ["llava_onevision", "qwen2_5_vl", "gemma4"])
def test_the_llm_step_drops_visual_tokens_before_layer_2_and_meets_the_ratio(family, clip):
    model = model_for(family)
    adapter = adapter_for(model)
    inputs = inputs_for(family, clip, "What is moving?")
    seen = []
    with tokcompress.compress(model, FlowCut(ratio=0.3)) as handle:
        hooks = [layer.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
            (args[0] if args else kwargs["hidden_states"]).shape[1]), with_kwargs=True) for layer in adapter.layers[:3]]
        try:
            with torch.no_grad():
                model(**inputs)
        finally:
            for hook in hooks:
                hook.remove()
        (sample,) = handle.stats.samples
    assert seen[0] == seen[1] > seen[2]
    assert abs(sample.achieved_ratio - 0.3) * sample.visual_in < 1


def test_the_llm_steps_projections_of_the_last_and_visual_tokens_are_those_of_the_whole_prompt(clip, other_clip):
    """In a left-padded batch, the q/k/v the step asks for (the visual tokens and the last one) equal the same
    tokens' rows of the whole prompt's projections."""
    compared = []

    class Checked(FlowCut):
        def reduce_in_llm(self, sample):
            if sample.layer == 1:
                queries, keys, visual = sample.queries_and_keys()
                values = sample.values()
                some_queries, some_keys, some_visual = sample.queries_and_keys(last_and_visual=True)
                some_values = sample.values(last_and_visual=True)
                for every, some in ((queries, some_queries), (keys, some_keys), (values, some_values)):
                    torch.testing.assert_close(some[:, some_visual], every[:, visual])
                    torch.testing.assert_close(some[:, -1], every[:, -1])
                compared.append(len(visual))
            return super().reduce_in_llm(sample)

    model = model_for("qwen2_5_vl")
    with tokcompress.compress(model, Checked(ratio=0.3)):
        generate(model, inputs_for("qwen2_5_vl", [clip, other_clip[:4]], ["What is moving?", "Who?"]), 1)
    assert len(compared) == 2 and compared[0] > compared[1]
