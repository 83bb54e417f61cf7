"""fewseg: few-shot semantic segmentation by meta-learning.

>>> import fewseg
>>> segment = fewseg.load("baseline").adapt(["cat.jpg"], ["cat.png"])  # doctest: +SKIP
>>> masks = segment(["photo.jpg"])  # doctest: +SKIP

See :mod:`fewseg.api` and docs/api.md. The API is imported on first use, so that
``import fewseg`` (and ``fewseg --help``) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fewseg.errors import FewSegError

__version__ = "0.2.0"
__all__ = ["ClassSegmenter", "FewSegError", "Model", "__version__", "load"]

if TYPE_CHECKING:
    from fewseg.api import ClassSegmenter, Model, load

_API = {"load", "Model", "ClassSegmenter"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from fewseg import api

        return getattr(api, name)
    raise AttributeError(f"module 'fewseg' has no attribute {name!r}")
