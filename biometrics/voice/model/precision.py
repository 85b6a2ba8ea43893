"""Which floating-point precision the embedding path's matrix products run in on this CPU.

``BIOIDENT_PRECISION`` is ``auto`` (the default), ``fp32`` or ``bf16``. ``auto`` picks bf16 where the CPU
has native bfloat16 matrix instructions and fp32 elsewhere. Native means one of

- ``amx_bf16``: Intel AMX tiles with bf16 dot products (Sapphire Rapids and later);
- ``avx512_bf16``: AVX-512 ``VDPBF16PS`` bf16 dot products with fp32 accumulation (Intel Cooper Lake,
  AMD Zen 4 and later).

Both are read from the kernel's CPU flags (``/proc/cpuinfo``; Linux lists ``amx_bf16`` only where the
kernel lets processes use the tiles), else from torch's own CPU probe. Without them torch still runs bf16
products, by converting to fp32 in software: slower than fp32, so ``auto`` never picks it there, and
``bf16`` there is for tests and comparisons only.

Where oneDNN has bf16 kernels (``onednn_bf16``: every CPU with native bf16), a bf16 pass runs on them:
the trunk's and the pooling's products with fp32 accumulation, their bias and ReLU applied before the
output is rounded to bf16, the activations between layers in bf16; the statistics (squeeze-excitation
means and gates, the pooling's moments and softmax), the final batch norm and linear layer in fp32.
Elsewhere (``bf16`` asked for where torch emulates it) ``cpu_kernels``' eager path runs instead: bf16
products only, everything around them in fp32. Embeddings of either precision agree to cosine >= 0.9999
(tests/test_precision.py), so precision is not part of the model fingerprint: it is recorded alongside it.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
PrecisionSetting = Literal["auto", "fp32", "bf16"]
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
CPUINFO = Path("/proc/cpuinfo")

DTYPES: dict[Precision, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def has_native_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these feature flags (as /proc/cpuinfo names them) has native bf16 matrix instructions."""
    return not NATIVE_BF16_FLAGS.isdisjoint(flags)


def cpuinfo_flags(text: str) -> frozenset[str]:
    """The feature flags of the first processor in the text of /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags: /proc/cpuinfo's, else the bf16 ones torch's own probe reports."""
    try:
        flags = cpuinfo_flags(CPUINFO.read_text())
    except OSError:
        flags = frozenset()
    if flags:
        return flags
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def resolve_precision(setting: PrecisionSetting, device: str = "cpu", flags: Iterable[str] | None = None) -> Precision:
    """The precision ``setting`` means on ``device``: ``auto`` is bf16 on a CPU with native bf16, else fp32.

    Off the CPU the packed kernels are not used and the model runs as SpeechBrain built it: fp32.
    """
    if setting not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, not {setting!r}")
    if torch.device(device).type != "cpu":
        return "fp32"
    if setting == "auto":
        return "bf16" if has_native_bf16(cpu_flags() if flags is None else flags) else "fp32"
    return setting
