"""qaexp: Hydra-configured experiments for extractive question answering."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `qaexp.pipeline(checkpoint)` without importing torch/transformers at `import qaexp`:
    # the submodule is imported on first access, and it is callable (see qaexp/pipeline.py).
    if name == "pipeline":
        import importlib

        return importlib.import_module("qaexp.pipeline")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
