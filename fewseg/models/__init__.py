"""Models: backbones (feature extractors) behind the :data:`BACKBONES` registry, heads."""

from fewseg.models import convnet, efficientnet  # noqa: F401  (register)
from fewseg.models.backbones import BACKBONES, Backbone

__all__ = ["BACKBONES", "Backbone"]
