"""Multi-process runs launched by ``torchrun``: the process group and the few collectives
training and evaluation need.

Without torchrun (no ``WORLD_SIZE``/``RANK`` in the environment) nothing is initialised and
every helper answers for a single process: rank 0 of 1, collectives are no-ops. See
docs/distributed.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from fewseg.errors import FewSegError
from fewseg.metrics import SegmentationScores

BACKENDS = ("auto", "gloo", "nccl")
DEFAULT_TIMEOUT_S = 600.0

T = TypeVar("T")

_timeout_s = DEFAULT_TIMEOUT_S


class LostContact(FewSegError):
    """A collective failed or timed out: another rank died, hung or lost its network."""


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if active() else 0


def choose_backend(backend: str, device: str) -> str:
    """``auto``: nccl when the run is on a CUDA device that exists, else gloo."""
    if backend not in BACKENDS:
        raise FewSegError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend != "auto":
        return backend
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    return "nccl" if on_cuda else "gloo"


def local_device(device: str) -> str:
    """``cuda`` in a multi-process run means this process's GPU, ``cuda:LOCAL_RANK``."""
    return f"cuda:{local_rank()}" if active() and device == "cuda" else device


@contextmanager
def session(
    backend: str = "auto", timeout_s: float = DEFAULT_TIMEOUT_S, device: str = "cpu"
) -> Iterator[None]:
    """Join torchrun's process group for the body (a no-op when not launched by torchrun).

    Every collective, joining included, fails after ``timeout_s`` seconds instead of
    waiting forever for a rank that died; the failure is a one-line :class:`LostContact`.
    """
    global _timeout_s
    if not launched_by_torchrun() or active():
        yield
        return
    if timeout_s <= 0:
        raise FewSegError(f"dist_timeout must be > 0 seconds, got {timeout_s}")
    chosen = choose_backend(backend, device)
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    _timeout_s = timeout_s
    with _collective("joining the process group"):
        dist.init_process_group(chosen, timeout=timedelta(seconds=timeout_s))
    finished = False
    try:
        yield
        finished = True
    finally:
        try:
            if finished:
                barrier()
        finally:
            dist.destroy_process_group()


@contextmanager
def _collective(what: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    except RuntimeError as error:  # gloo/store errors: DistError or plain RuntimeError
        waited = time.monotonic() - began
        reason = "timed out" if "timed out" in str(error).lower() else "connection lost"
        me = os.environ.get("RANK", "?")
        raise LostContact(
            f"rank {me}: lost contact with other ranks after {waited:.0f} s in {what} "
            f"({reason}; timeout {_timeout_s:g} s) — a rank died?"
        ) from error


def barrier() -> None:
    if active():
        with _collective("a barrier"):
            dist.barrier()


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """nccl reduces CUDA tensors only; gloo takes tensors where they are."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


def all_reduce_sum(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """The element-wise sum over ranks (a new tensor on ``tensor``'s device)."""
    if not active():
        return tensor
    buffer = tensor.to(_collective_device(tensor), copy=True)
    with _collective(what):
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(tensor.device)


def average_meta_gradients(
    parameters: Sequence[nn.Parameter], metrics: dict[str, float]
) -> dict[str, float]:
    """Replace each ``.grad`` by its mean over ranks and return the metrics' means.

    One collective per step: every gradient, one has-gradient flag per parameter and the
    metrics travel in one flat buffer. A gradient that is ``None`` on some ranks counts as
    zeros there; one that is ``None`` on every rank stays ``None`` (so Adam skips it, as a
    single process would). With an equal number of tasks per rank and per-rank meta-gradients
    that are means over their tasks, the result is the mean over the global meta-batch.
    """
    if not active():
        return metrics
    parameters = list(parameters)
    if not parameters:
        raise FewSegError("no parameters to average")
    reference = parameters[0]
    names = sorted(metrics)
    pieces = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(reference.dtype)
        for p in parameters
    ]
    flags = torch.tensor([p.grad is not None for p in parameters], dtype=reference.dtype)
    values = torch.tensor([metrics[n] for n in names], dtype=torch.float64)
    flat = torch.cat([*pieces, flags.to(reference.device), values.to(reference)])
    flat = all_reduce_sum(flat, "averaging meta-gradients") / world_size()
    sizes = [piece.numel() for piece in pieces]
    total = sum(sizes)
    has_grad = (flat[total : total + len(parameters)] > 0).tolist()
    chunks = flat[:total].split(sizes)
    for p, chunk, present in zip(parameters, chunks, has_grad, strict=True):
        p.grad = chunk.view_as(p).to(p.dtype) if present else None
    return dict(zip(names, flat[total + len(parameters) :].tolist(), strict=True))


def all_reduce_scores(scores: SegmentationScores) -> SegmentationScores:
    """Sum every rank's intersection, union, boundary and episode counts in place (float64
    sums of integer pixel counts are exact, so the result equals a single process's)."""
    if active():
        names = ("intersection", "union", "boundary_intersection", "boundary_union", "episodes")
        parts = [getattr(scores, name) for name in names]
        flat = all_reduce_sum(
            torch.cat([p.reshape(-1) for p in parts]), "summing evaluation scores"
        )
        for name, part, chunk in zip(
            names, parts, flat.split([p.numel() for p in parts]), strict=True
        ):
            setattr(scores, name, chunk.view_as(part).clone())
    return scores


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's share of ``items``: every world_size-th item from its rank on."""
    return items[rank() :: world_size()]


def broadcast_module(module: nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (as DDP does when it wraps a model)."""
    if not active():
        return
    with torch.no_grad(), _collective("broadcasting the initial weights"):
        for tensor in [*module.parameters(), *module.buffers()]:
            buffer = tensor.detach().to(_collective_device(tensor), copy=True)
            dist.broadcast(buffer, src=0)
            tensor.copy_(buffer)


def from_main(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0; every rank gets its result, or raises the error it raised.

    For what only rank 0 may read (the run directory need not be on a shared filesystem).
    """
    if not active():
        return compute()
    payload: list[Any] = [None]
    failure: BaseException | None = None
    if is_main():
        try:
            payload[0] = ("ok", compute())
        except FewSegError as error:
            payload[0] = ("error", str(error))
        except Exception as error:
            payload[0] = ("error", f"rank 0 failed: {type(error).__name__}: {error}")
            failure = error
    with _collective("receiving rank 0's state"):
        dist.broadcast_object_list(payload, src=0)
    if failure is not None:
        raise failure
    kind, value = payload[0]
    if kind == "error":
        raise FewSegError(value)
    return value
