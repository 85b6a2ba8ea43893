"""Helpers for the tests of the model's CPU kernels and packing, which run on randomly initialised modules."""

from __future__ import annotations

import torch


def randomise_batch_norms(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Non-trivial statistics, with negative and zero scales (the VoxCeleb checkpoint has both)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(-1.0, 1.5, generator=gen)
                m.weight[0] = 0.0
                m.bias.uniform_(-0.5, 0.5, generator=gen)
