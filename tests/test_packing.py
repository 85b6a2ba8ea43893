"""Utterances packed along time give what SpeechBrain's own ECAPA gives each one alone (random weights, fast)."""

from __future__ import annotations

import copy

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

from biometrics.voice.model.cpu_kernels import make_segment_aware, speed_up_for_cpu
from biometrics.voice.model.packing import Segment, pack, packed, reflect_into_gaps
from tests.model_helpers import randomise_batch_norms


def small_ecapa(seed: int) -> ECAPA_TDNN:
    torch.manual_seed(seed)
    model = ECAPA_TDNN(
        input_size=20, channels=[64, 64, 64, 64, 192], attention_channels=16, lin_neurons=24, res2net_scale=4
    ).eval()
    randomise_batch_norms(model, torch.Generator().manual_seed(seed))
    return model


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1))


@pytest.fixture(scope="module")
def utterances() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    # The shortest is the fewest frames the widest padding (4) allows; two are one frame apart.
    return [torch.randn(n, 20, generator=gen) for n in (6, 45, 44, 130, 17, 80)]


@pytest.mark.parametrize("cpu_kernels", [True, False], ids=["cpu-kernels", "segment-aware-only"])
def test_packed_utterances_get_what_speechbrain_gives_each_alone(utterances, cpu_kernels):
    reference = small_ecapa(3)
    model = copy.deepcopy(reference)
    max_pad = reflect_into_gaps(model)
    assert max_pad == 4
    make_segment_aware(model)
    if cpu_kernels:
        speed_up_for_cpu(model)
    batch, segments = pack(utterances, gap=2 * max_pad)
    with torch.inference_mode():
        with packed(segments):
            got = model(batch, torch.ones(1))
        alone = torch.cat([reference(u[None], torch.ones(1)) for u in utterances])
    assert got.shape == alone.shape == (len(utterances), 1, 24)
    assert float(_cosines(got, alone).min()) >= 0.99999


def test_without_reflections_in_the_gaps_packing_would_not_be_exact(utterances):
    """The check above can fail: packed with SpeechBrain's own padding, short utterances move."""
    reference = small_ecapa(3)
    model = copy.deepcopy(reference)
    make_segment_aware(model)
    batch, segments = pack(utterances, gap=8)
    with torch.inference_mode():
        with packed(segments):
            got = model(batch, torch.ones(1))
        alone = torch.cat([reference(u[None], torch.ones(1)) for u in utterances])
    assert float(_cosines(got, alone).min()) < 0.9999


def test_pack_lays_utterances_out_with_zero_gaps():
    a, b = torch.ones(5, 3), 2 * torch.ones(2, 3)
    batch, segments = pack([a, b], gap=4)
    assert segments == (Segment(0, 0, 5), Segment(0, 9, 2))
    assert batch.shape == (1, 11, 3)
    assert batch[0, :5].eq(1).all() and batch[0, 5:9].eq(0).all() and batch[0, 9:].eq(2).all()
