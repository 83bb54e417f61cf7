"""``fewseg serve`` in a real browser: Debian's Chromium driven by Playwright.

A ``fewseg serve`` process is started on a free port; the test uploads a support image,
paints a short stroke with the brush, adds a query, presses Segment, downloads the masks
and the support examples the page used, and checks that the returned mask is what the
Python API gives for the same inputs. On the way it sends the page bad input (Segment with
nothing, a file that is not an image) and checks the message and that the server keeps
running; every request of the page must stay on this machine. A screenshot is saved
(to $FEWSEG_SCREENSHOTS as well, when set: docs/figures is made that way).

Run alone: ``.venv/bin/pytest -q tests/test_serve_browser.py`` (about 30 s). `make test`
installs Chromium (apt-get, the Makefile's `browser` target) and playwright (the dev
extra) and sets FEWSEG_REQUIRE_BROWSER=1, under which a missing one fails the test (so
does CI=true); elsewhere it is skipped, with the reason in pytest's summary.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from imagefiles import save, scene
from PIL import Image

import fewseg

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SIZE = 64  # the model's input size
# The support image and its object (top, left, bottom, right): large enough for the brush's
# default size (25 image pixels) to paint a stroke inside the object.
SUPPORT = 256
OBJECT = (64, 64, 192, 192)
START_SECONDS = 180
ACTION_MS = 180_000  # a page action on a loaded 2-core machine (25 s for the whole test when quiet)


def missing(reason: str) -> None:
    if os.environ.get("FEWSEG_REQUIRE_BROWSER") == "1" or os.environ.get("CI"):
        pytest.fail(f"{reason} (`make browser` installs it)")
    pytest.skip(f"{reason} (`make browser` installs it)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `fewseg serve` process on a free port; its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fewseg", "serve", "--learner", "baseline"]
    command += ["--size", str(SIZE), "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while "fewseg serve: http" not in log.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"fewseg serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        missing(f"{CHROMIUM} is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        yield chromium
        chromium.close()


def status(page: object) -> str:
    return page.locator("#status").inner_text().strip()  # type: ignore[attr-defined]


def wait_for_status(page: object, starts: str) -> str:
    page.wait_for_function(  # type: ignore[attr-defined]
        "starts => document.querySelector('#status').innerText.trim().startsWith(starts)",
        arg=starts,
        timeout=ACTION_MS,
    )
    return status(page)


ZOOM = "(s => (document.querySelector(s).innerText.match(/\\d+%/) || [''])[0])"


UPLOAD_MS = 5_000
IDLE = "() => !document.querySelector('.pending, .generating, .eta-bar, .progress-bar')"


def upload_files(page: object, box: str, path: Path, tries: int = 1) -> None:
    """Upload ``path`` into the file box ``box`` once the page has finished the event before,
    until the box lists it exactly once; up to ``tries`` uploads.

    A listed file is found by its row's label (Gradio writes the name as two elements, stem
    and extension, so the text reads "notes .txt" when rendered: matching the text missed it
    now and then, a second upload followed and the box listed two copies). A missing file
    is uploaded again only when every upload the page sent has been answered and
    ``UPLOAD_MS`` more have passed; a box with two copies is cleared and filled afresh."""
    listed = page.locator(box).get_by_label(path.name, exact=True)  # type: ignore[attr-defined]
    sent: list[object] = []
    answered: list[object] = []

    def is_upload(request: object) -> bool:
        return request.method == "POST" and "/upload?" in request.url  # type: ignore[attr-defined]

    def on_request(request: object) -> None:
        if is_upload(request):
            sent.append(request)

    def on_answer(request: object) -> None:
        if is_upload(request):
            answered.append(request)

    events = {"request": on_request, "requestfinished": on_answer, "requestfailed": on_answer}
    for event, handler in events.items():
        page.on(event, handler)  # type: ignore[attr-defined]
    try:
        uploads = 0
        while True:
            page.wait_for_function(IDLE, timeout=ACTION_MS)  # type: ignore[attr-defined]
            if uploads:
                shown(listed)  # time for the page to send the upload, if it is not listed yet
                deadline = time.monotonic() + ACTION_MS / 1000
                while len(answered) < len(sent) and time.monotonic() < deadline:
                    page.wait_for_timeout(200)  # type: ignore[attr-defined]
                shown(listed)
            copies = listed.count()
            if copies == 1:
                return
            if copies > 1:
                page.locator(box).get_by_role("button", name="Clear").first.click()  # type: ignore[attr-defined]
                listed.first.wait_for(state="detached", timeout=ACTION_MS)
            if uploads == tries:
                raise AssertionError(f"{path.name}: listed {copies} times after {uploads} uploads")
            page.locator(f"{box} input[type=file]").set_input_files(str(path))  # type: ignore[attr-defined]
            uploads += 1
    finally:
        for event, handler in events.items():
            page.remove_listener(event, handler)  # type: ignore[attr-defined]


def shown(listed: object) -> None:
    """Wait up to ``UPLOAD_MS`` for the locator to match."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):
        listed.first.wait_for(timeout=UPLOAD_MS)  # type: ignore[attr-defined]


