"""The logic of ``fewseg serve``'s page, free of any web framework: support examples from
a painted (or uploaded) mask, queries from uploads or a folder on the server, the
segmentation through the Python API (fewseg.api), and the files to download.

:class:`Labeller` holds the model, loaded once per server; every Segment press adapts it
to the examples anew. Every bad input is a :class:`fewseg.FewSegError` whose one-line
message the page shows.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fewseg.api import Model
from fewseg.apps.exports import (
    COCO_NAME,
    DEFAULT_CLASS_NAME,
    NamedMask,
    coco_document,
    masks_zip,
    png_bytes,
)
from fewseg.data.imageio import check_same_size, read_rgb
from fewseg.data.source import ClassSample
from fewseg.data.user_images import (
    DEFAULT_MASK_THRESHOLD,
    collect_queries,
    decode_mask,
    read_mask_label,
)
from fewseg.engine.figures import PREDICTION_COLOR, SUPPORT_COLOR, overlay
from fewseg.errors import FewSegError
from fewseg.fileio import atomic_write

MASKS_ZIP = "masks.zip"
SUPPORT_ZIP = "support.zip"


@dataclass(frozen=True)
class Example:
    """A support example: HxWx3 uint8 image, HxW bool foreground and ignore."""

    name: str
    image: np.ndarray
    foreground: np.ndarray
    ignore: np.ndarray
    source: str  # "painted" or the uploaded mask file's name

    def sample(self) -> ClassSample:
        return ClassSample(self.image, self.foreground, self.ignore)

    def preview(self) -> np.ndarray:
        return overlay(self.image, self.foreground, SUPPORT_COLOR)


@dataclass(frozen=True)
class QueryImage:
    name: str  # output name without suffix: masks/<name>.png
    file_name: str  # the name shown and written to coco.json
    image: np.ndarray


@dataclass(frozen=True)
class Result:
    query: QueryImage
    mask: np.ndarray  # HxW bool
    presence: float | None = None

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean(dtype=np.float64))

    def preview(self) -> np.ndarray:
        return overlay(self.query.image, self.mask, PREDICTION_COLOR)

    def caption(self) -> str:
        text = f"{self.query.file_name}: {100 * self.foreground_fraction:.1f}% foreground"
        if self.presence is not None:
            text += f", presence {self.presence:.2f}"
        return text


def painted_mask(editor: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray:
    """The union of an image editor's paint layers (HxWx4 RGBA arrays: a pixel is painted
    where its alpha is above 0), at the background's (height, width)."""
    painted = np.zeros(shape, bool)
    for layer in editor.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        alpha = layer[..., 3] > 0 if layer.ndim == 3 and layer.shape[2] == 4 else layer > 0
        if alpha.ndim == 3:
            alpha = alpha.any(axis=2)
        if alpha.shape != shape:  # a canvas of another size: nearest neighbour onto the image
            resized = Image.fromarray(alpha).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
            alpha = np.asarray(resized)
        painted |= alpha
    return painted


def editor_image(editor: Mapping[str, Any] | None) -> np.ndarray | None:
    """The editor's background image as HxWx3 uint8, or None when none was uploaded."""
    if not editor or editor.get("background") is None:
        return None
    background = np.asarray(editor["background"])
    if background.ndim == 2:
        return np.repeat(background[..., None], 3, axis=2)
    return np.ascontiguousarray(background[..., :3]).astype(np.uint8, copy=False)


