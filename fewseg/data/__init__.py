"""Data sources: one reader per on-disk format, behind :func:`open_source`."""

from fewseg.data import (  # noqa: F401  (register readers)
    coco,
    coco20i,
    fss1000,
    masks,
    pascal,
    synthetic,
    unlabeled,
)
from fewseg.data.source import ClassSample, FoldSplit, SegClass, SegmentationSource
from fewseg.data.spec import SOURCES, open_source

__all__ = [
    "SOURCES",
    "ClassSample",
    "FoldSplit",
    "SegClass",
    "SegmentationSource",
    "open_source",
]
