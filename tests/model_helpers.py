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


def relative_errors(got: torch.Tensor, expected: torch.Tensor, elsewhere: torch.Tensor) -> torch.Tensor:
    """Per row, ``|got - expected|`` over ``|expected - elsewhere|`` (the model's output for other input).

    A random ECAPA's outputs are nearly the same for any input (its batch norms' shifts dominate: cosine
    0.9999 between two random inputs), so cosines to the reference say nothing; this compares the error
    with how far the output moves when the input changes.
    """
    got, expected, elsewhere = (t.flatten(1).double() for t in (got, expected, elsewhere))
    return (got - expected).norm(dim=1) / (expected - elsewhere).norm(dim=1)