class Labeller:
    """The model and the page's actions; holds no state of a page (each browser tab keeps
    its own examples and results)."""

    def __init__(
        self,
        model: Model,
        mask_threshold: int = DEFAULT_MASK_THRESHOLD,
        max_folder_images: int = 1000,
    ) -> None:
        self.model = model
        self.mask_threshold = mask_threshold
        self.max_folder_images = max_folder_images

    def describe(self) -> str:
        learner = self.model.learner.name
        trained = self.model.loaded.trained
        origin = f" from {trained['checkpoint']} (step {trained['step']})" if trained else ""
        return (
            f"{learner}{origin}, images at {self.model.size}x{self.model.size}, "
            f"on {self.model.device}"
        )

    # ---- support examples -----------------------------------------------------------------

    def example(
        self, editor: Mapping[str, Any] | None, mask_file: str | Path | None, number: int
    ) -> Example:
        """The example in the editor: its image with the painted mask, or with the uploaded
        mask file instead when there is one."""
        image = editor_image(editor)
        name = f"example {number}"
        if image is None:
            raise FewSegError(f"{name}: upload a support image first")
        if mask_file is not None:
            label, palette = read_mask_label(mask_file)
            shown = Path(mask_file).name
            check_same_size(image, label, shown)
            foreground, ignore, _ = decode_mask(label, shown, self.mask_threshold, palette)
            source = shown
        else:
            foreground = painted_mask(editor or {}, image.shape[:2])
            ignore = np.zeros_like(foreground)
            source = "painted"
        if not foreground.any():
            hint = (
                f"{source}: no foreground pixel"
                if mask_file is not None
                else "the mask is empty: paint the object with the brush (or upload its mask)"
            )
            raise FewSegError(f"{name}: {hint}")
        return Example(name, image, foreground, ignore, source)

    @staticmethod
    def has_content(editor: Mapping[str, Any] | None, mask_file: str | Path | None) -> bool:
        """Whether the editor holds an image with paint or an uploaded mask."""
        image = editor_image(editor)
        if image is None:
            return False
        return mask_file is not None or bool(painted_mask(editor or {}, image.shape[:2]).any())

    # ---- queries ----------------------------------------------------------------------------

    def queries(self, uploads: Sequence[str | Path] | None, folder: str | None) -> list[QueryImage]:
        """Uploaded query files (named by their file names) then a server folder's images
        (named by their paths in it); a file that is not an image is an error naming it."""
        found: list[QueryImage] = []
        taken: set[str] = set()

        def add(path: Path, name: str, file_name: str) -> None:
            try:
                image = read_rgb(path)
            except FewSegError as error:
                raise FewSegError(str(error).replace(str(path), file_name)) from None
            unique, n = name, 1
            while unique in taken:
                n += 1
                unique = f"{name}-{n}"
            taken.add(unique)
            found.append(QueryImage(unique, file_name, image))

        for upload in uploads or []:
            path = Path(upload)
            add(path, path.stem, path.name)
        if folder and folder.strip():
            directory = Path(folder.strip()).expanduser()
            if not directory.is_dir():
                raise FewSegError(f"{directory}: no such folder on the server")
            collected = collect_queries([directory], warn=lambda _: None)
            if len(collected) > self.max_folder_images:
                raise FewSegError(
                    f"{directory}: {len(collected)} images; the page segments at most "
                    f"{self.max_folder_images} at once (use `fewseg segment` for more)"
                )
            for query in collected:
                add(query.path, query.name, query.relative)
        if not found:
            raise FewSegError("no image to segment: add query images (or a folder)")
        return found

    # ---- segmenting ---------------------------------------------------------------------------

    def segment(self, examples: Sequence[Example], queries: Sequence[QueryImage]) -> list[Result]:
        """Adapt to the examples (through the API) and segment every query; with each mask
        the presence score (whether the class is in the image at all) when the segmenter
        gives one (``ClassSegmenter.presence``), else None."""
        if not examples:
            raise FewSegError(
                "no support example: upload an image, paint the object, press Add example"
            )
        segmenter = self.model.adapt_samples(
            [example.sample() for example in examples], [e.name for e in examples]
        )
        images = [q.image for q in queries]
        masks = [log_odds > 0 for log_odds in segmenter.predict_arrays(images)]
        scores: Sequence[float | None] = [None] * len(queries)
        if hasattr(segmenter, "presence"):
            scores = [float(score) for score in segmenter.presence(images)]
        return [
            Result(query, mask, score)
            for query, mask, score in zip(queries, masks, scores, strict=True)
        ]

    # ---- downloads ----------------------------------------------------------------------------

    @staticmethod
    def write_downloads(
        results: Sequence[Result],
        examples: Sequence[Example],
        folder: str | Path,
        class_name: str = DEFAULT_CLASS_NAME,
    ) -> dict[str, Path]:
        """masks.zip (masks/<name>.png, 255 = foreground), coco.json (RLE) and support.zip
        (images/ + masks/, as `fewseg segment --support-dir` reads them) in ``folder``."""
        folder = Path(folder)
        named = [NamedMask(r.query.name, r.query.file_name, r.mask) for r in results]
        scores = [r.presence for r in results]
        document = coco_document(
            named,
            class_name.strip() or DEFAULT_CLASS_NAME,
            None if any(s is None for s in scores) else [float(s or 0) for s in scores],
        )
        files = {
            MASKS_ZIP: masks_zip(named),
            COCO_NAME: json.dumps(document).encode(),
            SUPPORT_ZIP: support_zip(examples),
        }
        paths = {}
        for name, data in files.items():
            atomic_write(folder / name, lambda handle, data=data: handle.write(data))
            paths[name] = folder / name
        return paths


def support_zip(examples: Sequence[Example]) -> bytes:
    """The examples as used: images/<n>.png and masks/<n>.png (255 = foreground, 1 where an
    uploaded mask had ignore pixels: 0/1 with 255 = ignore)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, example in enumerate(examples, start=1):
            stem = f"example-{number}"
            image = io.BytesIO()
            Image.fromarray(example.image).save(image, format="PNG")
            archive.writestr(f"images/{stem}.png", image.getvalue())
            if example.ignore.any():
                label = np.where(example.ignore, 255, example.foreground.astype(np.uint8))
                archive.writestr(f"masks/{stem}.png", png_bytes(label.astype(np.uint8)))
            else:
                archive.writestr(f"masks/{stem}.png", png_bytes(example.foreground))
    return buffer.getvalue()
