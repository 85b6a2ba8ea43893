"""(d) The BLAS ceiling of the embedding speed benchmark's batched path (b): its own matrix products, replayed.

Every matrix product (b) runs is recorded once with the profiler (``record_gemm_shapes``) and replayed
alone on operands of the same shapes (output rows 64-byte aligned, as (b) writes them), in both of (c)'s
arrangements: one product at a time on all cores, and as many at once as (b) runs passes, each on its
share of the cores (``replay_gemms``; products run at once start together). The faster arrangement
counts. (b) cannot beat (d) without faster GEMMs or fewer FLOPs; (d)/(c peak) is how much of the
square-GEMM rate the BLAS reaches on the model's shapes.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings

import numpy as np
import torch

from biometrics.torch_thread import run_in_turns, run_on_torch_thread
from biometrics.voice.model.cpu_kernels import aligned_rows

GEMM_OPS = ("aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::mm", "aten::bmm")
MIN_GEMM_DIM = 16  # smaller ones are per-utterance vector products (SE gates, the embedding head), not GEMMs


def record_gemm_shapes(embedder, utterances: list[np.ndarray]) -> dict[tuple[int, int, int, int], int]:
    """(batch, m, k, n) -> calls, for every matrix product one untimed run of (b) makes.

    The run embeds (b)'s packs one pass at a time, on this thread, where the profiler sees them.
    """
    from torch.profiler import ProfilerActivity, profile

    with warnings.catch_warnings():  # one profiling cycle: its note about clearing events between cycles is noise
        warnings.filterwarnings("ignore", message=".*Profiler clears events", category=UserWarning)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for pack in embedder.packs(utterances):
                embedder.encoder.embed([utterances[i] for i in pack])
    shapes: dict[tuple[int, int, int, int], int] = {}
    for event in prof.events():
        if event.name not in GEMM_OPS or len(event.input_shapes) < 2:
            continue
        a, b = (
            (event.input_shapes[0], event.input_shapes[1])
            if event.name in ("aten::mm", "aten::bmm")
            else (
                event.input_shapes[1],
                event.input_shapes[2],
            )
        )
        batch = a[0] if len(a) == 3 else 1
        m, k, n = a[-2], a[-1], b[-1]
        if min(m, k, n) >= MIN_GEMM_DIM:
            shapes[(batch, m, k, n)] = shapes.get((batch, m, k, n), 0) + 1
    return shapes


def replay_gemms(
    shapes: dict[tuple[int, int, int, int], int], arrangements: tuple[int, ...], min_s_per_shape: float = 0.02
) -> tuple[dict[int, float], float]:
    """Seconds by arrangement, and FLOPs, of all recorded products run alone (best of a few timings per shape).

    As for (c), each arrangement runs the products that many at once, each on its share of the cores.
    """
    seconds = {
        workers: sum(
            calls * run_on_torch_thread(_best_product_s, batch, m, k, n, workers, min_s_per_shape)
            for (batch, m, k, n), calls in shapes.items()
        )
        for workers in arrangements
    }
    return seconds, sum(2.0 * batch * m * k * n * calls for (batch, m, k, n), calls in shapes.items())


def _best_product_s(batch: int, m: int, k: int, n: int, workers: int, min_s: float) -> float:
    """Seconds per [batch, m, k] x [batch, k, n] product, ``workers`` running theirs at the same moments."""
    runs = {"started": 0, "first_timed_at": 0.0, "stop": False}

    def next_run() -> None:  # once per run, when every worker is ready for it; run 1 is the warm-up
        runs["started"] += 1
        if runs["started"] == 2:
            runs["first_timed_at"] = time.perf_counter()
        timed = runs["started"] - 2
        runs["stop"] = timed >= 3 and time.perf_counter() - runs["first_timed_at"] >= min_s

    start_together = threading.Barrier(workers, action=next_run, timeout=60)

    def products(seed: int) -> list[float]:
        try:
            return timed_products(seed)
        except BaseException:
            start_together.abort()  # the other workers would wait at the barrier for its timeout
            raise

    @torch.inference_mode()  # on each worker's thread: the mode is per thread
    def timed_products(seed: int) -> list[float]:
        gen = torch.Generator().manual_seed(seed)
        a, b = torch.randn(batch, m, k, generator=gen), torch.randn(batch, k, n, generator=gen)
        out = aligned_rows(a, batch, m, n)  # output rows 64-byte aligned, as (b)'s convolutions write them
        timings: list[float] = []
        while True:
            start_together.wait()
            if runs["stop"]:
                return timings
            start = time.perf_counter()
            for i in range(batch):
                torch.mm(a[i], b[i], out=out[i])
            if runs["started"] > 1:
                timings.append(time.perf_counter() - start)

    by_worker = run_in_turns([functools.partial(products, 2 + w) for w in range(workers)], workers)
    # Each run ends when its slowest product does; the best run counts.
    return min(max(times) for times in zip(*by_worker, strict=True)) / workers
