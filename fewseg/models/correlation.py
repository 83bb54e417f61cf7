"""A class-agnostic correlation model (after HSNet, Min et al. 2021, and PFENet's prior,
Tian et al. 2020): it learns how to compare a query with a support set, not what classes
look like.

The frozen backbone gives a feature pyramid: many intermediate blocks, each at its
stride. For every tapped block, each query position is compared with the support: the
largest cosine similarity to any support foreground position and to any background
position (the 4D correlation of HSNet, reduced over the support positions: a cheap
factorisation of its centre-pivot 4D convolutions) and the cosine similarity to the
masked-average foreground and background prototypes. PFENet's training-free prior is the
foreground maximum of a high-level block, min-max normalised per image. These statistics,
grouped by stride, are squeezed by small convolutions from coarse to fine and decoded with
the query's own stride-4 features into a foreground logit map. K shots: the maxima over
shots and the mean of the prototype similarities.

The statistics are a pure function of frozen features and masks (no parameters, no
gradient); only the decoder learns (``CorrelationDecoder``: 73,521 parameters at width 32,
257,233 at 64). With ``probe`` the foreground probability of a linear probe fitted on all
the shots' features (fewseg.models.probe) is one more input of the stride-16 group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from fewseg.errors import FewSegError
from fewseg.models.backbones import BACKBONES, TappedBackbone
from fewseg.models.neighbours import balanced_neighbours, nearest_mean
from fewseg.models.probe import fit_support_probe, probe_features, read_probe
from fewseg.models.upsample import adaptive_average_pool, bilinear_resize

STATISTICS = 4  # per tapped block: max fg cosine, max bg cosine, fg prototype, bg prototype


@dataclass(frozen=True)
class PyramidLayout:
    """Which blocks a backbone is tapped at: the correlation blocks (grouped by stride,
    coarsest group first in the decoder), the block of the prior, the query's skip block,
    the blocks the support-fitted probe reads (among the correlation blocks)."""

    correlated: tuple[int, ...]
    prior: int
    skip: int
    probe: tuple[int, ...]

    @property
    def taps(self) -> tuple[int, ...]:
        return tuple(sorted({*self.correlated, self.prior, self.skip}))


LAYOUTS = {
    # MobileNetV2 blocks 7-17 (stride 16 and 32), prior at block 16, skip from block 3 (s4),
    # probe on two stride-16 and two stride-32 blocks
    "mobilenet_v2": PyramidLayout(tuple(range(7, 18)), 16, 3, (10, 13, 16, 17)),
    # EfficientNet-Lite0 (block 0 = stem): MBConv blocks at stride 16 and 32, prior at the
    # last stride-32 block but one, skip from the last stride-4 block, probe as MobileNetV2's
    "efficientnet_lite0": PyramidLayout(tuple(range(6, 17)), 15, 3, (8, 11, 15, 16)),
    # EfficientNet-Lite1 and -Lite2: the same stages, each middle one a block deeper
    "efficientnet_lite1": PyramidLayout(tuple(range(8, 22)), 20, 4, (11, 15, 20, 21)),
    "efficientnet_lite2": PyramidLayout(tuple(range(8, 22)), 20, 4, (11, 15, 20, 21)),
}


def pyramid_backbone(
    name: str, pretrained: bool, weights_path: str | None, taps: Sequence[int] | None = None
) -> TappedBackbone:
    """The frozen backbone ``name`` as a pyramid, tapped at ``taps`` (default: its
    correlation layout's blocks)."""
    if name not in LAYOUTS:
        known = ", ".join(sorted(LAYOUTS))
        raise FewSegError(
            f"the correlation model and the probe take backbone {known}; got {name!r}"
        )
    backbone = BACKBONES.get(name)(pretrained=pretrained, weights_path=weights_path, frozen=True)
    assert isinstance(backbone, TappedBackbone)
    return type(backbone)(
        pretrained=pretrained,
        weights_path=weights_path,
        taps=LAYOUTS[name].taps if taps is None else taps,
        pyramid=True,
    )


def unit(features: torch.Tensor) -> torch.Tensor:
    """[C, N] → each column scaled to unit length (zero columns stay zero)."""
    return features / features.norm(dim=0, keepdim=True).clamp_min(1e-6)


def block_statistics(
    query: torch.Tensor, support: torch.Tensor, foreground: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """One block, one shot: query [C,h,w], support [C,h,w], the support's foreground and
    valid fractions per cell [h,w] → [4,h,w] (see the module docstring). A cell counts as
    foreground when any of it is, as background when more than half of it is (else any)."""
    height, width = query.shape[-2:]
    q = unit(query.flatten(1)).T  # [hw, C]
    s = unit(support.flatten(1))  # [C, hw]
    fg_weight, bg_weight = foreground.flatten(), (valid - foreground).flatten()
    fg_cells = fg_weight > 0
    bg_cells = bg_weight > 0.5 if bool((bg_weight > 0.5).any()) else bg_weight > 0

    def largest(cells: torch.Tensor) -> torch.Tensor:
        if not bool(cells.any()):
            return q.new_zeros(q.shape[0])
        return (q @ s[:, cells]).amax(dim=1)

    prototypes = unit(
        torch.stack([support.flatten(1) @ fg_weight, support.flatten(1) @ bg_weight], 1)
    )
    cosines = (q @ prototypes).T  # [2, hw]
    stats = torch.stack([largest(fg_cells), largest(bg_cells), cosines[0], cosines[1]])
    return stats.view(STATISTICS, height, width)


class SupportCells(NamedTuple):
    """A support set's cells on one grid ([K, n]: K shots, n cells): the foreground and
    background fractions of each cell, and which cells count as each class (as in
    :func:`block_statistics`) as positions among the K · n shot-major columns, with how
    many each shot has."""

    fg_weight: torch.Tensor
    bg_weight: torch.Tensor
    columns: tuple[torch.Tensor, torch.Tensor]  # foreground, background
    counts: tuple[list[int], list[int]]

    @classmethod
    def pooled(
        cls, foreground: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]
    ) -> SupportCells:
        """From the shots' foreground and valid pixels [K,H,W], pooled to ``size``. Each
        shot is pooled alone: the pooling's matrix products round differently with the
        number of shots, and a shot compared alone (``per_shot``) must find the cells it
        finds on its own."""

        def pool(pixels: torch.Tensor) -> torch.Tensor:
            return torch.cat([adaptive_average_pool(shot[None], size) for shot in pixels])

        fg_weight = pool(foreground).flatten(1)
        bg_weight = pool(valid).flatten(1) - fg_weight
        half = bg_weight > 0.5
        bg_cells = torch.where(half.any(dim=1, keepdim=True), half, bg_weight > 0)
        classes = (fg_weight > 0, bg_cells)
        columns = tuple(cells.flatten().nonzero().squeeze(1) for cells in classes)
        counts = tuple(cells.sum(dim=1).tolist() for cells in classes)
        return cls(fg_weight, bg_weight, columns, counts)  # type: ignore[arg-type]


def correlation_statistics(
    query: Sequence[torch.Tensor],
    support: Sequence[torch.Tensor],
    masks: torch.Tensor,
    ignore: torch.Tensor,
    correlated: Sequence[int],
    balanced: bool = False,
    per_shot: bool = False,
) -> list[torch.Tensor]:
    """The statistics of one query against a K-shot support set, for each correlated level:
    ``query`` levels [C,h,w], ``support`` levels [K,C,h,w], ``masks``/``ignore`` [K,H,W] →
    one [4,h,w] map per level: :func:`block_statistics` of each shot (computed for all
    shots at once), the maxima over shots and the prototype similarities averaged; with
    ``per_shot`` each shot's own, [K,4,h,w]. With ``balanced`` the foreground and background
    maxima are class-balanced: each shot's mean of the query cell's
    :func:`balanced_neighbours` most similar cells of each class instead of the largest."""
    valid = (~ignore).float()
    foreground = masks.float() * valid
    pooled: dict[tuple[int, int], SupportCells] = {}
    out = []
    for level in correlated:
        height, width = query[level].shape[-2:]
        # the support's own grid: the query's, or smaller (a query enlarged at test time)
        size = (int(support[level].shape[-2]), int(support[level].shape[-1]))
        if size not in pooled:
            pooled[size] = SupportCells.pooled(foreground, valid, size)
        cells = pooled[size]
        features = support[level].flatten(2)  # [K, C, n]
        q = unit(query[level].flatten(1)).T  # [hw, C]
        # only the columns of each class's cells are compared: no [hw, K·n] copy to gather
        columns = unit_columns(features).transpose(0, 1).flatten(1)  # [C, K·n]
        maxima = []  # foreground, background: [K, hw] each
        for c, (chosen, counts) in enumerate(zip(cells.columns, cells.counts, strict=True)):
            cosines = q @ columns.index_select(1, chosen)  # [hw, this class's cells]
            nearest = None
            if balanced:
                nearest = [balanced_neighbours(*n)[c] for n in zip(*cells.counts, strict=True)]
            maxima.append(best_of_each_shot(cosines, counts, nearest))
        weights = torch.stack([cells.fg_weight, cells.bg_weight], 2)
        prototypes = unit_columns(features @ weights)  # [K, C, 2]
        similarity = q @ prototypes  # [K, hw, 2]
        if per_shot:
            stats = torch.cat([torch.stack(maxima, 1), similarity.transpose(1, 2)], 1)
            out.append(stats.view(len(features), STATISTICS, height, width))
        else:
            combined = [m.amax(dim=0) for m in maxima] + [*similarity.mean(dim=0).T]
            out.append(torch.stack(combined).view(STATISTICS, height, width))
    return out


def unit_columns(features: torch.Tensor) -> torch.Tensor:
    """[K, C, N] → each column of each shot scaled to unit length (zero columns stay zero)."""
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-6)


