"""fewseg's MAML meta-step against learn2learn, higher and torchopt: time and peak memory.

    make bench-meta-step          # installs the peers (make bench-peers), then runs this
    .venv/bin/python benchmarks/meta_step.py --backbone convnet --repeats 5
    .venv/bin/python benchmarks/meta_step.py --device cuda

One network (fewseg's ``Segmenter``: by default the frozen ImageNet MobileNetV2 encoder and
the decoder head, whose parameters are the adapted and meta-learned ones; with a backbone
that trains, such as ``convnet``, every parameter), the same episodes (meta-batches of
training episodes, augmented as in training, loaded before any timing) and the same
settings run through four implementations of MAML, in one process:

* fewseg: ``LEARNERS.get("maml")``, ``learner.meta_gradients(episodes)``: with the frozen
  encoder, all the images of the meta-batch go through it in one batch and the tasks are
  adapted together under ``vmap`` (``batch_tasks``, the default);
* fewseg-per-task: the same with ``batch_tasks`` off: one task at a time, one graph held at
  a time (the lower-memory mode);
* learn2learn: ``l2l.algorithms.MAML(model, lr, first_order, allow_nograd=True)``; per task
  ``clone()``, ``adapt(support loss)`` S times, ``backward()`` of the query loss;
* higher: ``higher.innerloop_ctx(model, SGD(head), copy_initial_weights=False,
  track_higher_grads=not first_order)``; per task S ``diffopt.step(support loss)``, then
  ``backward()`` of the query loss. First order: with ``track_higher_grads=False`` higher
  detaches the fast weights, so the query gradient is taken with respect to the adapted
  weights and added to the initial weights' ``.grad`` (higher issue #63);
* torchopt: ``torchopt.MetaSGD(model.head, lr)`` (the head: MetaSGD differentiates every
  parameter of the module it is given, and a frozen encoder's need no gradient; the whole
  model when the encoder trains), with ``extract_state_dict`` / ``recover_state_dict``
  around each task. torchopt has no first-order mode: ``torchopt.stop_gradient`` on the
  adapted module after each inner step, then the query gradient with respect to the
  adapted weights, as for higher.

The peers run the whole module (``model(images)``), as a user of these libraries would
write it, so they run the frozen encoder on the support images at every inner step; fewseg
encodes each support and query image once per task. fewseg's feature cache, which would
also reuse features across steps, is emptied before every step: in training with
augmentation every image is new, and the peers have no cache (``--keep-feature-cache``
keeps it).

Every task is backpropagated on its own (the loss divided by the number of tasks), so
each implementation holds one task's graph at a time; the outer loss is the mean over the
tasks of the query loss after adaptation, in fewseg's ``foreground_bce``.

Per setting (inner steps S, meta-batch, second or first order), before any timing, the
meta-gradients are checked, which compares the mathematics, not float32 rounding: every
implementation computes the meta-gradient from the same weights on the same episodes in
float64, on float64 copies of the network (``.double()`` of the learner) and of the episodes
(their floating-point tensors), and the largest absolute difference to fewseg's, over all
meta-learned parameters, must be at most 1e-5 (rounding leaves of the order of 1e-16 to
1e-14), else the script stops. The same differences in float32, on the network and episodes
that are timed (TF32 off), are printed as information and decide nothing: they include
float32 rounding, which depends on the order of the kernels' reductions (on a GPU, cuDNN's)
and grows with the gradients (relative ~1e-6; on an H100 up to 1.7e-5 for a largest
|meta-gradient| of 8.85). Then one untimed warm-up step and one untimed step measuring peak
memory each, in float32, then ``--repeats`` rounds in which each implementation takes one
step on that round's meta-batch, in an order that rotates from round to round. A step is
``zero_grad``, the meta-gradient (for fewseg, all of ``meta_gradients``, including the
pre-adaptation support loss it reports) and the outer optimizer's step (Adam, one per
implementation); the meta-learned weights are reset to the same initial values before every
step (untimed). Reported: the median seconds per step, and the peak of the tensor memory a
step allocates (CPU: the allocation events of ``torch.profiler`` with ``profile_memory``,
summed in time order; CUDA: ``torch.cuda.max_memory_allocated``), which does not count the
weights, the optimizer state or the episodes.

The last lines give, per peer, the smallest time ratio peer/fewseg over the settings
(largest first), then the smallest of these.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from fewseg.data.spec import open_source
from fewseg.engine.config import TrainConfig
from fewseg.engine.features import attached, training_stores
from fewseg.engine.train import training_batch
from fewseg.episodes.image_keys import name_images
from fewseg.episodes.tensors import EpisodeTensors, LabelledImages
from fewseg.learners import build_learner
from fewseg.learners.losses import foreground_bce
from fewseg.learners.maml import MAML, MAMLOptions

PEERS = ("learn2learn", "higher", "torchopt")
TOLERANCE = 1e-5

MetaGradient = Callable[[Sequence[EpisodeTensors]], None]
"""Adds the meta-gradient of a meta-batch to ``.grad`` of the meta-learned parameters."""


@dataclass(frozen=True)
class Setting:
    inner_steps: int
    meta_batch: int
    first_order: bool

    def __str__(self) -> str:
        order = "first" if self.first_order else "second"
        return f"S={self.inner_steps}, meta-batch {self.meta_batch}, {order} order"


def import_peers() -> dict[str, Any]:
    """The peer libraries by name. gym, imported by learn2learn, prints a notice on import."""
    with contextlib.redirect_stderr(io.StringIO()):
        import higher
        import learn2learn
        import torchopt
    return {"learn2learn": learn2learn, "higher": higher, "torchopt": torchopt}


# ------------------------------------------------------------------------------------------
# Peak memory


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null: the profiler's C++ side logs its start and stop."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes of the tensor memory that ``fn()`` allocates and still holds, at its high
    point (0 if it allocates nothing).

    On the CPU, ``torch.profiler`` with ``profile_memory`` records every allocation and free
    of tensor memory (requested bytes) with a nanosecond timestamp; their running sum in
    time order is the memory allocated since the start, and its maximum is the peak. The
    profiler does not see the freeing of a block allocated before it started, so the peak
    counts only what ``fn`` allocated; a meta-step frees nothing older (the gradients are
    None and fewseg's feature cache is empty when it starts). On CUDA, where such frees are
    counted, ``torch.cuda.max_memory_allocated`` minus the memory allocated at the start.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with _stderr_silenced():
        profiler.start()
    try:
        fn()
    finally:
        with _stderr_silenced():
            profiler.stop()
    events = [
        e
        for e in profiler.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())  # stable: ties keep the recorded order
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return peak


# ------------------------------------------------------------------------------------------
# The four implementations


def support_loss(model: Callable[[torch.Tensor], torch.Tensor], task: EpisodeTensors):
    s = task.support
    return foreground_bce(model(s.images), s.masks, s.ignore)


def query_loss(model: Callable[[torch.Tensor], torch.Tensor], task: EpisodeTensors):
    q = task.query
    return foreground_bce(model(q.images), q.masks, q.ignore)


def backpropagate(
    loss: torch.Tensor,
    params: Sequence[torch.Tensor],
    fast: Sequence[torch.Tensor],
    first_order: bool,
) -> None:
    """Second order: ``loss.backward()``. First order (the peers detach the fast weights):
    the gradient with respect to the fast weights ``fast``, added to the initial ``params``."""
    if not first_order:
        loss.backward()
        return
    for p, g in zip(params, torch.autograd.grad(loss, list(fast)), strict=True):
        if p.grad is None:
            p.grad = g.detach().clone()
        else:
            p.grad += g


def fewseg_meta_gradient(learner: MAML, setting: Setting, batch_tasks: bool) -> MetaGradient:
    options = replace(learner.options, inner_steps=setting.inner_steps, batch_tasks=batch_tasks)

    def meta_gradient(episodes: Sequence[EpisodeTensors]) -> None:
        learner.options = options
        learner.first_order = setting.first_order  # this instance: maml or fomaml
        learner.meta_gradients(episodes)

    return meta_gradient


def learn2learn_meta_gradient(
    model: nn.Module, adapted: nn.Module, setting: Setting, lr: float
) -> MetaGradient:
    """learn2learn adapts every parameter that requires a gradient: those of ``adapted``."""
    l2l = import_peers()["learn2learn"]
    del adapted
    # allow_nograd: a frozen encoder's parameters are cloned but not adapted
    maml = l2l.algorithms.MAML(model, lr=lr, first_order=setting.first_order, allow_nograd=True)

    def meta_gradient(episodes: Sequence[EpisodeTensors]) -> None:
        for task in episodes:
            learner = maml.clone()
            for _ in range(setting.inner_steps):
                learner.adapt(support_loss(learner, task))
            (query_loss(learner, task) / len(episodes)).backward()

    return meta_gradient


def higher_meta_gradient(
    model: nn.Module, adapted: nn.Module, setting: Setting, lr: float
) -> MetaGradient:
    higher = import_peers()["higher"]
    params = list(adapted.parameters())
    inner_optimizer = torch.optim.SGD(params, lr=lr)
    ids = {id(p) for p in params}
    is_adapted = [id(p) in ids for p in model.parameters()]

    def meta_gradient(episodes: Sequence[EpisodeTensors]) -> None:
        for task in episodes:
            with higher.innerloop_ctx(
                model,
                inner_optimizer,
                copy_initial_weights=False,
                track_higher_grads=not setting.first_order,
            ) as (fmodel, diffopt):
                for _ in range(setting.inner_steps):
                    diffopt.step(support_loss(fmodel, task))
                fast = [p for p, a in zip(fmodel.parameters(), is_adapted, strict=True) if a]
                loss = query_loss(fmodel, task) / len(episodes)
                backpropagate(loss, params, fast, setting.first_order)

    return meta_gradient


def torchopt_meta_gradient(
    model: nn.Module, adapted: nn.Module, setting: Setting, lr: float
) -> MetaGradient:
    torchopt = import_peers()["torchopt"]
    params = list(adapted.parameters())
    inner_optimizer = torchopt.MetaSGD(adapted, lr=lr)

    def meta_gradient(episodes: Sequence[EpisodeTensors]) -> None:
        net_state = torchopt.extract_state_dict(adapted, by="reference")
        optimizer_state = torchopt.extract_state_dict(inner_optimizer)
        for task in episodes:
            try:
                for _ in range(setting.inner_steps):
                    inner_optimizer.step(support_loss(model, task))
                    if setting.first_order:
                        torchopt.stop_gradient(adapted)
                loss = query_loss(model, task) / len(episodes)
                backpropagate(loss, params, list(adapted.parameters()), setting.first_order)
            finally:
                torchopt.recover_state_dict(adapted, net_state)
                torchopt.recover_state_dict(inner_optimizer, optimizer_state)

    return meta_gradient


def meta_gradient_functions(
    learner: MAML, setting: Setting, peers: Sequence[str]
) -> dict[str, MetaGradient]:
    lr = learner.options.inner_lr
    adapted = learner.model.head if learner.head_only else learner.model
    builders = {
        "learn2learn": learn2learn_meta_gradient,
        "higher": higher_meta_gradient,
        "torchopt": torchopt_meta_gradient,
    }
    functions = {
        "fewseg": fewseg_meta_gradient(learner, setting, batch_tasks=True),
        PER_TASK: fewseg_meta_gradient(learner, setting, batch_tasks=False),
    }
    for name in peers:
        functions[name] = builders[name](learner.model, adapted, setting, lr)
    return functions


# ------------------------------------------------------------------------------------------
# The bench


class Bench:
    """One learner whose ``model`` every implementation uses, and the initial state of the
    parameters it adapts and meta-learns (the head with a frozen encoder, else all)."""

    def __init__(self, learner: MAML, keep_feature_cache: bool = False) -> None:
        self.learner = learner
        self.params = learner.outer_parameters()
        adapted = learner.initial_parameters().values()
        if learner.options.meta_sgd or {id(p) for p in adapted} != {id(p) for p in self.params}:
            raise SystemExit("meta_step.py: the adapted and meta-learned parameters differ")
        self.initial = [p.detach().clone() for p in self.params]
        self.keep_feature_cache = keep_feature_cache
        # a frozen encoder's features kept across steps, as a training run keeps them
        self.stores = training_stores(learner) if keep_feature_cache else {}
        self._float64: Bench | None = None

    def float64(self) -> Bench:
        """A float64 copy (made once): the learner's deep copy, ``.double()``, from the
        initial weights; its own feature cache."""
        if self._float64 is None:
            self.reset()
            learner = copy.deepcopy(self.learner).double()
            self._float64 = Bench(learner, self.keep_feature_cache)
        return self._float64

    def reset(self) -> None:
        """The initial weights, no gradients (untimed)."""
        with torch.no_grad():
            for p, p0 in zip(self.params, self.initial, strict=True):
                p.copy_(p0)
                p.grad = None

    def meta_gradient(self, fn: MetaGradient, episodes: Sequence[EpisodeTensors]) -> list:
        self.reset()
        with attached(self.stores):
            fn(episodes)
        grads = [p.grad for p in self.params]
        if any(g is None for g in grads):
            raise AssertionError("a meta-learned parameter got no gradient")
        return [g.detach().clone() for g in grads]


def float64_episodes(episodes: Sequence[EpisodeTensors]) -> list[EpisodeTensors]:
    """The episodes with their floating-point tensors (images, masks) in float64."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    return [
        EpisodeTensors(
            e.class_index,
            LabelledImages(cast(e.support.images), cast(e.support.masks), cast(e.support.ignore)),
            LabelledImages(cast(e.query.images), cast(e.query.masks), e.query.ignore),
        )
        for e in episodes
    ]


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """TF32 off (CUDA convolutions use it by default), so that the float32 differences are
    those of float32 arithmetic; the timed steps run with PyTorch's defaults."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass
class Agreement:
    """Per implementation other than fewseg, the largest absolute difference of its
    meta-gradient to fewseg's: in float64 (the check) and in float32 (information)."""

    float64: dict[str, float]
    float32: dict[str, float]
    largest: float
    """The largest |meta-gradient| of fewseg's, in float32."""