def upload_to_editor(page: object, editor: str, image: Path) -> None:
    """Upload ``image`` into the image editor ``editor`` and wait until the canvas shows it:
    the editor's zoom reading changes from that of the empty canvas to the image's fit."""
    before = page.evaluate(f"{ZOOM}({editor!r})")  # type: ignore[attr-defined]
    page.locator(f"{editor} input[type=file]").set_input_files(str(image))  # type: ignore[attr-defined]
    page.wait_for_function(  # type: ignore[attr-defined]
        f"([s, before]) => {{ const z = {ZOOM}(s); return z !== '' && z !== before; }}",
        arg=[editor, before],
        timeout=ACTION_MS,
    )
    page.wait_for_timeout(300)  # type: ignore[attr-defined]


def download(page: object, box: str, name: str, folder: Path) -> Path:
    """Click the download link of ``name`` in the file box ``box``; the saved file."""
    link = page.locator(f'{box} a[download="{name}"]')  # type: ignore[attr-defined]
    with page.expect_download(timeout=ACTION_MS) as event:  # type: ignore[attr-defined]
        link.click()
    target = folder / name
    event.value.save_as(target)
    return target


def test_label_segment_download_in_chromium(server: str, browser: object, tmp_path: Path) -> None:
    support = save(tmp_path / "support.png", scene(SUPPORT, SUPPORT, OBJECT))
    query = save(tmp_path / "query.png", scene(48, 60, (10, 20, 34, 44)))
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")

    context = browser.new_context(  # type: ignore[attr-defined]
        viewport={"width": 1280, "height": 1000}, accept_downloads=True
    )
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.set_default_timeout(ACTION_MS)
    started = time.monotonic()
    page.goto(server, wait_until="load")
    page.locator("#segment").wait_for()

    # bad input: nothing at all, then a file that is not an image
    page.locator("#segment").click()
    assert wait_for_status(page, "Error:") == (
        "Error: no image to segment: add query images (or a folder)"
    )
    upload_files(page, "#query-files", not_an_image, tries=4)
    page.locator("#segment").click()
    page.wait_for_function(
        "() => document.querySelector('#status').innerText.includes('notes.txt')",
        timeout=ACTION_MS,
    )
    assert status(page).startswith("Error: notes.txt: cannot read image")

    # the support image, a short brush stroke across the middle of its object
    upload_to_editor(page, "#support-editor", support)
    editor = page.locator("#support-editor")
    canvas = editor.locator(".pixi-target canvas")
    editor.get_by_role("button", name="Brush", exact=True).click()
    box = canvas.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y)
    page.mouse.down()
    for step in range(1, 7):
        page.mouse.move(x - 30 + 10 * step, y, steps=2)
    page.mouse.up()

    # the query replaces the text file; Segment
    page.locator("#query-files").get_by_role("button", name="Clear").first.click()
    page.locator("#query-files").get_by_label("notes.txt", exact=True).wait_for(state="detached")
    upload_files(page, "#query-files", query, tries=4)
    page.locator("#segment").click()
    message = wait_for_status(page, "Segmented")
    assert message.startswith("Segmented 1 image(s) from 1 example(s) (with the one in the editor)")
    page.locator('#download-masks a[download="masks.zip"]').wait_for()
    seconds = time.monotonic() - started

    screenshot = tmp_path / "serve.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if folder := os.environ.get("FEWSEG_SCREENSHOTS"):
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(folder) / "serve-page.png")

    masks = download(page, "#download-masks", "masks.zip", tmp_path)
    examples = download(page, "#download-other", "support.zip", tmp_path)
    context.close()

    with zipfile.ZipFile(examples) as archive:
        used_image = np.asarray(Image.open(io.BytesIO(archive.read("images/example-1.png"))))
        used_mask = np.asarray(Image.open(io.BytesIO(archive.read("masks/example-1.png"))))
    # the page used the uploaded image as it is, and the stroke as painted: inside the
    # object, around its middle row
    assert np.array_equal(used_image, np.asarray(Image.open(support).convert("RGB")))
    painted = used_mask == 255
    rows, cols = np.nonzero(painted)
    assert painted.sum() > 20 and painted[SUPPORT // 2].any()
    assert OBJECT[0] <= rows.min() and rows.max() < OBJECT[2]
    assert OBJECT[1] <= cols.min() and cols.max() < OBJECT[3]

    with zipfile.ZipFile(masks) as archive:
        assert archive.namelist() == ["masks/query.png"]
        returned = np.asarray(Image.open(io.BytesIO(archive.read("masks/query.png")))) == 255
    expected = fewseg.load("baseline", size=SIZE).adapt([support], [painted])([query])[0]
    assert returned.shape == (48, 60) and returned.any()
    assert np.array_equal(returned, expected)

    outside = [url for url in requests if not url.startswith(server)]
    assert outside == [], outside
    print(f"\nbrowser test: page to segmented masks in {seconds:.1f} s")
