"""Several utterances packed one after another along time, so each convolution is one large GEMM.

A batch of utterances becomes a single row: each utterance is a segment of that row, and
consecutive segments are ``gap`` frames apart. Each utterance still gets exactly the embedding
it gets on its own (to float rounding), because

- before every 'same' convolution, a forward pre-hook writes into the gaps the reflection of each
  segment's edge frames that SpeechBrain's reflect padding would give the utterance alone (a gap
  of twice the widest padding holds both neighbours' reflections without overlap);
- the modules that look across time (squeeze-excitation and attentive statistics pooling) take
  their statistics per segment (``segments_of``), and the pooling returns one row per segment;
- everything else works frame by frame or channel by channel.

Whatever the gaps hold after a layer is never read by any segment's frames. On CPU this keeps the
GEMMs wide (a 3 s utterance alone gives them 300 columns; packed with others, 1000-2000, where
the BLAS runs 10-25% faster) and pays the Python overhead of a forward pass once per pack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import NamedTuple

import torch
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.nnet.CNN import Conv1d


class Segment(NamedTuple):
    """One utterance's frames in a batch tensor: ``x[row, :, start : start + frames]``."""

    row: int
    start: int
    frames: int

    @property
    def end(self) -> int:
        return self.start + self.frames


_packed: ContextVar[tuple[Segment, ...] | None] = ContextVar("bioident_packed_segments", default=None)


@contextmanager
def packed(segments: Sequence[Segment]) -> Iterator[None]:
    """Within this block, forward passes in this thread see the batch as these segments."""
    token = _packed.set(tuple(segments))
    try:
        yield
    finally:
        _packed.reset(token)


def segments_of(batch: int, frames: int, lengths: torch.Tensor | None) -> tuple[Segment, ...]:
    """The packed segments when packing is on; otherwise one segment per row, as SpeechBrain's masks keep it."""
    segments = _packed.get()
    if segments is not None:
        return segments
    if lengths is None:
        return tuple(Segment(row, 0, frames) for row in range(batch))
    counts = length_to_mask(lengths * frames, max_len=frames).sum(dim=1).long().tolist()
    return tuple(Segment(row, 0, n) for row, n in enumerate(counts))


def pack(features: Sequence[torch.Tensor], gap: int) -> tuple[torch.Tensor, tuple[Segment, ...]]:
    """[1, time, features] with each [frames, features] matrix ``gap`` frames after the one before."""
    segments, start = [], 0
    for f in features:
        segments.append(Segment(0, start, int(f.shape[0])))
        start += int(f.shape[0]) + gap
    width = segments[-1].end
    batch = features[0].new_zeros(1, width, features[0].shape[1])
    for segment, f in zip(segments, features, strict=True):
        batch[0, segment.start : segment.end] = f
    return batch, tuple(segments)


class ReflectIntoGaps:
    """Forward pre-hook on a 'same' convolution with reflect padding of ``pad`` frames (input [batch, C, time])."""

    def __init__(self, pad: int) -> None:
        self.pad = pad

    def __call__(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        segments = _packed.get()
        if segments is None:
            return
        x, p = args[0], self.pad
        width = x.shape[-1]
        for s in segments:
            if s.start > 0:  # F.pad(mode="reflect") before frame 0 gives frames p, p-1, ..., 1
                x[s.row, :, s.start - p : s.start] = x[s.row, :, s.start + 1 : s.start + p + 1].flip(-1)
            if s.end < width:  # and past frame n-1 gives n-2, n-3, ..., n-1-p
                x[s.row, :, s.end : s.end + p] = x[s.row, :, s.end - 1 - p : s.end - 1].flip(-1)


def install_gap_hooks(model: torch.nn.Module) -> int:
    """Hooks ``ReflectIntoGaps`` onto every padded convolution of an ECAPA-TDNN; returns the widest padding."""
    max_pad = 0
    for module in model.modules():
        if isinstance(module, Conv1d) and module.padding == "same" and module.kernel_size == 1:
            # 'same' padding of width zero is a full copy of the input: skip it (+17% speed, same math).
            module.padding = "valid"
        if isinstance(module, Conv1d) and module.padding == "same" and module.kernel_size > 1:
            if module.stride != 1 or module.padding_mode != "reflect":
                raise RuntimeError("unexpected ECAPA convolution layout; packed batches would be wrong")
            pad = module.dilation * (module.kernel_size - 1) // 2
            module.register_forward_pre_hook(ReflectIntoGaps(pad))
            max_pad = max(max_pad, pad)
    return max_pad
