"""The in-encoder stage that folds tokens inside each frame (vid-TLDR; FlowCut's tower pruning shares the path):
fewer tokens enter the later tower layers, the output expands back to the stock shapes, packed towers keep their
rows in order, and the attention implementation is the tower's own at ratio 1."""

from __future__ import annotations

import contextlib

import pytest
import torch

import tokcompress
from tokcompress.adapters import ADAPTERS, adapter_for
from tokcompress.adapters.base import Adapter
from tokcompress.engine.rows import PackedRows
from tokcompress.methods import VidTLDR
from tokcompress.methods.base import TowerTokens

from .conftest import TINY, generate, inputs_for, model_for, video_encoder_inputs
from .test_encoder_merging import BATCHED, FOLDING, rows_entering_tower_layers
from .test_fidelity import features


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
        if key not in stock:  # dots3's tower records no attention weights
            continue
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
