"""Models: backbones (feature extractors) behind the :data:`BACKBONES` registry."""

from fewseg.models.backbones import BACKBONES, Backbone

__all__ = ["BACKBONES", "Backbone"]