def check_agreement(
    bench: Bench,
    setting: Setting,
    peers: Sequence[str],
    episodes: Sequence[EpisodeTensors],
    tolerance: float = TOLERANCE,
) -> Agreement:
    """The meta-gradients of the implementations (fewseg-per-task and ``peers``) against
    fewseg's, from the same weights on the same episodes, in float64 (``bench.float64()``,
    :func:`float64_episodes`) and in float32 (``bench``, TF32 off); AssertionError if a
    float64 difference exceeds ``tolerance``. The float32 ones decide nothing."""
    twin = bench.float64()
    float64, _ = _differences(
        twin,
        meta_gradient_functions(twin.learner, setting, peers),
        float64_episodes(episodes),
    )
    with full_float32():
        float32, largest = _differences(
            bench, meta_gradient_functions(bench.learner, setting, peers), episodes
        )
    bad = {n: d for n, d in float64.items() if not d <= tolerance}
    if bad:
        raise AssertionError(
            "float64 meta-gradients disagree with fewseg's: "
            + ", ".join(f"{n} {d:.3g}" for n, d in bad.items())
            + f" > {tolerance:g} (float32, largest |g| {largest:.3g}: "
            + ", ".join(f"{n} {d:.3g}" for n, d in float32.items())
            + ")"
        )
    return Agreement(float64, float32, largest)


