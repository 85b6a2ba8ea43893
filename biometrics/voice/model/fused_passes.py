"""The bf16 pass's element-wise work, each piece one loop over the frames, for ``onednn_bf16``.

Why: on a CPU with AMX the oneDNN products of a bf16 pass run four times as fast as in fp32, and what was left
around them - the pooling's moments and attention-weighted moments, the squeeze-excitation's means and
residual writes, the Res2Net sums and their reflect padding - had become 40 % of the pass
(``benchmarks/bf16_pass.py``). In eager torch each of those is a chain of kernels, each a pass over the frames
(a bf16 -> fp32 copy, a subtraction, a square, a sum...). Fusing them takes a compiler: ``torch.compile``
(Inductor) did it but needs a C++ compiler on the serving host, spent 12-25 s on its first call and added 212
MB of memory; numba (LLVM) did it with 240 MB more (both past the memory budget in
``benchmarks/embedding_speed.py``). So they are a few loops of C (``fused_passes.c``), built with the package
like any extension and called through ctypes (which releases the GIL, so the service's concurrent passes run
them side by side).

Numerics are those of the torch code they replace, or closer to fp32. Sums accumulate in fp32 per block of
frames, each block's added into the totals (as torch's blocked reductions do, so the error does not grow with
the frames in a row). The (weighted) moments take SpeechBrain's two passes over each block of 32 frames while
it is in cache, about the first block's mean, and combine the blocks by Chan, Golub and LeVeque's pairwise
update: one read of the frames from memory, and the block's softmax weights kept for its second pass rather
than computed twice. Results that are bf16 are rounded once (to nearest even, as torch rounds). exp() is
Cephes' polynomial, within 2 ulp.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence

import torch

try:
    from biometrics.voice.model import _fused_passes
except ImportError as exc:  # set-up compiles it (pyproject.toml's ext-modules)
    raise ImportError(
        "the bf16 pass's C loops (biometrics/voice/model/fused_passes.c) are not built: run `make setup` "
        "(it needs a C compiler and the Python headers)"
    ) from exc

# Frames per partial sum of the segment means (the C file's ROW_BLOCK).
ROW_BLOCK = 64

_I64, _INT = ctypes.c_int64, ctypes.c_int
_PTR = ctypes.c_void_p


# fused_passes.c's KERNELS_VERSION: a library built from another version of the file is refused, never called
# with arguments it does not take.
KERNELS_VERSION = 1


def _load() -> ctypes.CDLL:
    library = ctypes.CDLL(_fused_passes.__file__)
    built = getattr(library, "bf16_kernels_version", None)
    if built is None or built() != KERNELS_VERSION:
        raise ImportError(
            f"{_fused_passes.__file__} was built from another version of fused_passes.c: run `make setup` to rebuild it"
        )
    signatures = {
        "bf16_moments": [_PTR, _I64, _I64, _I64, _PTR, _PTR],
        "bf16_weighted_moments": [_PTR, _I64, _PTR, _I64, _I64, _I64, _INT, _PTR, _PTR],
        "bf16_segment_sums": [_PTR, _I64, _PTR, _PTR, _I64, _I64, _PTR],
        "bf16_scaled_sums": [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _PTR, _I64],
        "bf16_padded_sum": [_PTR, _I64, _PTR, _PTR, _I64, _PTR, _I64, _I64, _I64, _PTR, _PTR, _I64, _PTR],
    }
    for name, argtypes in signatures.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, _INT
    return library


_LIB = _load()


def _rows(x: torch.Tensor) -> tuple[int, int]:
    """(address, row stride in elements) of [frames, channels] bf16 whose rows are each contiguous."""
    if x.dtype != torch.bfloat16 or x.dim() != 2 or x.device.type != "cpu":
        raise TypeError("expected [frames, channels] bf16 on the CPU")
    if x.shape[1] > 1 and x.stride(1) != 1:
        raise ValueError("expected rows that are each contiguous")
    return x.data_ptr(), x.stride(0)


def _fp32(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    x = x.detach().to(torch.float32).contiguous()
    if x.shape != shape:
        raise ValueError("expected one factor per channel")
    return x


def _checked(status: int) -> None:
    if status == -1:
        raise MemoryError("no memory for the pass's statistics")
    if status != 0:
        raise ValueError("reflect padding would read outside the frames")


def moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance over frames of [frames, channels] bf16, in fp32, two passes."""
    address, stride = _rows(z)
    mean, variance = torch.empty(z.shape[1]), torch.empty(z.shape[1])
    _checked(_LIB.bf16_moments(address, stride, z.shape[0], z.shape[1], mean.data_ptr(), variance.data_ptr()))
    return mean, variance


