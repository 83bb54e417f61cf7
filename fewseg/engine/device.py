"""Checking a device name before anything runs on it."""

from __future__ import annotations

import torch

from fewseg.errors import FewSegError


def resolve_device(device: str | None) -> str:
    """``device`` checked (cpu, cuda, cuda:N): a one-line error when it does not exist here;
    None: cuda when a GPU is available, else cpu."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise FewSegError(f"unknown device {device!r} (expected cpu, cuda or cuda:N)") from None
    if parsed.type == "cpu":
        return device
    if parsed.type != "cuda":
        raise FewSegError(f"device {device!r} is not supported (expected cpu, cuda or cuda:N)")
    if not torch.cuda.is_available():
        raise FewSegError(f"device {device!r}: no CUDA GPU is available here")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise FewSegError(
            f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device