def _differences(
    bench: Bench, functions: dict[str, MetaGradient], episodes: Sequence[EpisodeTensors]
) -> tuple[dict[str, float], float]:
    """Per implementation other than fewseg, the largest absolute difference of its
    meta-gradient to fewseg's; and the largest |meta-gradient| of fewseg's."""
    reference = bench.meta_gradient(functions["fewseg"], episodes)
    largest = max(g.abs().max().item() for g in reference)
    if not largest > 0:
        raise AssertionError("fewseg's meta-gradient is zero: nothing to compare")
    differences = {}
    for name, fn in functions.items():
        if name == "fewseg":
            continue
        grads = bench.meta_gradient(fn, episodes)
        differences[name] = max(
            (g - r).abs().max().item() for g, r in zip(grads, reference, strict=True)
        )
    return differences, largest


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Result:
    seconds: float
    peak_bytes: int


def run_setting(
    bench: Bench,
    setting: Setting,
    batches: Sequence[Sequence[EpisodeTensors]],
    peers: Sequence[str],
    device: torch.device,
) -> tuple[Agreement, dict[str, Result]]:
    batches = [list(b[: setting.meta_batch]) for b in batches]
    agreement = check_agreement(bench, setting, peers, batches[0])
    functions = meta_gradient_functions(bench.learner, setting, peers)
    lr = bench.learner.options.outer_lr
    optimizers = {name: torch.optim.Adam(bench.params, lr=lr) for name in functions}

    def step(name: str, episodes: Sequence[EpisodeTensors]) -> None:
        optimizers[name].zero_grad(set_to_none=True)
        functions[name](episodes)
        optimizers[name].step()

    peaks = {}
    for name in functions:
        bench.reset()
        step(name, batches[0])  # warm-up; creates the optimizer state
        bench.reset()
        peaks[name] = peak_memory_bytes(lambda name=name: step(name, batches[0]), device)
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r, episodes in enumerate(batches):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            bench.reset()
            synchronize(device)
            start = time.perf_counter()
            step(name, episodes)
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    results = {n: Result(statistics.median(times[n]), peaks[n]) for n in names}
    return agreement, results


