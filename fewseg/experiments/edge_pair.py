"""The before/after overlays of docs/figures/edges-before-after.jpg: the baseline's
prediction plain and with inference options (one panel per set of options), on the first
coco-mini fold-0 1-shot episode (seed 0) whose query object covers at least 5% of the
image; the truth outlined in blue.

``python -m fewseg.experiments.edge_pair COCO_DIR OUT.jpg [edges=guided,refine=... ...]``
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, ImageDraw

from fewseg.data.spec import open_source
from fewseg.engine.figures import PREDICTION_COLOR, TRUTH_COLOR, denormalize, outline, overlay
from fewseg.engine.loading import load_learner
from fewseg.episodes.sampler import episode_plan
from fewseg.episodes.tensors import load_resized_episode
from fewseg.options import options_from
from fewseg.refinement.options import PLAIN, InferenceOptions
from fewseg.refinement.pipeline import refined_adapt

SIZE = 400
MIN_OBJECT_FRACTION = 0.05
GAP = 8


def main(argv: Sequence[str] | None = None) -> int:
    coco_dir, out_path, *specs = sys.argv[1:] if argv is None else argv
    afters = [
        (f"after: {spec}", options_from(InferenceOptions, _values(spec), "options"))
        for spec in specs or ["edges=guided"]
    ]
    source = open_source(f"coco:{coco_dir}")
    learner = load_learner("baseline", "cpu").learner.eval()
    plan = episode_plan(source, source.fold_split("0").test, 1, 1000, 0)
    for episode in plan.episodes:
        tensors = load_resized_episode(source, episode, SIZE)
        if tensors.query.masks[0].float().mean() >= MIN_OBJECT_FRACTION:
            break
    truth = tensors.query.masks[0].bool().numpy()
    image = denormalize(tensors.query.images[0])
    panels = []
    for name, options in [("before: plain", PLAIN), *afters]:
        with torch.no_grad():
            logits = refined_adapt(learner, tensors.support, options)(tensors.query.images)
        mask = (logits[0, 0] > 0).numpy()
        iou = 100 * np.sum(mask & truth) / max(1, np.sum(mask | truth))
        drawn = overlay(image, mask, PREDICTION_COLOR, alpha=0.35)
        drawn[outline(truth, 2)] = TRUTH_COLOR
        panel = Image.fromarray(drawn)
        ImageDraw.Draw(panel).text((6, 6), f"{name}  IoU {iou:.1f}", fill=(255, 255, 255))
        panels.append(panel)
    row = Image.new("RGB", (len(panels) * (SIZE + GAP) - GAP, SIZE), "white")
    for i, panel in enumerate(panels):
        row.paste(panel, (i * (SIZE + GAP), 0))
    row.save(out_path, quality=90)
    print(f"{out_path}: {source.class_name(episode.class_index)}, query {episode.query}")
    return 0


def _values(spec: str) -> dict[str, Any]:
    """``edges=guided,weak_regions=0`` → its values, numbers and booleans read as YAML."""
    pairs = (item.split("=", 1) for item in spec.split(",") if item)
    return {name: yaml.safe_load(value) for name, value in pairs}


if __name__ == "__main__":
    raise SystemExit(main())
