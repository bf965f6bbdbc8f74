"""Every Triton kernel against its torch reference (under TRITON_INTERPRET=1 on the CPU, real on a GPU)."""

from __future__ import annotations

import pytest
import torch

from tokcompress import ops
from tokcompress.ops import attention, matching, merge, similarity

pytest.importorskip("triton")
from tokcompress.kernels import attention as attention_kernel  # noqa: E402
from tokcompress.kernels import matching as matching_kernel  # noqa: E402
from tokcompress.kernels import merge as merge_kernel  # noqa: E402
from tokcompress.kernels import similarity as similarity_kernel  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=1e-2, rtol=1e-2),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
}
DTYPES = list(TOLERANCE)


def random(*shape, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(DEVICE, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "d"), [(0, 64), (1, 64), (37, 96), (50, 896), (19, 3584)])
def test_aligned_cosine_kernel(dtype, n, d):
    tokens = random(n, d, dtype=dtype)
    partner = torch.randint(-1, max(n, 1), (n,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    expected = similarity.aligned_cosine_reference(tokens, partner)
    torch.testing.assert_close(similarity_kernel.aligned_cosine(tokens, partner), expected, **TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "d", "destinations"), [(0, 64, 3), (1, 64, 1), (41, 96, 7), (30, 896, 11)])
def test_weighted_merge_kernel(dtype, n, d, destinations):
    tokens = random(n, d, dtype=dtype)
    sizes = torch.randint(1, 5, (n,), generator=torch.Generator().manual_seed(2)).float().to(DEVICE)
    merge_into = torch.randint(-1, destinations, (n,), generator=torch.Generator().manual_seed(3)).to(DEVICE)
    merged, new_sizes = merge_kernel.weighted_merge(tokens, sizes, merge_into, destinations)
    expected, expected_sizes = merge.weighted_merge_reference(tokens, sizes, merge_into, destinations)
    torch.testing.assert_close(merged, expected, **TOLERANCE[dtype])
    torch.testing.assert_close(new_sizes, expected_sizes)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("heads", "kv_heads", "head_dim"), [(4, 4, 64), (6, 2, 80), (4, 1, 128)])
@pytest.mark.parametrize(("rows", "keys", "masked"), [(1, 1, False), (1, 70, False), (3, 45, True)])
def test_few_query_attention_kernel(dtype, heads, kv_heads, head_dim, rows, keys, masked):
    queries = random(heads, rows, head_dim, dtype=dtype)
    key_states = random(kv_heads, keys, head_dim, dtype=dtype, seed=1)
    key_mask = None
    if masked:
        key_mask = torch.ones(rows, keys, dtype=torch.bool, device=DEVICE).tril(diagonal=keys - rows)
        key_mask[:, :5] = False
    expected = attention.few_query_attention_reference(queries, key_states, key_mask)
    torch.testing.assert_close(
        attention_kernel.few_query_attention(queries, key_states, key_mask), expected, **TOLERANCE[dtype]
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("na", "nb", "d"), [(1, 1, 64), (37, 41, 96), (20, 70, 896), (33, 17, 3584)])
def test_bipartite_match_kernel(dtype, na, nb, d):
    a = random(3, na, d, dtype=dtype)
    b = random(3, nb, d, dtype=dtype, seed=1)
    b[1, nb // 2] = a[1, 0]  # an exact match must be found
    a_lengths = torch.tensor([na, max(na - 5, 0), na], device=DEVICE)
    b_lengths = torch.tensor([nb, nb, 0], device=DEVICE)  # ragged, and one row with no B at all
    score, index = matching_kernel.bipartite_match(a, b, a_lengths, b_lengths)
    expected_score, expected_index = matching.bipartite_match_reference(a, b, a_lengths, b_lengths)
    torch.testing.assert_close(score, expected_score, **TOLERANCE[dtype])
    if na > 5:
        assert index[1, 0] == nb // 2
    finite = torch.isfinite(expected_score)
    assert torch.equal(index[~finite], expected_index[~finite])  # padded A rows and rows without B: -1
    # near-ties may pick either B: the chosen one must score as the best one
    chosen = torch.nn.functional.cosine_similarity(
        a[finite].float(), b[finite.nonzero()[:, 0], index[finite]].float(), dim=-1
    )
    torch.testing.assert_close(chosen, expected_score[finite], **TOLERANCE[dtype])


def test_dispatch_sends_cuda_tensors_to_kernels_unless_forced_to_the_reference(monkeypatch):
    from tokcompress.ops import dispatch

    cpu = torch.randn(4, 8)
    assert dispatch.kernel_for("aligned_cosine", cpu, 4) is None  # CPU tensors: always the reference
    fake_cuda = type("FakeCuda", (), {"is_cuda": True})()
    assert dispatch.kernel_for("aligned_cosine", fake_cuda, 4) is similarity_kernel.aligned_cosine
    assert dispatch.kernel_for("few_query_attention", fake_cuda, 10**6) is None  # not measured faster yet
    monkeypatch.setitem(dispatch.MIN_KERNEL_SIZE, "few_query_attention", 0)
    assert dispatch.kernel_for("few_query_attention", fake_cuda, 4) is attention_kernel.few_query_attention
    monkeypatch.setitem(dispatch.MIN_KERNEL_SIZE, "weighted_merge", 100)
    assert dispatch.kernel_for("weighted_merge", fake_cuda, 99) is None  # below the measured crossover
    assert dispatch.kernel_for("weighted_merge", fake_cuda, 100) is merge_kernel.weighted_merge
    monkeypatch.setenv(dispatch.FORCE_REFERENCE, "1")
    assert dispatch.kernel_for("aligned_cosine", fake_cuda, 4) is None
    torch.testing.assert_close(
        ops.aligned_cosine(cpu, torch.tensor([-1, 0, 1, 2]))[1:],
        torch.nn.functional.cosine_similarity(cpu[1:], cpu[:3]),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_bipartite_match_kernel_splits_b_across_programs_and_keeps_the_first_of_ties(dtype):
    a = random(2, 40, 64, dtype=dtype)
    b = random(2, 300, 64, dtype=dtype, seed=1)  # three slices of B
    b[0, 250] = b[0, 20] = a[0, 3]  # the same exact match in two slices: the earlier token wins
    lengths_a, lengths_b = torch.tensor([40, 31], device=DEVICE), torch.tensor([300, 140], device=DEVICE)
    score, index = matching_kernel.bipartite_match(a, b, lengths_a, lengths_b)
    expected_score, expected_index = matching.bipartite_match_reference(a, b, lengths_a, lengths_b)
    torch.testing.assert_close(score, expected_score, **TOLERANCE[dtype])
    if dtype == torch.float32:  # half-precision dot products of equal rows may round differently per tile slot
        assert index[0, 3] == 20
    assert index[0, 3] in (20, 250)
    assert bool((index[1, 31:] == -1).all()) and bool((index[1, :31] < 140).all())
