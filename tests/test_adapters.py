"""Each family's adapter against the model's own placement of a real clip: the frames × grid it hands the
methods must be where the model put each frame's features, and the queries and keys it projects must be the
ones the model attends with."""

from __future__ import annotations

import functools

import pytest
import torch

import tokcompress
from tokcompress import tiny
from tokcompress.adapters import adapter_for
from tokcompress.engine import compat
from tokcompress.engine.groups import sample_row
from tokcompress.layout import SEPARATOR

from .conftest import (
    FAMILIES,
    FRAME_GRANULAR,
    TINY,
    every_family_and_every_method,
    forward_and_generate,
    inputs_for,
    logits,
    model_for,
    shorter,
    softmax_layers,
)


def placed_embeddings(model, inputs) -> torch.Tensor:
    """The LLM's input embeddings of one sample, as the model assembled them (features scattered in)."""
    seen = []
    hook = adapter_for(model).language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"][0]), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return seen[0]


def test_every_supported_model_type_has_a_tiny_family_under_the_contract_suite():
    # Qwen2_5_VLAdapter's parent (same placement), GLM-4.1V's, Qwen3-VL's and MiniCPM-V 4.6's twins (the same
    # modules) and the whole Qwen-Omni models (their thinkers' adapters: tests/test_qwen_omni.py), tested through them
    covered_by_subclass = {"qwen2_vl", "glm46v", "cosmos3_omni", "qwen2_5_omni", "qwen3_omni_moe", "minicpm_ocr"}
    newer = {model_type for model_type in tokcompress.list_models() if not compat.ships(model_type)}  # Ovis2.5 on 5.23
    if not compat.NEMOTRON_TUBELETS:  # 5.23's Nemotron-H Omni took one video's frames: refused there
        newer.add("nemotron_h_omni")
    if not compat.KIMI_CHUNKS:  # 5.23's Kimi K2.5 failed on every video: refused there
        newer.add("kimi_k25")
    assert set(tokcompress.list_models()) - covered_by_subclass - newer == set(FAMILIES)


def test_the_layout_is_where_the_model_placed_each_frame(family, clip):
    """Frame unit f's tokens in the layout hold what the model produces for unit f in a video of its own (twice:
    InternVL reads one frame as an image), cell by cell, each cell once (in raster order, but for Ovis2.5's window
    order: tests/test_ovis2_5.py) after the unit's own separators (Video-LLaVA's CLS); a video's separators come
    after its frames."""
    model, spec = model_for(family), TINY[family]
    adapter = adapter_for(model)
    inputs = inputs_for(family, clip, "What is moving?")
    (layout,) = adapter.visual_layouts(inputs)
    units, height, width = layout.grids[0]
    per_unit = height * width + getattr(adapter, "separators_per_frame", 0)
    assert units == len(clip) // spec.frames_per_unit and per_unit == spec.tokens_per_unit
    video_tokens = inputs["input_ids"][0] == adapter.video_token_id
    assert layout.positions.tolist() == video_tokens.nonzero()[:, 0].tolist()
    video_separators = layout.frame == SEPARATOR
    assert not video_separators[: units * per_unit].any() and video_separators[units * per_unit :].all()
    embeddings = placed_embeddings(model, inputs)
    for unit in range(units):
        frames = clip[unit * spec.frames_per_unit : (unit + 1) * spec.frames_per_unit]
        alone = inputs_for(family, torch.cat([frames, frames]), "What is moving?")
        (alone_layout,) = adapter.visual_layouts(alone)
        cells = alone_layout.positions[alone_layout.frame == 0]
        in_full = layout.frame == unit
        assert layout.is_separator[in_full].sum() == per_unit - height * width
        assert not layout.is_separator[in_full][per_unit - height * width :].any()  # the unit's own lead
        cells_in_order = layout.spatial[in_full & ~layout.is_separator].tolist()
        assert cells_in_order == list(range(height * width)) or family == "ovis2_5"
        assert sorted(cells_in_order) == list(range(height * width))
        torch.testing.assert_close(embeddings[layout.positions[in_full]], placed_embeddings(model, alone)[cells])


