"""The benchmark harnesses run end to end at tiny sizes (their timings are checked by nobody here)."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from tokcompress import tiny
from tokcompress.engine import compat

from .conftest import FAMILIES, TINY, inputs_for, model_for

EVAL = Path(__file__).parents[1] / "eval"
sys.path.insert(0, str(EVAL))  # the scripts import their siblings, as `python eval/<script>.py` lets them


def load(script: str):
    spec = importlib.util.spec_from_file_location(script, EVAL / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_benchmark_smoke_run(tmp_path, monkeypatch):
    """Every op's three implementations are timed; one that fails (a kernel that does not compile on a GPU) is a
    NaN row with its error, and the others still run."""
    pytest.importorskip("triton")
    bench = load("bench_kernels")
    cases = bench.cases

    def with_a_failing_kernel(*args):
        built = cases(*args)
        inputs, implementations = built["bipartite_match"]

        def fails(*_):
            raise RuntimeError("does not compile")

        built["bipartite_match"] = (inputs, {**implementations, "kernel": fails})
        return built

    monkeypatch.setattr(bench, "cases", with_a_failing_kernel)
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    (table,) = tmp_path.glob("kernels_*.csv")
    rows = list(csv.DictReader(table.open()))
    ops = {r["op"] for r in rows}
    assert ops == {"aligned_cosine", "weighted_merge", "few_query_attention", "bipartite_match"}
    assert {r["implementation"] for r in rows} == {"kernel", "reference", "naive"}
    failed = [r for r in rows if r["op"] == "bipartite_match" and r["implementation"] == "kernel"]
    assert all(r["median_ms"] == "nan" and "does not compile" in r["error"] for r in failed)
    assert all(float(r["median_ms"]) > 0 and not r["error"] for r in rows if r not in failed)
    assert list(tmp_path.glob("kernels_*.png"))


@pytest.mark.parametrize("d", [896, 1280, 3584])
def test_kernel_benchmark_cases_have_the_real_head_shapes(d):
    """The GPU sizes build (heads × head_dim = D, KV heads divide heads) and the references and naive versions run."""
    bench = load("bench_kernels")
    heads, kv_heads, head_dim = bench.SHAPES[d]
    assert heads * head_dim == d and heads % kv_heads == 0
    for inputs, implementations in bench.cases(2 * bench.TOKENS_PER_FRAME, d, torch.float32, "cpu").values():
        expected = implementations["reference"](*inputs)
        naive = implementations["naive"](*inputs)
        torch.testing.assert_close(naive[0] if isinstance(naive, tuple) else naive,
                                   expected[0] if isinstance(expected, tuple) else expected, rtol=1e-4, atol=1e-4)


def test_latency_benchmark_smoke_run(tmp_path):
    """The small model, two frames: every column is filled, beside the ideal and the unpatched model."""
    argv = ["--frames", "2", "--methods", "stock", "none", "uniform", "fastv:layer=99", "framededup", "fastv:layer=1",
            "--ratios", "0.3", "--new-tokens", "3", "--repeats", "2", "--out", str(tmp_path)]
    bench = load("bench_latency")
    assert bench.main(argv) == 0
    (table,) = tmp_path.glob("latency_*.csv")
    rows = list(csv.DictReader(table.open()))
    # a job the model refuses (layer 99 of 4) is a row with its error, and the others still run
    refused = rows.pop(3)
    assert refused["method"] == "fastv:layer=99" and "ValueError" in refused["error"] and not refused["prefill_ms"]
    assert [r["method"] for r in rows] == ["stock", "none", "uniform", "framededup", "fastv:layer=1"]
    for spec in ("fastv:lay=1", "fastv:layer"):  # a bad spec stops the run before anything is measured
        with pytest.raises(SystemExit):
            bench.main(["--methods", "none", spec, "--out", str(tmp_path)])
    assert all(float(r["prefill_ms"]) > 0 and float(r["ideal_prefill_ms"]) > 0 for r in rows)
    assert all(float(r["encoder_ms"]) > 0 for r in rows)  # the identity's stats time the tower too
    assert float(rows[0]["compression_ms"]) == 0 and float(rows[0]["prefill_overhead_ms"]) == 0
    assert abs(float(rows[2]["achieved_ratio"]) - 0.3) < 0.02
    assert [float(r["encoder_ratio"]) for r in rows] == [1.0, 1.0, 1.0, 0.5, 1.0]  # 2 frames, one encoded
    assert list(tmp_path.glob("latency_*_vs_ratio.png")) and list(tmp_path.glob("latency_*_breakdown.png"))


def test_the_ideal_is_the_models_own_forward_and_generate_on_text_plus_the_kept_tokens(family, clip):
    """Every family: the tower encodes, then the unpatched model prefills / generates text + kept tokens."""
    from tokcompress.adapters import adapter_for
    from tokcompress.ideal import ideal_inputs, ideal_prefill

    model = model_for(family)
    inputs = inputs_for(family, clip, "What is happening?")
    text = int((inputs["input_ids"] != adapter_for(model).video_token_id).sum())
    with torch.no_grad():
        assert ideal_prefill(model, inputs, 7, encoded=0.5)().logits.shape[1] == text + 7
        _, prepare = ideal_inputs(model, inputs, 7)
        generated = model.generate(**prepare(), max_new_tokens=2, min_new_tokens=2, do_sample=False)
        assert generated.shape[1] == text + 7 + 2  # the ideal prompt (given as ids, as the measured run's) and two


def test_the_ideal_keeps_the_token_types_a_model_builds_its_vision_blocks_from(clip):
    """Gemma 4 builds its two-way frame blocks from `mm_token_type_ids` (a cost of its own forward): the ideal's
    text and kept visual tokens carry the prompt's types, so with every token kept it is the prompt's typing."""
    from tokcompress.adapters import adapter_for
    from tokcompress.ideal import ideal_inputs

    model = model_for("gemma4")
    inputs = inputs_for("gemma4", clip, "What is happening?")
    visual = int((inputs["input_ids"] == adapter_for(model).video_token_id).sum())
    assert torch.equal(ideal_inputs(model, inputs, visual)[1]()["mm_token_type_ids"], inputs["mm_token_type_ids"])
    types = ideal_inputs(model, inputs, 7)[1]()["mm_token_type_ids"]
    assert types.shape[1] == inputs["input_ids"].shape[1] - visual + 7 and int((types > 0).sum()) == 7
    assert "mm_token_type_ids" not in ideal_inputs(model_for("llava_onevision"), inputs_for(
        "llava_onevision", clip, "What?"), 7)[1]()


def test_the_ideal_routes_its_kept_visual_tokens_to_the_vision_experts(clip):
    """ERNIE-4.5-VL's experts are split by modality, routed by `moe_mm_token_type_ids`: the ideal's kept visual
    tokens (and the video's start and end) carry the prompt's ids, its text none, and it runs on them."""
    from tokcompress.ideal import ideal_inputs

    model = model_for("ernie4_5_vl_moe")
    inputs = inputs_for("ernie4_5_vl_moe", clip, "What is happening?")
    visual = int((inputs["input_ids"] == tiny.VIDEO).sum())
    ideal = ideal_inputs(model, inputs, 7)[1]()
    ids = ideal["moe_mm_token_type_ids"]
    assert ids.shape[1] == inputs["input_ids"].shape[1] - visual + 7 and int((ids > 0).sum()) == 7 + 2
    with torch.no_grad():
        model(**ideal)


@pytest.mark.parametrize("family", [f for f in FAMILIES if TINY[f].mrope])
def test_the_ideal_has_the_kept_tokens_original_m_rope_positions(family, clip):
    """M-RoPE models compute positions from the whole prompt's grids (a pass of their own forward): the ideal
    does too, and its tokens sit where they sat in the prompt - the text after the video where it was."""
    from tokcompress.engine.compat import prompt_positions
    from tokcompress.ideal import ideal_inputs

    model = model_for(family)
    inputs = inputs_for(family, clip, "What is happening?")
    prompt = prompt_positions(model, inputs)
    ideal = ideal_inputs(model, inputs, 7)[1]()
    positions = ideal["position_ids"]
    assert positions.shape[-1] == ideal["input_ids"].shape[1] and positions.shape[:-1] == prompt.shape[:-1]
    assert torch.equal(positions[..., -1], prompt[..., -1])  # the question's last token: its original position
    with torch.no_grad():  # generate continues from there
        model.generate(**ideal, max_new_tokens=2, min_new_tokens=2, do_sample=False)


@pytest.mark.parametrize("config", sorted((EVAL / "sweeps").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_sweep_runs_every_method_with_knobs_it_takes(config):
    """The accuracy sweeps name every registered method, each with knobs it accepts, at each of their ratios."""
    import yaml

    import tokcompress
    from tokcompress.methods import build_method

    planned = load("sweep").runs(yaml.safe_load(config.read_text()))
    assert {method for method, _, _ in planned} == set(tokcompress.list_methods())
    for method, ratio, knobs in planned:
        assert build_method(method, ratio, **knobs).ratio == (1.0 if ratio is None else ratio)


def test_crossovers_come_from_the_measurements_and_the_dispatch_respects_committed_gpu_results():
    bench = load("bench_kernels")
    rows = [dict(op="x", n=n, d=d, implementation=i, median_ms=t) for n, d, i, t in [
        (1, 8, "kernel", 2.0), (1, 8, "reference", 1.0), (4, 8, "kernel", 1.0), (4, 8, "reference", 2.0),
        (9, 8, "kernel", 1.0), (9, 8, "reference", 2.0)]]
    assert bench.crossovers(rows) == {"x": 4}
    rows[-2]["median_ms"] = 3.0  # losing at the largest size: never
    assert bench.crossovers(rows) == {"x": float("inf")}
    from tokcompress.ops.dispatch import MIN_KERNEL_SIZE

    for table in EVAL.glob("results/kernels_*.csv"):
        measured = list(csv.DictReader(table.open()))
        if "cpu" in table.name or not measured:
            continue
        for row in measured:
            row["n"], row["d"] = int(row["n"]), int(row["d"])
        for op, crossover in bench.crossovers(measured).items():  # dispatched only where every GPU measured a win
            assert MIN_KERNEL_SIZE[op] >= crossover, f"{table.name}: {op} dispatched below its measured crossover"


@pytest.mark.parametrize(
    "name",
    [
        "llava-onevision-7b", "llava-next-video-7b", "video-llava-7b", "qwen2.5-vl-7b", "qwen3-vl-8b", "qwen3.5-9b",
        "internvl3-8b", "glm-4.1v-9b", "videollama3-7b", "qwen2.5-omni-7b", "gemma-4-e4b", "cosmos3-edge",
        "ernie-4.5-vl-28b-a3b", "molmo2-8b", "muse-glimmer-30b",
        pytest.param("ovis2.5-9b", marks=pytest.mark.skipif(not compat.ships("ovis2_5"), reason="transformers 5.25+")),
        "gemma-4-unified", "qwen3.5-35b-a3b",
        pytest.param("llava-onevision1.5-8b", marks=pytest.mark.skipif(not compat.ships("llava_onevision1_5"),
                                                                       reason="transformers 5.25+")),
        "lfm3-vl-2b",
    ],
)
def test_the_real_shape_models_build_and_their_prompts_fit_the_adapter(name, clip):
    """On the meta device (no memory): a 7B-10B-class model (Cosmos3 Edge's and LFM3-VL's 2B-class, Gemma 4
    Unified's 3B-class, ERNIE-4.5-VL's 28B-A3B, Muse Glimmer's 30B and Qwen3.5-MoE's 35B-A3B defaults) whose prompt
    the family's adapter lays out in full."""
    from tokcompress.adapters import adapter_for

    shapes = load("shapes")
    model = shapes.named_model(name, torch.bfloat16, "meta")
    sizes = {"cosmos3-edge": (2e9, 3e9), "ernie-4.5-vl-28b-a3b": (2.6e10, 3.1e10), "muse-glimmer-30b": (2.9e10, 3.1e10),
             "gemma-4-unified": (2.5e9, 3.5e9), "qwen3.5-35b-a3b": (3.3e10, 3.7e10), "lfm3-vl-2b": (1.5e9, 2.5e9)}
    low, high = sizes.get(name, (6e9, 11e9))
    assert low < sum(p.numel() for p in model.parameters()) < high
    inputs = shapes.video_inputs(model, clip)
    (layout,) = adapter_for(model).visual_layouts(inputs)
    assert layout.num_tokens == int((inputs["input_ids"] == adapter_for(model).video_token_id).sum()) > 0