def print_setting(setting: Setting, agreement: Agreement, results: dict[str, Result]) -> None:
    print(f"\n{setting}")
    float64 = ", ".join(f"{n} {d:.1e}" for n, d in agreement.float64.items())
    float32 = ", ".join(f"{n} {d:.1e}" for n, d in agreement.float32.items())
    print(
        f"  max |meta-gradient - fewseg's|, float64 (checked, tolerance {TOLERANCE:g}): {float64}"
    )
    print(
        f"  max |meta-gradient - fewseg's|, float32 (information; largest |meta-gradient| "
        f"{agreement.largest:.3g}): {float32}"
    )
    print(f"  {'':12s} {'s/step':>8s} {'peak MiB':>9s} {'time/fewseg':>12s} {'mem/fewseg':>11s}")
    base = results["fewseg"]
    for name, r in results.items():
        print(
            f"  {name:12s} {r.seconds:8.3f} {r.peak_bytes / 2**20:9.1f} "
            f"{r.seconds / base.seconds:12.2f} {r.peak_bytes / max(base.peak_bytes, 1):11.2f}"
        )


def print_summary(all_results: dict[Setting, dict[str, Result]], peers: Sequence[str]) -> None:
    """Per peer the smallest time ratio over the settings, largest first, then the smallest."""
    for peer in peers:
        per_setting = [r[peer].peak_bytes / r[PER_TASK].peak_bytes for r in all_results.values()]
        per_time = [r[peer].seconds / r[PER_TASK].seconds for r in all_results.values()]
        print(
            f"{PER_TASK} (batch_tasks off): memory ratio {peer}/{PER_TASK} = "
            f"{min(per_setting):.2f} (smallest), time ratio {min(per_time):.2f} (smallest)"
        )
    time_ratios, memory_ratios = {}, {}
    for peer in peers:
        per_setting = {
            s: (r[peer].seconds / r["fewseg"].seconds, r[peer].peak_bytes / r["fewseg"].peak_bytes)
            for s, r in all_results.items()
        }
        time_ratios[peer] = min((t, str(s)) for s, (t, _) in per_setting.items())
        memory_ratios[peer] = min((m, str(s)) for s, (_, m) in per_setting.items())
        geomean = math.exp(statistics.mean(math.log(t) for t, _ in per_setting.values()))
        time_ratios[peer] += (geomean,)
    print()
    for peer in peers:
        ratio, where = memory_ratios[peer]
        print(f"memory ratio {peer}/fewseg = {ratio:.2f} (smallest, at {where})")
    ordered = sorted(peers, key=lambda p: time_ratios[p][0], reverse=True)
    for peer in ordered:
        ratio, where, geomean = time_ratios[peer]
        print(
            f"ratio {peer}/fewseg = {ratio:.2f} "
            f"(smallest over the settings, at {where}; geometric mean {geomean:.2f})"
        )
    smallest = ordered[-1]
    ratio, where, _ = time_ratios[smallest]
    print(f"smallest ratio = {ratio:.2f} ({smallest}, {where})")


