"""A built-in procedural few-shot segmentation dataset that needs no files.

Each class is a (shape, texture) pair with its own colour family, e.g. ``striped-star``.
An image shows one primary object of its class and 1-3 distractors of other classes over a
cluttered background; later objects occlude earlier ones and masks hold visible pixels.
Everything follows from ``(seed, image index)``, so any process renders identical data.
"""

from __future__ import annotations

import colorsys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, ClassVar

import numpy as np

from fewseg.data.source import GENERIC_FOLDS, ClassSample, SegClass, SegmentationSource
from fewseg.data.spec import SOURCES, SpecOptions
from fewseg.errors import FewSegError

SHAPES = ("circle", "square", "triangle", "star", "ring", "cross", "diamond", "crescent")
TEXTURES = ("solid", "striped", "checkered", "dotted", "gradient", "grid")
# Local point (in units of the object's radius) whose neighbourhood lies inside the shape.
_CORE = {"ring": (0.725, 0.0), "crescent": (-0.65, 0.0)}
_CORE_MARGIN = 1.0  # pixels around the core kept inside the shape and never occluded
_TRIANGLE_NORMALS = np.array([[np.cos(a), np.sin(a)] for a in np.radians([90, 210, 330])])


def _class_pairs() -> list[tuple[int, int]]:
    """(shape, texture) per class index, so each interleaved fold mixes all shapes/textures.

    Fold f gets the pairs with ``(shape + texture) % 4 == f``: every texture twice and every
    shape at least once, so test classes are unseen combinations of seen parts.
    """
    folds = [
        [(s, t) for t in range(len(TEXTURES)) for s in range(len(SHAPES)) if (s + t) % 4 == f]
        for f in range(GENERIC_FOLDS)
    ]
    return [
        folds[i % GENERIC_FOLDS][i // GENERIC_FOLDS] for i in range(len(SHAPES) * len(TEXTURES))
    ]


CLASS_PAIRS = _class_pairs()
CLASS_NAMES = tuple(f"{TEXTURES[t]}-{SHAPES[s]}" for s, t in CLASS_PAIRS)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255


@dataclass(frozen=True)
class _Object:
    cls: int
    x: float
    y: float
    radius: float
    angle: float
    hsv: tuple[float, float, float]
    period: float
    phase: tuple[float, float]

    @property
    def colours(self) -> tuple[np.ndarray, np.ndarray]:
        """The main colour and the darker second colour of the texture."""
        h, s, v = self.hsv
        return _hsv(h, s, v), _hsv(h + 0.06, s * 0.8, v * 0.35)

    def point(self, u: float, v: float) -> tuple[float, float]:
        """Image coordinates of the local point (u, v), in units of the radius."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.x + self.radius * (u * c - v * s), self.y + self.radius * (u * s + v * c)


def _core(obj: _Object) -> tuple[float, float]:
    return obj.point(*_CORE.get(SHAPES[CLASS_PAIRS[obj.cls][0]], (0.0, 0.0)))


def _window(
    x: float, y: float, reach: float, size: int
) -> tuple[tuple[slice, slice] | None, np.ndarray, np.ndarray]:
    """The image window within ``reach`` of (x, y) and its broadcastable pixel coordinates."""
    y0, y1 = max(int(y - reach), 0), min(int(y + reach) + 1, size)
    x0, x1 = max(int(x - reach), 0), min(int(x + reach) + 1, size)
    gy = np.arange(y0, y1, dtype=np.float32)[:, None]
    gx = np.arange(x0, x1, dtype=np.float32)[None, :]
    return ((slice(y0, y1), slice(x0, x1)) if y0 < y1 and x0 < x1 else None), gx, gy


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rho = np.hypot(u, v)
    if shape == "circle":
        return rho <= 0.95
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.68
    if shape == "triangle":
        return (np.stack([u, v], -1) @ _TRIANGLE_NORMALS.T.astype(u.dtype)).max(-1) <= 0.48
    if shape == "star":
        tip = np.abs(2 * ((np.arctan2(v, u) * (5 / (2 * np.pi)) + 0.25) % 1.0) - 1)
        return rho <= 0.38 + 0.58 * tip
    if shape == "ring":
        return (rho >= 0.5) & (rho <= 0.95)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.92)) | ((av <= 0.3) & (au <= 0.92))
    if shape == "diamond":
        return np.abs(u) / 0.62 + np.abs(v) / 0.95 <= 1
    return (rho <= 0.95) & ((u - 0.4) ** 2 + v**2 > 0.75**2)  # crescent


def _texture_weight(texture: str, obj: _Object, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """0 → the object's colour, 1 → its second colour."""
    a = u * (obj.radius / obj.period) + obj.phase[0]
    b = v * (obj.radius / obj.period) + obj.phase[1]
    if texture == "solid":
        return np.zeros_like(u)
    if texture == "striped":
        return (a % 1.0 < 0.5).astype(u.dtype)
    if texture == "checkered":
        return ((np.floor(a) + np.floor(b)) % 2).astype(u.dtype)
    if texture == "dotted":
        return ((a % 1.0 - 0.5) ** 2 + (b % 1.0 - 0.5) ** 2 < 0.09).astype(u.dtype)
    if texture == "gradient":
        return np.clip((u + 1) / 2, 0, 1)
    return ((a % 1.0 < 0.25) | (b % 1.0 < 0.25)).astype(u.dtype)  # grid


class SyntheticSource(SegmentationSource):
    """Procedural shapes × textures × colour families; 48 classes, no files needed.

    Image ``i`` (id ``f"{i:05d}"``) has a primary object of class ``i % 48``, so every class
    is the primary of ``images_per_class`` images and a distractor in others.
    """

    kind: ClassVar[str] = "synthetic"
    default_size: ClassVar[int] = 96

    def __init__(
        self, seed: int = 0, images_per_class: int = 24, size: int = 96, min_mask_pixels: int = 0
    ) -> None:
        super().__init__(min_mask_pixels)
        if seed < 0:
            raise FewSegError(f"synthetic: seed must be >= 0, got {seed}")
        if images_per_class < 1:
            raise FewSegError(f"synthetic: images must be >= 1, got {images_per_class}")
        if not 64 <= size <= 1024:
            raise FewSegError(f"synthetic: size must be in 64..1024, got {size}")
        self.seed, self.images_per_class, self.size = seed, images_per_class, size
        self.default_size = size  # evaluate and train at the rendered size by default
        self.n_images = images_per_class * len(CLASS_NAMES)
        self._classes = tuple(SegClass(i, name) for i, name in enumerate(CLASS_NAMES))
        self._render = lru_cache(maxsize=256)(self._render_uncached)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_render"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._render = lru_cache(maxsize=256)(self._render_uncached)

    def classes(self) -> Sequence[SegClass]:
        return self._classes

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "seed": self.seed,
            "images_per_class": self.images_per_class,
            "size": self.size,
            "classes": len(self._classes),
        }

    def image_ids(self) -> list[str]:
        return [f"{i:05d}" for i in range(self.n_images)]

    def _index(self, image_id: str) -> int:
        if not (image_id.isdigit() and int(image_id) < self.n_images):
            raise FewSegError(f"synthetic: unknown image id {image_id!r}")
        return int(image_id)

    def _class_pixel_counts(self) -> Mapping[int, Mapping[str, int]]:
        counts: dict[int, dict[str, int]] = {c.index: {} for c in self._classes}
        for i, image_id in enumerate(self.image_ids()):
            if self.min_mask_pixels > 0:
                labels = self._render(i)[1]
                per_class = np.bincount(labels.ravel() + 1, minlength=len(self._classes) + 1)
                present = {c: int(n) for c, n in enumerate(per_class[1:]) if n}
            else:  # the layout keeps every object's core visible, so each has pixels
                present = {obj.cls: 1 for obj in self._layout(i)}
            for c, n in present.items():
                counts[c][image_id] = n
        return counts

    def load(self, image_id: str, class_index: int) -> ClassSample:
        if not 0 <= class_index < len(self._classes):
            raise FewSegError(f"synthetic: unknown class index {class_index}")
        image, labels = self._render(self._index(image_id))
        mask = labels == class_index
        return ClassSample(image.copy(), mask, np.zeros_like(mask))

    def _layout(self, i: int) -> list[_Object]:
        """The objects of image ``i`` in drawing order; cheap, renders nothing."""
        rng = np.random.default_rng([self.seed, i, 0])
        n = len(self._classes)
        primary = i % n
        others = [(primary + 1 + int(k)) % n for k in rng.choice(n - 1, rng.integers(1, 4), False)]
        classes = list(others)
        classes.insert(int(rng.integers(0, len(classes) + 1)), primary)
        placed: list[_Object] = []
        for cls in classes:
            obj = self._place(rng, cls, placed)
            if obj is None and cls == primary:
                placed = []  # rare: drop the earlier distractors so the primary fits
                obj = self._place(rng, cls, placed)
            if obj is not None:
                placed.append(obj)
        return placed

    def _place(self, rng: np.random.Generator, cls: int, placed: list[_Object]) -> _Object | None:
        """An object whose disk spares the cores of ``placed``, with its core inside the image."""
        s, margin = self.size, _CORE_MARGIN + 1
        hue = (cls * 0.618034 + 0.05) % 1.0
        for attempt in range(40):
            obj = _Object(
                cls,
                x=rng.uniform(0.15, 0.85) * s,
                y=rng.uniform(0.15, 0.85) * s,
                radius=s * rng.uniform(0.13, 0.27) * (1 - attempt / 130),
                angle=rng.uniform(0, 2 * np.pi),
                hsv=(hue + rng.uniform(-0.035, 0.035), rng.uniform(0.6, 0.95), rng.uniform(0.7, 1)),
                period=s * rng.uniform(0.055, 0.085),
                phase=(rng.uniform(), rng.uniform()),
            )
            cx, cy = _core(obj)
            if not (margin <= cx <= s - 1 - margin and margin <= cy <= s - 1 - margin):
                continue
            cores = [_core(p) for p in placed]
            if all(np.hypot(obj.x - px, obj.y - py) >= obj.radius + margin for px, py in cores):
                return obj
        if placed:
            return None
        return _Object(cls, s / 2, s / 2, 0.2 * s, 0.0, (hue, 0.8, 0.9), 0.07 * s, (0.0, 0.0))

    @cached_property
    def _noise(self) -> np.ndarray:
        """A tile of pixel noise; each image takes a random window of it."""
        rng = np.random.default_rng([self.seed, 2**31])
        return rng.standard_normal((2 * self.size, 2 * self.size, 3), dtype=np.float32) * 4

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """Smooth colour gradient with random lines and translucent blobs, as float RGB."""
        s = self.size
        ramp = np.linspace(0, 1, s, dtype=np.float32)[:, None]
        c = [_hsv(rng.uniform(), rng.uniform(0.05, 0.5), rng.uniform(0.3, 0.9)) for _ in range(4)]
        top, bottom = c[0] + (c[1] - c[0]) * ramp, c[2] + (c[3] - c[2]) * ramp
        image = top[None] + (bottom - top)[None] * ramp[:, :, None]
        for _ in range(rng.integers(3, 7)):
            (x0, y0), (x1, y1) = rng.uniform(-0.1, 1.1, (2, 2)) * s
            width, length = rng.uniform(0.5, 2.0), np.hypot(x1 - x0, y1 - y0) + 1e-6
            t = np.linspace(0, 1, int(2 * length) + 2)[:, None]
            across = np.arange(-width, width + 1e-6, 0.5)[None, :] / length
            xs = np.rint(x0 + t * (x1 - x0) - across * (y1 - y0)).astype(np.intp).ravel()
            ys = np.rint(y0 + t * (y1 - y0) + across * (x1 - x0)).astype(np.intp).ravel()
            keep = (xs >= 0) & (xs < s) & (ys >= 0) & (ys < s)
            image[ys[keep], xs[keep]] = _hsv(rng.uniform(), rng.uniform(), rng.uniform())
        for _ in range(rng.integers(2, 5)):
            cx, cy, r = rng.uniform(0, s), rng.uniform(0, s), s * rng.uniform(0.06, 0.2)
            lobes, turn, squash = rng.integers(2, 5), rng.uniform(0, 2 * np.pi), rng.uniform(1, 2)
            colour = _hsv(rng.uniform(), rng.uniform(0.2, 0.9), rng.uniform(0.2, 1))
            window, gx, gy = _window(cx, cy, 1.3 * r + 1, s)
            if window is None:
                continue
            wobble = 1 + 0.3 * np.sin(lobes * np.arctan2(gy - cy, gx - cx) + turn)
            blob = np.hypot(gx - cx, (gy - cy) * squash) <= r * wobble
            image[window][blob] = 0.5 * image[window][blob] + 0.5 * colour
        return image

    def _render_uncached(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) int16 class labels (-1: background)."""
        s = self.size
        rng = np.random.default_rng([self.seed, i, 1])
        image = self._background(rng)
        labels = np.full((s, s), -1, dtype=np.int16)
        for obj in self._layout(i):
            window, gx, gy = _window(obj.x, obj.y, obj.radius + 1, s)
            if window is None:
                continue
            c, sn = np.cos(obj.angle), np.sin(obj.angle)
            u = ((gx - obj.x) * c + (gy - obj.y) * sn) / obj.radius
            v = ((gy - obj.y) * c - (gx - obj.x) * sn) / obj.radius
            shape, texture = CLASS_PAIRS[obj.cls]
            inside = _shape_mask(SHAPES[shape], u, v)
            w = _texture_weight(TEXTURES[texture], obj, u, v)[inside][:, None]
            colour, colour2 = obj.colours
            image[window][inside] = colour + (colour2 - colour) * w
            labels[window][inside] = obj.cls
        ox, oy = rng.integers(0, s, 2)
        image += self._noise[oy : oy + s, ox : ox + s]
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        image.flags.writeable = labels.flags.writeable = False
        return image, labels


@SOURCES.register("synthetic", "built-in procedural shapes/textures dataset, 48 classes, no files")
def _open_synthetic(
    root: str | None, options: SpecOptions, min_mask_pixels: int
) -> SegmentationSource:
    if root is not None:
        raise FewSegError(f"{options.spec}: synthetic takes no root, got {root!r}")
    return SyntheticSource(
        seed=options.pop_int("seed", 0) or 0,
        images_per_class=options.pop_int("images", 24) or 0,
        size=options.pop_int("size", SyntheticSource.default_size) or 0,
        min_mask_pixels=min_mask_pixels,
    )
