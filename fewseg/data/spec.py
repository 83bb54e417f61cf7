"""Dataset specs: ``kind:ROOT,key=value,...`` → a :class:`SegmentationSource`.

Each reader registers a factory ``factory(root, options, min_mask_pixels)`` in
:data:`SOURCES`; the factory takes what it understands from ``options`` and the spec
parser rejects whatever is left over, so a typo never passes silently. Settings that come
from the command rather than from the spec (the index cache folder) ride along on
``options`` as attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fewseg.data.source import SegmentationSource
from fewseg.errors import FewSegError
from fewseg.registry import Registry


@dataclass
class SpecOptions:
    """The ``key=value`` options of a spec; readers pop what they use.

    ``index_cache``: where readers that index their annotations keep the index (None: the
    default, ``$XDG_CACHE_HOME/fewseg/index``).
    """

    spec: str
    values: dict[str, str] = field(default_factory=dict)
    index_cache: str | Path | None = None

    def pop_str(self, key: str, default: str | None = None) -> str | None:
        return self.values.pop(key, default)

    def pop_int(self, key: str, default: int | None = None) -> int | None:
        raw = self.values.pop(key, None)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise FewSegError(f"{self.spec}: option {key}={raw!r} is not an integer") from None

    def pop_choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.values.pop(key, default)
        if raw not in choices:
            raise FewSegError(
                f"{self.spec}: option {key}={raw!r} must be one of {', '.join(choices)}"
            )
        return raw

    def reject_rest(self) -> None:
        if self.values:
            unknown = ", ".join(sorted(self.values))
            raise FewSegError(f"{self.spec}: unknown option(s) {unknown}")


SourceFactory = Callable[[str | None, SpecOptions, int], SegmentationSource]
SOURCES: Registry[SourceFactory] = Registry("dataset kind")


def parse_spec(spec: str) -> tuple[str, str | None, SpecOptions]:
    """``'masks:ROOT,images=a,ignore=11'`` → ``('masks', 'ROOT', {images: a, ignore: 11})``."""
    kind, _, rest = spec.partition(":")
    root: str | None = None
    options = SpecOptions(spec)
    for i, part in enumerate(p for p in rest.split(",") if p) if rest else ():
        key, eq, value = part.partition("=")
        if not eq:
            if i != 0:
                raise FewSegError(f"{spec}: {part!r} is not a key=value option")
            root = part
        elif key in options.values:
            raise FewSegError(f"{spec}: option {key} given twice")
        else:
            options.values[key] = value
    return kind, root, options


def open_source(
    spec: str, min_mask_pixels: int = 0, index_cache: str | Path | None = None
) -> SegmentationSource:
    """Build the source a spec names; every error is a one-line :class:`FewSegError`."""
    import fewseg.data  # noqa: F401  (registers the readers)

    kind, root, options = parse_spec(spec)
    options.index_cache = index_cache
    factory = SOURCES.get(kind)
    source = factory(root, options, min_mask_pixels)
    options.reject_rest()
    return source
