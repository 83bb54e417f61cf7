"""Mixed precision: ``--precision fp32|bf16|fp16``, by ``torch.autocast``.

``fp32`` (the default) changes nothing. ``bf16`` runs autocast's eligible operations
(convolutions, matrix products) in bfloat16 on CUDA, and on the CPU too (slower there on
most CPUs; it lets the path run without a GPU). ``fp16`` is for CUDA, and for evaluation and
inference only: fp16 training would need loss scaling inside each learner's meta-gradient
computation, which fewseg does not do (bf16 has fp32's range and needs none).
Scores, losses and what a predictor returns are compared in fp32 either way.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from fewseg.errors import FewSegError

PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: str, training: bool = False) -> str:
    """``precision`` when it can run on ``device`` (and train, with ``training``); else a
    one-line error naming the value."""
    if precision not in PRECISIONS:
        raise FewSegError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise FewSegError(
            f"precision fp16 needs a CUDA device (device is {device!r}); use bf16 or fp32"
        )
    if precision == "fp16" and training:
        raise FewSegError(
            "precision fp16: training would need loss scaling, which fewseg does not do; "
            "use bf16 (fp16 serves evaluate and segment)"
        )
    return precision


def autocast(precision: str, device: str | torch.device) -> AbstractContextManager[Any]:
    """The autocast context of ``precision`` on ``device`` (none for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
