"""``fewseg serve``: a local web page (Gradio) on the Python API. Add support images and
paint each mask (brush and eraser, or upload a mask), add query images (or a folder on the
server), press Segment, see overlays, download the masks as a zip of PNGs and as COCO RLE.

The page's actions are :class:`fewseg.apps.labelling.Labeller`'s; this module only lays
them out. Every bad input is shown in the page's status line and the server keeps
running. Gradio runs offline: no analytics, no share link, no font or script from outside.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewseg.apps.exports import COCO_NAME, DEFAULT_CLASS_NAME
from fewseg.apps.labelling import MASKS_ZIP, SUPPORT_ZIP, Example, Labeller, Result
from fewseg.errors import FewSegError

BRUSH_COLOR = "#ff00ff"
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
MONO_FONTS = ("ui-monospace", "monospace")
TITLE = "fewseg: segment a new class from a few examples"
HELP = (
    "**1.** Upload a support image and paint the object with the brush (the eraser takes "
    "paint away), or upload its mask. **Add example** keeps it and clears the editor for "
    "the next one; the one left in the editor is used too. "
    "**2.** Add the images to segment, or name a folder on the server. "
    "**3.** **Segment**. Repaint or add examples and press Segment again: the model "
    "stays loaded."
)


def offline_environment() -> None:
    """Set before Gradio is imported: no analytics or version check, no telemetry."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def require_gradio() -> None:
    """A one-line error when the ``ui`` extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("gradio") is None:
        raise FewSegError(
            "fewseg serve needs Gradio: pip install 'fewseg[ui]' (`make install` installs it)"
        )


def check_port(host: str, port: int) -> None:
    """A one-line error when ``host:port`` cannot be listened on (in use, no such host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FewSegError(f"--host {host}: cannot listen there ({error.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = (
                "in use by another program; choose another with --port"
                if error.errno == 98  # EADDRINUSE
                else error.strerror or str(error)
            )
            raise FewSegError(f"port {port} on {host}: {reason}") from None


# ---- the actions, as the page calls them ----------------------------------------------------


@dataclass
class Outcome:
    """What an action returns to the page: the new state and a status line."""

    examples: list[Example]
    message: str


def _error(error: FewSegError) -> str:
    return f"**Error:** {error}"


def add_example(
    labeller: Labeller, examples: list[Example], editor: Any, mask_file: str | None
) -> Outcome:
    try:
        example = labeller.example(editor, mask_file, len(examples) + 1)
    except FewSegError as error:
        return Outcome(examples, _error(error))
    examples = [*examples, example]
    pixels = int(example.foreground.sum())
    return Outcome(
        examples,
        f"Added {example.name} ({pixels} foreground pixels, {example.source}); "
        f"{len(examples)} example(s).",
    )


@dataclass
class SegmentOutcome:
    results: list[Result]
    downloads: dict[str, Path]
    message: str


def segment(
    labeller: Labeller,
    examples: list[Example],
    editor: Any,
    mask_file: str | None,
    uploads: Sequence[str] | None,
    folder: str | None,
    class_name: str,
    downloads_root: Path,
) -> SegmentOutcome:
    """Segment the queries from the added examples and the one in the editor, when it
    holds an image with a mask (so that it can be repainted and the queries segmented
    again); on an error the page keeps what it showed and says why."""
    try:
        used = list(examples)
        if Labeller.has_content(editor, mask_file):
            used.append(labeller.example(editor, mask_file, len(examples) + 1))
        queries = labeller.queries(uploads, folder)
        start = time.perf_counter()
        results = labeller.segment(used, queries)
        seconds = time.perf_counter() - start
        folder_out = Path(tempfile.mkdtemp(dir=downloads_root, prefix="run-"))
        downloads = Labeller.write_downloads(
            results, used, folder_out, class_name or DEFAULT_CLASS_NAME
        )
    except FewSegError as error:
        return SegmentOutcome([], {}, _error(error))
    in_editor = " (with the one in the editor)" if len(used) > len(examples) else ""
    return SegmentOutcome(
        results,
        downloads,
        f"Segmented {len(results)} image(s) from {len(used)} example(s){in_editor} in "
        f"{seconds:.1f} s.",
    )


# ---- the page -------------------------------------------------------------------------------


def build_page(labeller: Labeller, downloads_root: Path) -> Any:
    """The Gradio Blocks of the page (Gradio is imported here, not before)."""
    offline_environment()
    import gradio as gr

    def examples_view(examples: list[Example]) -> list[tuple[Any, str]]:
        return [(e.preview(), f"{e.name} ({e.source})") for e in examples]

    def on_add(examples: list[Example], editor: Any, mask_file: str | None) -> tuple:
        outcome = add_example(labeller, examples, editor, mask_file)
        added = len(outcome.examples) > len(examples)
        return (
            outcome.examples,
            examples_view(outcome.examples),
            outcome.message,
            None if added else gr.skip(),
            None if added else gr.skip(),
        )

    def on_remove_last(examples: list[Example]) -> tuple:
        examples = examples[:-1]
        return examples, examples_view(examples), f"{len(examples)} example(s)."

    def on_clear(_: list[Example]) -> tuple:
        return [], [], "No example."

    def on_segment(
        examples: list[Example],
        editor: Any,
        mask_file: str | None,
        uploads: list[str] | None,
        folder: str,
        class_name: str,
    ) -> tuple:
        outcome = segment(
            labeller, examples, editor, mask_file, uploads, folder, class_name, downloads_root
        )
        if not outcome.results:
            return gr.skip(), gr.skip(), gr.skip(), outcome.message
        downloads = outcome.downloads
        return (
            [(r.preview(), r.caption()) for r in outcome.results],
            str(downloads[MASKS_ZIP]),
            [str(downloads[COCO_NAME]), str(downloads[SUPPORT_ZIP])],
            outcome.message,
        )

    with gr.Blocks(title="fewseg", analytics_enabled=False) as page:
        examples_state = gr.State([])
        gr.Markdown(f"## {TITLE}\nModel: {labeller.describe()}.\n\n{HELP}")
        with gr.Row():
            with gr.Column(scale=3):
                editor = gr.ImageEditor(
                    label="Support image: paint the object",
                    type="numpy",
                    image_mode="RGBA",
                    sources=("upload", "clipboard"),
                    layers=False,
                    transforms=(),
                    format="png",
                    brush=gr.Brush(colors=[BRUSH_COLOR], color_mode="fixed"),
                    eraser=gr.Eraser(),
                    canvas_size=(640, 480),
                    height=480,
                    elem_id="support-editor",
                )
                mask_file = gr.File(
                    label="...or its mask (0/1, 0/255 or grey; used instead of the painting)",
                    file_types=["image"],
                    type="filepath",
                    height=120,
                    elem_id="support-mask",
                )
                with gr.Row():
                    add = gr.Button("Add example", elem_id="add-example")
                    remove = gr.Button("Remove last", elem_id="remove-example")
                    clear = gr.Button("Clear examples", elem_id="clear-examples")
                shown_examples = gr.Gallery(
                    label="Support examples",
                    columns=4,
                    height=180,
                    object_fit="contain",
                    format="png",
                    interactive=False,
                    elem_id="support-examples",
                )
            with gr.Column(scale=2):
                uploads = gr.File(
                    label="Images to segment",
                    file_count="multiple",
                    type="filepath",
                    elem_id="query-files",
                )
                folder = gr.Textbox(
                    label="...or a folder of images on the server",
                    placeholder="/path/to/photos",
                    elem_id="query-folder",
                )
                class_name = gr.Textbox(
                    label="Class name (for coco.json)",
                    value=DEFAULT_CLASS_NAME,
                    elem_id="class-name",
                )
                run = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown("No example.", elem_id="status")
        results = gr.Gallery(
            label="Results: predicted mask in red, outlined",
            columns=4,
            fit_columns=False,
            height=420,
            object_fit="contain",
            format="png",
            interactive=False,
            elem_id="results",
        )
        with gr.Row():
            masks_zip = gr.File(
                label="Masks (zip of PNGs, 255 = object)",
                interactive=False,
                elem_id="download-masks",
            )
            others = gr.File(
                label="COCO RLE (coco.json) and the support examples (support.zip)",
                file_count="multiple",
                interactive=False,
                elem_id="download-other",
            )

        add.click(
            on_add,
            [examples_state, editor, mask_file],
            [examples_state, shown_examples, status, editor, mask_file],
        )
        remove.click(on_remove_last, examples_state, [examples_state, shown_examples, status])
        clear.click(on_clear, examples_state, [examples_state, shown_examples, status])
        run.click(
            on_segment,
            [examples_state, editor, mask_file, uploads, folder, class_name],
            [results, masks_zip, others, status],
        )
    return page


def serve(
    labeller: Labeller,
    host: str,
    port: int,
    ready: Callable[[str], None] = print,
) -> None:
    """Serve the page on ``host:port`` until Ctrl-C."""
    check_port(host, port)
    with tempfile.TemporaryDirectory(prefix="fewseg-serve-") as downloads:
        page = build_page(labeller, Path(downloads))
        try:
            page.launch(
                server_name=host,
                server_port=port,
                share=False,
                quiet=True,
                prevent_thread_lock=True,
                inbrowser=False,
                show_error=True,
                ssr_mode=False,
                footer_links=[],
                allowed_paths=[downloads],
                theme=theme(),
            )
        except OSError as error:
            raise FewSegError(f"port {port} on {host}: cannot listen ({error})") from None
        ready(f"fewseg serve: http://{_url_host(host)}:{port}/ (Ctrl-C stops it)")
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            page.close()


def theme() -> Any:
    """Gradio's default look with the system's fonts (none fetched from outside)."""
    import gradio as gr

    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(MONO_FONTS))


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