def test_the_adapters_queries_and_keys_give_the_models_own_attention_map(family, clip):
    """What query-guided methods score with - `project_queries` / `project_keys` on a layer's input, with its
    rotary tables - reproduces the eager model's attention rows at that layer (head by head, every row);
    `project_keys` / `project_values` the keys and values its cache holds, as decoding reads them."""
    assert_scores_reproduce_the_attention_map(model_for(family, "eager"), inputs_for(family, clip, "Who?"))


def assert_scores_reproduce_the_attention_map(model, inputs) -> None:
    """The adapter's queries and keys give the eager `model`'s attention rows on `inputs` at every softmax layer
    with keys of its own (RoPE, sliding or not, and NoPE ones: Cohere's global layers get no rotary tables, EXAONE
    4.5's get them and do not rotate), and its keys and values those the cache holds."""
    adapter = adapter_for(model)
    config = adapter.language_model.config
    seen = {}

    def note_input(module, args, kwargs, i):
        seen.setdefault(i, (args[0] if args else kwargs["hidden_states"], kwargs.get("position_embeddings")))

    hooks = [
        layer.register_forward_pre_hook(functools.partial(note_input, i=i), with_kwargs=True)
        for i, layer in enumerate(adapter.layers)
    ]
    blocks = adapter.attention_blocks(inputs)  # vision blocks attending both ways (Molmo2's, Gemma 4's), or None
    try:
        with torch.no_grad():
            output = model(**inputs, output_attentions=True, use_cache=True)
        attentions = dict(zip(softmax_layers(model), output.attentions))
    finally:
        for hook in hooks:
            hook.remove()
    for index in [i for i in softmax_layers(model) if adapter.kv_source(i) == i]:  # Gemma 4's shared-KV: test_gemma4
        layer, (hidden, tables) = adapter.layers[index], seen[index]
        hidden = hidden[0]
        cos, sin = (None, None) if tables is None else (sample_row(table, 0) for table in tables)
        with torch.no_grad():
            queries = adapter.project_queries(layer, hidden, cos, sin)
            keys = adapter.project_keys(layer, hidden, cos, sin)
        keys = keys.repeat_interleave(len(queries) // len(keys), dim=0)
        scores = queries @ keys.transpose(1, 2) / queries.shape[-1] ** 0.5
        rows = torch.arange(len(hidden))
        hidden_keys = rows[None, :] > rows[:, None]  # the future, and a sliding layer's keys out of its window
        if compat.layer_type(config, index) == compat.SLIDING_LAYER:
            hidden_keys |= rows[:, None] - rows[None, :] >= config.sliding_window
        if blocks is not None and compat.layer_type(config, index) in adapter.bidirectional_layer_types:
            hidden_keys &= (blocks[0][:, None] != blocks[0][None, :]) | (blocks[0][:, None] < 0)
        probabilities = scores.masked_fill(hidden_keys, float("-inf")).softmax(-1)
        torch.testing.assert_close(probabilities, attentions[index][0], rtol=1e-5, atol=2e-5)  # float32 round-off
        cached_keys, cached_values = adapter.cached_keys_values(output.past_key_values, index)  # a sliding layer's:
        with torch.no_grad():  # its window's last tokens
            window = cached_values.shape[2]
            torch.testing.assert_close(adapter.project_values(layer, hidden)[:, -window:], cached_values[0])
            torch.testing.assert_close(adapter.project_keys(layer, hidden, cos, sin)[:, -window:], cached_keys[0])


@pytest.mark.parametrize(("twin", "original", "method"), [
    *((twin, original, method) for twin, original in (("glm46v", "glm4v"), ("cosmos3_omni", "qwen3_vl"))
      for method in ("framefusion", "vidtldr", "earlytom@encoder+fastv")),
    *(("minicpm_ocr", "minicpmv4_6", method) for method in ("framefusion", "vidtldr", "framededup+fastv")),  # no folds
])
def test_a_twin_family_runs_as_the_original_under_another_name(clip, method, twin, original):
    """GLM-4.6V's model is GLM-4.1V's modules, Cosmos3 Omni's Qwen3-VL's, MiniCPM-OCR's MiniCPM-V 4.6's (built alike,
    the same weights): compressed, each keeps the same tokens and gives the same logits."""
    inputs = inputs_for(original, clip, "What is moving?")
    outcomes = []
    for model in (model_for(original), tiny.TINY_MODELS[twin]()):
        with tokcompress.compress(model, method, ratio=0.3) as handle:
            outcomes.append((logits(model, inputs), handle.stats.samples[0].kept_positions))
        assert adapter_for(model).model_type == model.config.model_type
    torch.testing.assert_close(outcomes[0][0], outcomes[1][0], rtol=0, atol=0)
    assert outcomes[0][1] == outcomes[1][1]


def two_videos_in_one_prompt(family, first, second) -> dict:
    """One prompt asking about two videos, each in its own span of placeholders."""
    a, b = inputs_for(family, first, "Compare this"), inputs_for(family, second, "with this.")
    if "video_token_pooling" in b and not compat.MOLMO2_POOLING_PER_VIDEO:  # Molmo2 < 5.24: indices into all patches
        windows = b["video_token_pooling"]
        b["video_token_pooling"] = torch.where(windows >= 0, windows + a["pixel_values_videos"].shape[:2].numel(), -1)
    per_token = {"input_ids", "attention_mask", "mm_token_type_ids", "moe_mm_token_type_ids"}
    images_per_prompt = a.get("pixel_values", torch.empty(0)).ndim == 5  # SmolVLM: (prompts, images, 3, H, W)
    packed_side_by_side = {"pixel_values_videos"} if "target_sizes_videos" in a else set()  # MiniCPM-V: (1, 3, p, Σ)

    def dim(key: str) -> int:
        return -1 if key in packed_side_by_side else 1 if key in per_token or images_per_prompt else 0

    return {key: torch.cat([a[key], b[key]], dim=dim(key)) for key in a}


def test_a_prompt_with_two_videos_lays_out_each_in_its_place(family, clip, other_clip):
    model = model_for(family)
    inputs = two_videos_in_one_prompt(family, clip, other_clip)
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert len(layout.grids) == 2 and layout.grids[0] == layout.grids[1]
    embeddings = placed_embeddings(model, inputs)
    for video, frames in enumerate([clip, other_clip]):
        alone = inputs_for(family, frames, "What?")
        (alone_layout,) = adapter_for(model).visual_layouts(alone)
        torch.testing.assert_close(
            embeddings[layout.positions[layout.video == video]], placed_embeddings(model, alone)[alone_layout.positions]
        )


@pytest.mark.parametrize(("family", "method"), every_family_and_every_method())
def test_every_method_compresses_a_prompt_with_two_videos(family, clip, other_clip, method):
    """Forward and generate (which pre-encodes the videos) agree on what was kept."""
    model = model_for(family)
    inputs = two_videos_in_one_prompt(family, clip, shorter(family, other_clip))
    forward, generated = forward_and_generate(model, inputs, method)
    assert forward.kept_positions == generated.kept_positions
    if method in FRAME_GRANULAR:  # a cap, per video to within a frame unit: repetitive clips end below it
        assert (
            generated.achieved_ratio * generated.visual_in
            <= 0.3 * generated.visual_in + 2 * TINY[family].tokens_per_unit
        )
    else:
        assert abs(generated.achieved_ratio - 0.3) * generated.visual_in <= 1.0



def internvl_images_and_a_video(clip) -> dict:
    """An InternVL prompt with a lone image (frame 0), a two-tile image (frames 1-2) and a 3-frame video (3-5)."""
    per_frame = TINY["internvl"].tokens_per_unit

    def image(tiles: int) -> list[int]:
        return [tiny.VISION_START] + [tiny.VIDEO] * (tiles * per_frame) + [tiny.VISION_END]

    frames = [tiny.text_ids(f"\nFrame{i + 1}: ") + image(1) for i in range(3)]
    ids = tiny.text_ids("An image: ") + image(1) + tiny.text_ids(" a tiled one: ") + image(2) + sum(frames, [])
    ids = torch.tensor([ids + tiny.text_ids("\nWhat changes?")])
    pixels = tiny.internvl_inputs(clip[:6], "")["pixel_values"]  # 1 + 2 + 3 images
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def test_glm_reads_a_video_off_its_span_and_leaves_the_prompts_image_alone(clip):
    """GLM-4V's images and video frames share one placeholder id: only the tokens inside the video's span are the
    video's. (Layout only: the stock model itself cannot run a prompt holding both, transformers 5.23-5.25 - it
    scatters the image's features over every image token, the video's included.)"""
    video = inputs_for("glm4v", clip, "And this video?")
    image = torch.tensor([tiny.VISION_START, *[tiny.VIDEO] * 16, tiny.VISION_END, *tiny.text_ids("See this image.")])
    ids = torch.cat([image[None], video["input_ids"]], dim=1)
    (layout,) = adapter_for(model_for("glm4v")).visual_layouts({**video, "input_ids": ids})
    assert layout.grids == ((4, 4, 4),)
    assert layout.positions.tolist() == (video["mm_token_type_ids"][0] == 2).nonzero()[:, 0].add(len(image)).tolist()


def test_smolvlm_reads_a_split_image_as_an_image_and_frames_as_a_video(clip):
    """SmolVLM writes each tile of a split image as a run of one image's tokens, opened by its own `<row_i_col_j>`
    (stand-ins here: distinct byte ids), then the whole image opened by `<global-img>`: not a video. A video's
    frames, each opened by `<global-img>`, are."""
    model = model_for("smolvlm")
    per_frame = TINY["smolvlm"].tokens_per_unit
    tiles = sum(([tiny.VISION_START, ord(str(i))] + [tiny.VIDEO] * per_frame for i in range(1, 5)), [])
    image = tiles + [tiny.VISION_START, 261] + [tiny.VIDEO] * per_frame + [tiny.VISION_START]
    video = inputs_for("smolvlm", clip[:3], "And this?")
    ids = torch.cat([torch.tensor([image + tiny.text_ids("See this. ")]), video["input_ids"]], dim=1)
    (layout,) = adapter_for(model).visual_layouts({**video, "input_ids": ids})
    assert layout.grids == ((3, 3, 3),)
    offset = len(image) + len("See this. ")
    assert layout.positions.tolist() == (video["input_ids"][0] == tiny.VIDEO).nonzero()[:, 0].add(offset).tolist()
    (image_only,) = adapter_for(model).visual_layouts({**video, "input_ids": torch.tensor([image])})
    assert image_only.grids == ()


def test_internvl_reads_runs_of_single_tile_images_as_a_video_and_leaves_other_images_alone(clip):
    """InternVL has no video path: a lone image and a tiled image (two tiles in one run) stay as they are; the
    three single-tile images back to back, a frame label apart, are a 3-frame video and only they are compressed."""
    model = model_for("internvl")
    per_frame = TINY["internvl"].tokens_per_unit
    inputs = internvl_images_and_a_video(clip)
    ids = inputs["input_ids"]
    (layout,) = adapter_for(model).visual_layouts(inputs)
    image_tokens = (ids[0] == tiny.VIDEO).nonzero()[:, 0]
    assert layout.grids == ((3, 3, 3),) and layout.positions.tolist() == image_tokens[-3 * per_frame :].tolist()
    with tokcompress.compress(model, "uniform", ratio=1 / 3) as handle:
        logits(model, inputs)
        (sample,) = handle.stats.samples
    assert sample.visual_in == 3 * per_frame and sample.visual_out == per_frame


def test_token_runs_are_the_maximal_runs_of_the_token():
    from tokcompress.adapters.prompt import token_runs

    assert token_runs(torch.tensor([], dtype=torch.long), 7) == [] and token_runs(torch.tensor([1, 2]), 7) == []
    assert token_runs(torch.tensor([7, 7, 0, 7, 1, 7, 7, 7]), 7) == [(0, 2), (3, 1), (5, 3)]
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):  # against the definition: a run starts where the token follows another id (or nothing)
        ids = torch.randint(0, 3, (int(torch.randint(1, 40, (1,), generator=generator)),), generator=generator)
        hit = (ids == 2).tolist()
        starts = [i for i in range(len(hit)) if hit[i] and (i == 0 or not hit[i - 1])]
        lengths = [next((j for j in range(i, len(hit)) if not hit[j]), len(hit)) - i for i in starts]
        assert token_runs(ids, 2) == list(zip(starts, lengths))
