"""Batched neural-field components: every image owns its parameters along a leading batch axis.

A batch of B independent fields is evaluated in one call: each grid level is a (B, F, R, R)
tensor sampled with ``grid_sample`` (one sampling grid per batch element), and each MLP layer
is a (B, in, out) weight applied with a batched matmul. No parameter is shared across the
batch, so fitting images together equals fitting each alone. Initialisation draws every
image's values from that image's own generator, in a fixed order, for the same reason.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.engine_config import FieldConfig


def _per_image(
    generators: list[torch.Generator], shape: tuple[int, ...], low: float, high: float
) -> torch.Tensor:
    """(B, *shape) uniform values in [low, high), row b drawn from generators[b] (on CPU)."""
    rows = [torch.rand(shape, generator=g) * (high - low) + low for g in generators]
    return torch.stack(rows)


class BatchedLinear(nn.Module):
    """B independent linear layers: (B, N, in) -> (B, N, out), PyTorch's default init."""

    def __init__(self, in_dim: int, out_dim: int, generators: list[torch.Generator]) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        self.weight = nn.Parameter(_per_image(generators, (in_dim, out_dim), -bound, bound))
        self.bias = nn.Parameter(_per_image(generators, (1, out_dim), -bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, in) -> (B, N, out), each image through its own weights."""
        return torch.baddbmm(self.bias, x, self.weight)


class BatchedMLP(nn.Module):
    """B independent MLPs with ReLU between layers: (B, N, dims[0]) -> (B, N, dims[-1])."""

    def __init__(self, dims: list[int], generators: list[torch.Generator]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BatchedLinear(a, b, generators) for a, b in itertools.pairwise(dims)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dims[0]) -> (B, N, dims[-1])."""
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = F.relu(x)
        return x


def level_resolutions(cfg: FieldConfig) -> list[int]:
    """Cells per side of each grid level, geometric from min to max resolution."""
    if cfg.num_levels == 1:
        return [cfg.min_resolution]
    growth = math.exp(
        (math.log(cfg.max_resolution) - math.log(cfg.min_resolution)) / (cfg.num_levels - 1)
    )
    return [int(round(cfg.min_resolution * growth**level)) for level in range(cfg.num_levels)]


class BatchedGridEncoding(nn.Module):
    """Multi-resolution dense 2-D feature grids, one set per image.

    forward: coords (B, N, 2) as (x, y) in [0, 1] -> (B, N, num_levels * features_per_level);
    levels finer than ``max_resolution`` (when > 0) give zeros and no gradient.
    """

    def __init__(self, cfg: FieldConfig, generators: list[torch.Generator]) -> None:
        super().__init__()
        self.resolutions = level_resolutions(cfg)
        std = cfg.grid_init_std
        self.levels = nn.ParameterList(
            nn.Parameter(_per_image(generators, (cfg.features_per_level, r, r), -std, std))
            for r in self.resolutions
        )
        self.out_dim = cfg.num_levels * cfg.features_per_level

    def forward(self, coords: torch.Tensor, max_resolution: int = 0) -> torch.Tensor:
        """coords (B, N, 2) -> the levels' bilinear samples, concatenated (class docstring)."""
        grid = (coords * 2.0 - 1.0).unsqueeze(1)  # (B, 1, N, 2), grid_sample's [-1, 1]
        feats = []
        for level, resolution in zip(self.levels, self.resolutions, strict=True):
            if 0 < max_resolution < resolution:
                feats.append(grid.new_zeros(grid.shape[0], level.shape[1], 1, grid.shape[2]))
            else:
                feats.append(
                    F.grid_sample(
                        level, grid, mode="bilinear", padding_mode="border", align_corners=True
                    )
                )  # (B, F, 1, N)
        return torch.cat(feats, dim=1).squeeze(2).transpose(1, 2)


class BatchedNeuralField(nn.Module):
    """The semantic field F: grids then MLP (enc -> hidden -> ReLU -> C), per image.

    forward: coords (B, N, 2) in [0, 1] -> features (B, N, C); ``max_resolution`` as in
    ``BatchedGridEncoding``.
    """

    def __init__(self, cfg: FieldConfig, channels: int, generators: list[torch.Generator]) -> None:
        super().__init__()
        self.encoding = BatchedGridEncoding(cfg, generators)
        hidden = max(1, int(round(channels * cfg.hidden_ratio)))
        self.mlp = BatchedMLP([self.encoding.out_dim, hidden, channels], generators)

    def forward(self, coords: torch.Tensor, max_resolution: int = 0) -> torch.Tensor:
        """coords (B, N, 2) in [0, 1] -> features (B, N, C)."""
        return self.mlp(self.encoding(coords, max_resolution))