def weighted_moments(z: torch.Tensor, logits: torch.Tensor, exp_is_safe: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax(logits over frames)-weighted mean and variance of [frames, channels] bf16, in fp32.

    ``exp_is_safe``: the logits are bounded so that their exp() cannot overflow, and the softmax's max
    subtraction (a pass over them) is skipped; it cancels in the weights either way.
    """
    if logits.shape != z.shape:
        raise ValueError("expected one logit per frame and channel")
    z_address, z_stride = _rows(z)
    l_address, l_stride = _rows(logits)
    mean, variance = torch.empty(z.shape[1]), torch.empty(z.shape[1])
    frames, channels = z.shape
    _checked(
        _LIB.bf16_weighted_moments(
            z_address, z_stride, l_address, l_stride, frames, channels, int(not exp_is_safe),
            mean.data_ptr(), variance.data_ptr(),
        )
    )  # fmt: skip
    return mean, variance


def _spans(spans: Sequence[tuple[int, int]], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, ends) as int64 tensors, each span checked to be non-empty and within ``frames``."""
    return _span_table(tuple((int(start), int(end)) for start, end in spans), frames)


# A pass asks for the same spans some 30 times (each layer's padding, each block's gates): built once. The
# tensors are only read.
@functools.lru_cache(maxsize=256)
def _span_table(spans: tuple[tuple[int, int], ...], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    if any(not 0 <= start < end <= frames for start, end in spans):
        raise ValueError("expected non-empty spans of frames")
    table = torch.tensor(spans, dtype=torch.int64).reshape(-1, 2)
    return table[:, 0].contiguous(), table[:, 1].contiguous()


def segment_means(z: torch.Tensor, spans: Sequence[tuple[int, int]]) -> torch.Tensor:
    """[segments, channels] fp32: the mean of each span ``(start, end)`` of frames of [frames, channels] bf16."""
    address, stride = _rows(z)
    starts, ends = _spans(spans, z.shape[0])
    totals = torch.empty(len(starts), z.shape[1])
    _checked(
        _LIB.bf16_segment_sums(
            address, stride, starts.data_ptr(), ends.data_ptr(), len(starts), z.shape[1], totals.data_ptr()
        )
    )
    return totals / (ends - starts)[:, None]


def scaled_sums(
    x: torch.Tensor,
    x_factor: torch.Tensor,
    constants: torch.Tensor,
    z: torch.Tensor,
    z_factors: torch.Tensor,
    spans: Sequence[tuple[int, int]],
    out: torch.Tensor,
) -> None:
    """For each span ``(start, end)`` of frames and its row ``k`` of ``constants`` and ``z_factors``
    ([spans, channels] fp32): ``out[start:end] = x[start:end] * x_factor + constants[k] + z[start:end] * z_factors[k]``.

    Computed in fp32 and rounded to bf16 once. ``x`` and ``out`` may be column slices of wider tensors.
    """
    if x.shape != out.shape or z.shape != out.shape:
        raise ValueError("expected frames of one shape")
    frames, channels = out.shape
    starts, ends = _spans(spans, frames)
    x_address, x_stride = _rows(x)
    z_address, z_stride = _rows(z)
    out_address, out_stride = _rows(out)
    x_factor = _fp32(x_factor, (channels,))
    constants, z_factors = _fp32(constants, (len(starts), channels)), _fp32(z_factors, (len(starts), channels))
    _checked(
        _LIB.bf16_scaled_sums(
            x_address, x_stride, x_factor.data_ptr(), constants.data_ptr(), z_address, z_stride,
            z_factors.data_ptr(), starts.data_ptr(), ends.data_ptr(), len(starts), channels, out_address, out_stride,
        )
    )  # fmt: skip


def padded_sum(
    x: torch.Tensor,
    pad: int,
    segments: Sequence[tuple[int, int]] | None,
    x_factor: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
    factor: torch.Tensor | None = None,
) -> torch.Tensor:
    """[pad + frames + pad, channels] bf16: ``x`` (or ``x * x_factor + addend * factor``, fp32 factors, ``x_factor``
    None for 1) reflect-padded like SpeechBrain's convolutions, and with ``segments`` ((start, end) frames of a
    packed row) each segment's reflections in the gaps too (``packing.reflect_into_padding``).
    """
    frames, channels = x.shape
    if frames <= pad:
        raise ValueError(f"reflect padding of {pad} frames needs more than {pad} frames")
    x = x.to(torch.bfloat16)
    if channels > 1 and x.stride(1) != 1:  # any layout is taken (it is copied into the padded tensor anyway)
        x = x.contiguous()
    x_address, x_stride = _rows(x)
    out = torch.empty(frames + 2 * pad, channels, dtype=torch.bfloat16)
    a_address, a_stride = None, 0
    if addend is None and (x_factor is not None or factor is not None):
        raise ValueError("factors without an addend")
    if addend is not None:
        if addend.shape != x.shape or factor is None:
            raise ValueError("expected an addend of the frames' shape and its factor")
        a_address, a_stride = _rows(addend)
        factor = _fp32(factor, (channels,))  # referenced until the call returns
    if x_factor is not None:
        x_factor = _fp32(x_factor, (channels,))
    f_address = None if factor is None else factor.data_ptr()
    xf_address = None if x_factor is None else x_factor.data_ptr()
    starts, ends = _spans(segments or (), frames)
    _checked(
        _LIB.bf16_padded_sum(
            x_address, x_stride, xf_address, a_address, a_stride, f_address, frames, channels, pad,
            starts.data_ptr(), ends.data_ptr(), len(starts), out.data_ptr(),
        )
    )  # fmt: skip
    return out
