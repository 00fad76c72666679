"""qaexp: Hydra-configured experiments for extractive question answering."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["pipeline"]


def pipeline(*args: Any, **kwargs: Any) -> Any:
    """A question-answering pipeline for a checkpoint: see `qaexp.answering.pipeline`.

    Defined here so that `import qaexp` stays light: torch and transformers are imported on
    the first call.
    """
    from qaexp.answering import pipeline as make_pipeline

    return make_pipeline(*args, **kwargs)
