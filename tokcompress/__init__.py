"""tokcompress: training-free visual-token compression for Hugging Face Video-LLMs.

    handle = tokcompress.patch(model, method="framefusion", ratio=0.3)
    model.generate(**inputs)
    print(handle.stats)
    handle.unpatch()
"""

from .releases import refuse_older_than_floor

refuse_older_than_floor(error=ImportError)  # before any module imports transformers' internals

from . import methods  # noqa: E402
from .adapters import list_models  # noqa: E402
from .api import CompressionHandle, compress, patch, unpatch  # noqa: E402
from .methods import list_methods, register_method  # noqa: E402
from .methods.base import PromptRefused  # noqa: E402
from .stats import CompressionStats  # noqa: E402

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
