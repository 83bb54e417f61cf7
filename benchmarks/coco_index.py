"""The COCO reader's index at COCO-train size (issue #20): time to the first episode, memory.

    .venv/bin/python benchmarks/coco_index.py                  # 100k images, 0.8M annotations
    .venv/bin/python benchmarks/coco_index.py --images 20000   # a smaller try

It writes, in a temporary folder removed at the end (``--keep`` keeps it), a COCO
instances json of ``--images`` images made from coco-mini: its 285 images replicated
(``rK/<file>`` through one directory symlink ``images/rK`` per copy) and its annotations
copied with new image and annotation ids, so the json has COCO train2017's shape (118k
images, 860k annotations, 450 MB) without its bytes. Then each command runs in a fresh
Python process, as ``fewseg evaluate`` starts: import torch and fewseg, open the source
with an empty or a filled index cache, draw the 1000 1-shot episodes of fold 0, load the
first one at 400x400. Each line gives the seconds from the process's start to that first
loaded episode (its parts: imports, opening the source, the episode list, the first
episode) and the process's peak resident memory (VmHWM), in this order:

1. first command: builds the index (parses and checks the json);
2. ``--repeats`` later commands (default 3): use the index;
3. first command with ``--min-mask-pixels 2048``: decodes every instance once for the
   exact areas and stores them;
4. ``--repeats`` later ones with ``--min-mask-pixels 2048``.

The last lines give the median over the later commands. On a shared machine the imports
(torch) vary most; ``open + plan + episode`` is the part the index decides.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "data" / "coco-mini"


def write_array(out: TextIO, items: Any) -> None:
    out.write("[")
    for n, item in enumerate(items):
        if n:
            out.write(",")
        out.write(json.dumps(item, separators=(",", ":")))
    out.write("]")


def generate(mini: Path, root: Path, n_images: int) -> tuple[int, int]:
    """COCO json of ≥ ``n_images`` images under ``root``; returns (images, annotations)."""
    dataset = json.loads((mini / "annotations" / "instances.json").read_text())
    images, annotations = dataset["images"], dataset["annotations"]
    copies = -(-n_images // len(images))
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for k in range(copies):
        (root / "images" / f"r{k}").symlink_to((mini / "images").resolve())
    step = max(r["id"] for r in images) + 1
    ann_step = max(a["id"] for a in annotations) + 1

    def image_copies() -> Any:
        for k in range(copies):
            for r in images:
                yield {**r, "id": r["id"] + k * step, "file_name": f"r{k}/{r['file_name']}"}

    def annotation_copies() -> Any:
        for k in range(copies):
            for a in annotations:
                yield {**a, "id": a["id"] + k * ann_step, "image_id": a["image_id"] + k * step}

    with (root / "annotations" / "instances.json").open("w") as out:
        out.write('{"info":')
        out.write(json.dumps(dataset.get("info", {})))
        out.write(',"licenses":')
        out.write(json.dumps(dataset.get("licenses", [])))
        out.write(',"categories":')
        out.write(json.dumps(dataset["categories"]))
        out.write(',"images":')
        write_array(out, image_copies())
        out.write(',"annotations":')
        write_array(out, annotation_copies())
        out.write("}")
    return copies * len(images), copies * len(annotations)


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: str, cache: str, min_mask_pixels: int, started: float) -> None:
    """One command, as ``fewseg evaluate`` runs up to its first episode; prints json."""
    marks = {"start": started}
    import torch

    torch.set_num_threads(1)
    from fewseg.data.spec import open_source
    from fewseg.episodes.sampler import episode_plan
    from fewseg.episodes.tensors import load_episode
    from fewseg.episodes.transforms import resize_transform

    marks["imports"] = time.time()
    source = open_source(spec, min_mask_pixels, index_cache=cache)
    marks["open"] = time.time()
    plan = episode_plan(source, source.fold_split("0").test, 1, 1000, 0)
    marks["plan"] = time.time()
    load_episode(source, plan.episodes[0], resize_transform(400))
    marks["episode"] = time.time()
    names = list(marks)
    parts = {b: round(marks[b] - marks[a], 2) for a, b in itertools.pairwise(names)}
    result = {
        "first_episode_s": round(marks["episode"] - started, 2),
        **{f"{k}_s": v for k, v in parts.items()},
        "peak_rss_mb": round(peak_rss_mb()),
        "index_built": bool(getattr(getattr(source, "index", None), "built", False)),
    }
    print(json.dumps(result))


def run_command(spec: str, cache: Path, min_mask_pixels: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--child", spec, "--cache", str(cache)]
    command += ["--min-mask-pixels", str(min_mask_pixels), "--started", repr(time.time())]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"the command failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--coco-mini", type=Path, default=COCO_MINI)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3, help="later commands of each kind")
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    parser.add_argument("--child", metavar="SPEC", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--min-mask-pixels", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache, args.min_mask_pixels, args.started)
        return

    work = Path(tempfile.mkdtemp(prefix="fewseg-coco-index-"))
    try:
        start = time.perf_counter()
        n_images, n_annotations = generate(args.coco_mini, work / "coco", args.images)
        size = (work / "coco" / "annotations" / "instances.json").stat().st_size
        print(
            f"json: {n_images} images, {n_annotations} annotations, {size / 1e6:.0f} MB "
            f"(written in {time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        spec, cache = f"coco:{work / 'coco'}", work / "cache"
        later: dict[int, list[dict[str, Any]]] = {0: [], 2048: []}
        for min_mask_pixels, first in (
            (0, "first command (builds the index)"),
            (2048, "first with --min-mask-pixels 2048 (exact areas)"),
        ):
            result = run_command(spec, cache, min_mask_pixels)
            print(f"{first}: {json.dumps(result)}", flush=True)
            for k in range(args.repeats):
                result = run_command(spec, cache, min_mask_pixels)
                later[min_mask_pixels].append(result)
                print(
                    f"later command {k + 1} (min_mask_pixels {min_mask_pixels}): "
                    f"{json.dumps(result)}",
                    flush=True,
                )
        for min_mask_pixels, results in later.items():
            if not results:
                continue
            median = {
                key: statistics.median(r[key] for r in results)
                for key in ("first_episode_s", "imports_s", "open_s", "plan_s", "episode_s")
            }
            index_part = median["open_s"] + median["plan_s"] + median["episode_s"]
            print(
                f"later commands, min_mask_pixels {min_mask_pixels}, median of {len(results)}: "
                f"{median['first_episode_s']:.2f} s to the first episode (imports "
                f"{median['imports_s']:.2f} s, open + plan + episode {index_part:.2f} s), "
                f"peak {max(r['peak_rss_mb'] for r in results)} MB"
            )
        for path in sorted(cache.iterdir()):
            print(f"cache: {path.name} {path.stat().st_size / 1e6:.0f} MB")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
