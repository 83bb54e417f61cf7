"""The screenshots of ``fewseg serve`` in docs/figures (serve.jpg, serve-error.png).

Starts ``fewseg serve`` (the training-free baseline), opens it in Debian's Chromium through
Playwright, paints a cat in a COCO photo with the brush (strokes along the rows of the
photo's annotated mask, kept a brush radius inside it, as a person would scribble over
the animal), adds four other photos of cats, presses Segment and saves the page. A second
screenshot shows the message for a file that is not an image. Run by `make screenshots`;
needs the coco-mini set (../shared/data/coco-mini, or --data DIR), Chromium and playwright.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]
SUPPORT = 650  # COCO image id: a cat on a car
QUERIES = (599, 22892, 196393, 358083)  # other cats
CATEGORY = "cat"
BRUSH_RADIUS = 25  # the editor's default brush size, in image pixels
ROW_STEP = 20  # image rows between two strokes
TIMEOUT_MS = 120_000


def cat_mask(data: Path, image_id: int) -> np.ndarray:
    """The union of the image's annotated cat masks, HxW bool."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(data / "annotations" / "instances.json"))
    category = coco.getCatIds(catNms=[CATEGORY])
    annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, catIds=category, iscrowd=None))
    return np.any([coco.annToMask(a).astype(bool) for a in annotations], axis=0)


def strokes(mask: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, first column, last column) of horizontal strokes whose brush disc stays inside
    ``mask``: the runs of the mask eroded by the brush radius, every ROW_STEP rows."""
    import torch

    inside = torch.from_numpy(~mask).float()[None, None]
    size = 2 * BRUSH_RADIUS + 1
    grown = torch.nn.functional.max_pool2d(inside, size, stride=1, padding=BRUSH_RADIUS)
    eroded = (grown[0, 0] == 0).numpy()
    found = []
    for row in range(0, mask.shape[0], ROW_STEP):
        columns = np.flatnonzero(eroded[row])
        if columns.size == 0:
            continue
        breaks = np.flatnonzero(np.diff(columns) > 1)
        for first, last in zip(
            np.r_[columns[0], columns[breaks + 1]], np.r_[columns[breaks], columns[-1]], strict=True
        ):
            found.append((row, int(first), int(last)))
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "fewseg", "serve", "--learner", "baseline", "--port"]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, str(port)], cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 300
    while "fewseg serve: http" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"fewseg serve did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return process


def wait_for_status(page: object, starts: str) -> None:
    page.wait_for_function(  # type: ignore[attr-defined]
        "s => document.querySelector('#status').innerText.trim().startsWith(s)",
        arg=starts,
        timeout=TIMEOUT_MS,
    )


ZOOM = "(s => (document.querySelector(s).innerText.match(/\\d+%/) || [''])[0])"


def upload_support(page: object, image: Path) -> None:
    """Upload the support image and wait until the canvas shows it (the editor's zoom
    reading changes from that of the empty canvas)."""
    before = page.evaluate(f"{ZOOM}('#support-editor')")  # type: ignore[attr-defined]
    page.locator("#support-editor input[type=file]").set_input_files(str(image))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        f"b => {{ const z = {ZOOM}('#support-editor'); return z !== '' && z !== b; }}",
        arg=before,
    )
    page.wait_for_timeout(500)  # type: ignore[attr-defined]


def paint(page: object, mask: np.ndarray) -> None:
    """Brush strokes over ``mask`` on the editor's canvas, which shows the image centred at
    the zoom it reports."""
    editor = page.locator("#support-editor")  # type: ignore[attr-defined]
    editor.get_by_role("button", name="Brush", exact=True).click()
    zoom = float(page.evaluate(f"{ZOOM}('#support-editor')").rstrip("%")) / 100  # type: ignore[attr-defined]
    box = editor.locator(".pixi-target canvas").bounding_box()
    height, width = mask.shape
    left = box["x"] + box["width"] / 2 - width * zoom / 2
    top = box["y"] + box["height"] / 2 - height * zoom / 2
    for row, first, last in strokes(mask):
        y = top + (row + 0.5) * zoom
        page.mouse.move(left + (first + 0.5) * zoom, y)  # type: ignore[attr-defined]
        page.mouse.down()  # type: ignore[attr-defined]
        page.mouse.move(left + (last + 0.5) * zoom, y, steps=8)  # type: ignore[attr-defined]
        page.mouse.up()  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/coco-mini")
    parser.add_argument("--out", type=Path, default=REPO / "docs/figures")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    images = args.data / "images"
    support = images / f"{SUPPORT:012d}.jpg"
    queries = [str(images / f"{i:012d}.jpg") for i in QUERIES]
    mask = cat_mask(args.data, SUPPORT)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        server = start_server(port, Path(scratch) / "serve.log")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
                page.locator("#segment").wait_for()

                text = Path(scratch) / "notes.txt"
                text.write_text("not an image")
                page.locator("#query-files input[type=file]").set_input_files(str(text))
                page.locator("#query-files").get_by_text("notes.txt").wait_for()
                page.locator("#segment").click()
                wait_for_status(page, "Error:")
                page.screenshot(
                    path=str(args.out / "serve-error.png"),
                    clip={"x": 760, "y": 160, "width": 500, "height": 460},
                )
                page.locator("#query-files").get_by_role("button", name="Clear").first.click()

                upload_support(page, support)
                paint(page, mask)
                page.locator("#query-files input[type=file]").set_input_files(queries)
                page.wait_for_function(
                    "names => names.every(n => "
                    "document.querySelector('#query-files').innerText.includes(n))",
                    arg=[Path(q).stem for q in queries],
                )
                page.locator("#class-name input, #class-name textarea").first.fill(CATEGORY)
                page.locator("#segment").click()
                wait_for_status(page, "Segmented")
                page.locator('#download-masks a[download="masks.zip"]').wait_for()
                page.wait_for_timeout(1000)
                page.screenshot(
                    path=str(args.out / "serve.jpg"), full_page=True, type="jpeg", quality=80
                )
                print(page.locator("#status").inner_text().strip())
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"cat mask: {int(mask.sum())} pixels; strokes: {len(strokes(mask))}")
    print(f"screenshots: {args.out / 'serve.jpg'}, {args.out / 'serve-error.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
