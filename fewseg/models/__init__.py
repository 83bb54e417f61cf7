"""Models: backbones (feature extractors) behind the :data:`BACKBONES` registry, heads."""

from fewseg.models import convnet  # noqa: F401  (registers)
from fewseg.models.backbones import BACKBONES, Backbone

__all__ = ["BACKBONES", "Backbone"]
