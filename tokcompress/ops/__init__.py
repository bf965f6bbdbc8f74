"""Shared math of the compression methods. Each op is one call with a plain PyTorch body."""

from .attention import few_query_attention
from .merge import weighted_merge
from .similarity import NO_PARTNER, aligned_cosine

__all__ = ["NO_PARTNER", "aligned_cosine", "few_query_attention", "weighted_merge"]