PER_TASK = "fewseg-per-task"


def parse_ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, help="image side (default: the dataset's)")
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--inner-steps", type=parse_ints, default=[1, 5])
    parser.add_argument("--meta-batch", type=parse_ints, default=[4, 8])
    parser.add_argument("--orders", default="second,first")
    parser.add_argument("--inner-lr", type=float, default=MAMLOptions.inner_lr)
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed steps per method and setting"
    )
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--keep-feature-cache", action="store_true")
    parser.add_argument("--versions", action="store_true", help="print versions and exit")
    args = parser.parse_args(argv)

    peer_names = [p for p in args.peers.split(",") if p]
    if unknown := set(peer_names) - set(PEERS):
        parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    import_peers()
    versions = " ".join(f"{p} {version(p)}" for p in ("torch", *peer_names, "torchvision", "numpy"))
    if args.versions:
        print(versions)
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    orders = {"second": False, "first": True}
    settings = [
        Setting(s, b, orders[o])
        for o in args.orders.split(",")
        for s in args.inner_steps
        for b in args.meta_batch
    ]

    source = open_source(args.dataset)
    size = args.size or source.default_size
    classes = source.fold_split("0").train
    config = TrainConfig(meta_batch=max(args.meta_batch), shots=args.shots)
    batches = [
        [t.to(device) for t in training_batch(source, classes, config, size, step)]
        for step in range(args.repeats)
    ]
    if args.keep_feature_cache:  # the images, augmented, named by where they are
        for step, batch in enumerate(batches):
            for i, task in enumerate(batch):
                for part, images in (
                    ("support", task.support.images),
                    ("query", task.query.images),
                ):
                    name_images(images, [(step, i, part, k) for k in range(len(images))])
    torch.manual_seed(0)
    learner = build_learner("maml", {"backbone": args.backbone, "inner_lr": args.inner_lr})
    learner.to(device).train()
    bench = Bench(learner, args.keep_feature_cache)
    print(
        f"{args.dataset}, {args.backbone}, {size}x{size}, {args.shots}-shot, inner lr "
        f"{args.inner_lr:g}, {args.repeats} timed steps per method and setting, {device}, "
        f"{torch.get_num_threads()} thread(s); {versions}"
    )
    all_results = {}
    with attached(bench.stores):
        for setting in settings:
            agreement, results = run_setting(bench, setting, batches, peer_names, device)
            print_setting(setting, agreement, results)
            all_results[setting] = results
            sys.stdout.flush()
    if peer_names:
        print_summary(all_results, peer_names)


if __name__ == "__main__":
    main()
