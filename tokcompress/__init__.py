"""tokcompress: training-free visual-token compression for Hugging Face Video-LLMs.

    handle = tokcompress.patch(model, method="framefusion", ratio=0.3)
    model.generate(**inputs)
    print(handle.stats)
    handle.unpatch()
"""

from . import methods
from .adapters import list_models
from .api import CompressionHandle, compress, patch, unpatch
from .methods import list_methods, register_method
from .methods.base import PromptRefused
from .stats import CompressionStats

__version__ = "0.1.0"

__all__ = [
    "CompressionHandle",
    "CompressionStats",
    "PromptRefused",
    "compress",
    "list_methods",
    "list_models",
    "methods",
    "patch",
    "register_method",
    "unpatch",
]