def best_of_each_shot(
    cosines: torch.Tensor, counts: Sequence[int], nearest: Sequence[int] | None = None
) -> torch.Tensor:
    """cosines [hw, Σ counts] (each shot's columns in turn, ``counts[k]`` of shot k) → each
    shot's largest cosine [K, hw], or with ``nearest`` the mean of its ``nearest[k]``
    largest (:func:`nearest_mean`); a shot without columns gives 0."""
    best = []
    parts = cosines.split(list(counts), dim=1)
    for k, (part, count) in enumerate(zip(parts, counts, strict=True)):
        if count == 0:
            best.append(cosines.new_zeros(len(cosines)))
        elif nearest is None:
            best.append(part.amax(dim=1))
        else:
            best.append(nearest_mean(part, nearest[k]))
    return torch.stack(best)


def prior_map(foreground_maximum: torch.Tensor) -> torch.Tensor:
    """PFENet's prior: the largest foreground cosine [h,w], min-max normalised."""
    low, high = foreground_maximum.min(), foreground_maximum.max()
    return (foreground_maximum - low) / (high - low + 1e-7)


def conv_relu(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1), nn.ReLU(inplace=True))


class CorrelationDecoder(nn.Module):
    """Squeezes each stride group's statistics (coarsest first) and merges them upwards:
    group g: conv(stats_g) ⊕ upsampled(coarser) → two 3×3 convolutions; then at stride 4 the
    query's own features (1×1 to ``skip`` channels) join, and ``head`` (a 3×3 convolution
    and a 1×1 to one logit) decodes. ``head`` is what inner loops adapt."""

    def __init__(self, group_channels: Sequence[int], skip_channels: int, hidden: int, skip: int):
        super().__init__()
        self.squeeze = nn.ModuleList()
        self.merge = nn.ModuleList()
        for i, channels in enumerate(group_channels):
            self.squeeze.append(conv_relu(channels, hidden))
            merged = hidden if i == 0 else 2 * hidden
            self.merge.append(nn.Sequential(conv_relu(merged, hidden), conv_relu(hidden, hidden)))
        self.skip = nn.Conv2d(skip_channels, skip, 1)
        self.head = nn.Sequential(
            nn.Conv2d(hidden + skip, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, groups: Sequence[torch.Tensor], skip: torch.Tensor) -> torch.Tensor:
        """groups: [B,c_g,h_g,w_g], coarsest first; skip [B,C,h4,w4] → logits [B,1,h4,w4]."""
        x = None
        for squeeze, merge, stats in zip(self.squeeze, self.merge, groups, strict=True):
            squeezed = squeeze(stats)
            if x is not None:
                squeezed = torch.cat([squeezed, bilinear_resize(x, stats.shape[-2:])], dim=1)
            x = merge(squeezed)
        assert x is not None
        x = bilinear_resize(x, skip.shape[-2:])
        return self.head(torch.cat([x, self.skip(skip)], dim=1))


def stride_groups(strides: Sequence[int]) -> list[list[int]]:
    """Positions of ``strides`` grouped by stride, coarsest group first."""
    groups: dict[int, list[int]] = {}
    for i, stride in enumerate(strides):
        groups.setdefault(stride, []).append(i)
    return [groups[s] for s in sorted(groups, reverse=True)]


def group_statistics(
    per_level: Sequence[torch.Tensor],
    groups: Sequence[Sequence[int]],
    prior: torch.Tensor | None,
    probe: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """Level statistics [4,h,w] concatenated per stride group; the prior [h,w], resized,
    joins the coarsest group, the probe's foreground probability [h,w] the finest."""
    out = []
    for g, members in enumerate(groups):
        maps = [per_level[i] for i in members]
        if g == 0 and prior is not None:
            maps.append(bilinear_resize(prior[None, None], maps[0].shape[-2:])[0])
        if g == len(groups) - 1 and probe is not None:
            maps.append(bilinear_resize(probe[None, None], maps[0].shape[-2:])[0])
        out.append(torch.cat(maps))
    return out


class CorrelationModel(nn.Module):
    """Frozen pyramid backbone (``encoder``) → correlation statistics → ``decoder``.

    :meth:`inputs` turns query images and a support set into what the decoder takes (no
    parameters involved); :meth:`forward` decodes them to foreground logits at stride 4.
    ``head`` is the decoder's last part, the part inner loops adapt.
    """

    def __init__(
        self,
        backbone: str = "mobilenet_v2",
        pretrained: bool = True,
        weights_path: str | None = None,
        hidden: int = 32,
        skip: int = 16,
        prior: bool = True,
        balanced: bool = False,
        probe: bool = False,
    ) -> None:
        super().__init__()
        self.balanced = balanced
        self.encoder = pyramid_backbone(backbone, pretrained, weights_path)
        layout = LAYOUTS[backbone]
        position = {tap: i for i, tap in enumerate(self.encoder.taps)}
        self.correlated = tuple(position[t] for t in layout.correlated)
        self.prior_level = position[layout.prior] if prior else None
        self.skip_level = position[layout.skip]
        self.probe = probe
        self.probe_levels = tuple(position[t] for t in layout.probe)
        strides = [self.encoder.tap_strides[i] for i in self.correlated]
        self.groups = stride_groups(strides)
        channels = [STATISTICS * len(g) for g in self.groups]
        if prior:
            channels[0] += 1
        if probe:
            channels[-1] += 1
        skip_channels = self.encoder.tap_channels[self.skip_level]
        self.decoder = CorrelationDecoder(channels, skip_channels, hidden, skip)

    @property
    def head(self) -> nn.Module:
        return self.decoder.head

    def inputs(
        self,
        query_images: torch.Tensor,
        support_images: torch.Tensor,
        masks: torch.Tensor,
        ignore: torch.Tensor,
        probe: torch.Tensor | None = None,
        per_shot: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(stride groups [B,c,h,w] coarsest first, query skip features [B,C,h4,w4]) for
        query images [B,3,H,W] against one support set (images [K,3,H,W], masks and ignore
        [K,H,W]). With ``per_shot`` the queries are compared with each shot alone: K·B
        rows, shot-major (row k·B + b: query b against shot k), the skip features repeated.
        No gradient flows into them: the encoder is frozen. With the probe on, ``probe`` is
        its log-odds for these queries ([B,h,w], :meth:`probe_map`: a K-shot model that
        compares each shot alone passes the probe fitted on all shots), else fitted on this
        support set."""
        with torch.no_grad():
            queries = self.encoder(query_images)
            support = self.encoder(support_images)
            if self.probe and probe is None:
                fitted = fit_support_probe(self._probe_cells(support), masks, ignore)
                probe = read_probe(self._probe_cells(queries), fitted)
            shots = len(support_images) if per_shot else 1

            def statistics(
                query: list[torch.Tensor], levels: Sequence[int], balanced: bool
            ) -> list[torch.Tensor]:
                """[S,4,h,w] per level: each shot's, or (S = 1) the shots' together."""
                each = correlation_statistics(
                    query, support, masks, ignore, levels, balanced, per_shot
                )
                return each if per_shot else [level[None] for level in each]

            rows: dict[tuple[int, int], list[torch.Tensor]] = {}
            for b in range(len(query_images)):
                query = [level[b] for level in queries]
                levels = statistics(query, self.correlated, self.balanced)
                maxima = None  # [S,h,w]
                if self.prior_level in self.correlated:
                    maxima = levels[self.correlated.index(self.prior_level)][:, 0]
                elif self.prior_level is not None:
                    # the prior is the plain maximum, balanced statistics or not
                    maxima = statistics(query, (self.prior_level,), False)[0][:, 0]
                probe_b = probe[b].sigmoid() if self.probe and probe is not None else None
                for k in range(shots):
                    prior = None if maxima is None else prior_map(maxima[k])
                    shot_levels = [level[k] for level in levels]
                    rows[k, b] = group_statistics(shot_levels, self.groups, prior, probe_b)
            ordered = [rows[k, b] for k in range(shots) for b in range(len(query_images))]
            groups = [torch.stack(maps) for maps in zip(*ordered, strict=True)]
            skip = queries[self.skip_level]
            skip = skip.repeat(shots, 1, 1, 1) if shots > 1 else skip
        return groups, skip

    def fit_probe(
        self, support_images: torch.Tensor, masks: torch.Tensor, ignore: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe (fewseg.models.probe) fitted on the support set at its layout's blocks
        (also when the model does not take it as an input): (weights, bias)."""
        with torch.no_grad():
            support = self.encoder(support_images)
            return fit_support_probe(self._probe_cells(support), masks, ignore)

    def probe_map(
        self, query_images: torch.Tensor, probe: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """A probe from :meth:`fit_probe` read on the query images: foreground log-odds
        [B,h,w] at the grid of its first block."""
        with torch.no_grad():
            return read_probe(self._probe_cells(self.encoder(query_images)), probe)

    def _probe_cells(self, levels: Sequence[torch.Tensor]) -> torch.Tensor:
        return probe_features([levels[i] for i in self.probe_levels])

    def forward(self, groups: Sequence[torch.Tensor], skip: torch.Tensor) -> torch.Tensor:
        return self.decoder(groups, skip)
