"""Shared math of the compression methods: one call per op, a torch reference, and a Triton kernel for CUDA tensors."""

from .attention import (
    attention_pagerank,
    attention_received,
    attention_row_sharpness,
    few_query_attention,
    global_query_attention,
    packed_attention_received,
    repeat_heads,
)
from .cluster import density_peak_clusters, fold_clusters, grouped_density_peaks
from .matching import bipartite_match
from .merge import weighted_merge
from .similarity import NO_PARTNER, aligned_cosine
from .varlen import varlen_attention

__all__ = [
    "NO_PARTNER", "aligned_cosine", "attention_pagerank", "attention_received", "attention_row_sharpness",
    "bipartite_match", "density_peak_clusters", "few_query_attention", "fold_clusters", "global_query_attention",
    "grouped_density_peaks", "packed_attention_received", "repeat_heads", "varlen_attention", "weighted_merge",
]
