"""(c) The matrix-multiply bounds of the embedding speed benchmark: how fast this host runs square GEMMs.

(c32) is the bound of fp32 products, (c16) that of bf16 products (bf16 operands, fp32 accumulation, bf16
results), the one to hold our bf16 path (b16) against; both are measured the same way.

The bound is the FLOP/s of square fp32 ``torch.mm`` products divided by the model's FLOPs per second of
audio. The products are timed *paired* with (b), the batched embedding path (``time_paired``): a run of (b)
(one turn of the torch thread, as nothing else is queued) is bracketed by square products, for half as
long as it takes before it and half as long after it, so (b) and (c) see the host at nearly the same
moments, and (b)/(c) is the median over repeats of these paired runs. That time is shared, in alternating
slices of at most 0.5 s, by products run one at a time on all cores and products run as many at once as
(b) runs passes, each on its share of the cores (as (b) does); the faster of the two is the bound. On a
shared host whose speed swings by 20% within seconds (measured: the same 2048 x 2048 product at 95-157
GFLOP/s in consecutive 0.15 s blocks), comparing runs timed at different moments measures the host's
weather, not our code. The best 0.25 s block of each size (``gemm_flops_per_s``) is reported as well, as
(c peak).
"""

from __future__ import annotations

import functools
import time

import numpy as np
import torch

from biometrics.torch_thread import run_in_turns, run_on_torch_thread

GEMM_SIZES = (1024, 2048, 4096)
GEMM_SECONDS_PER_SIZE = 1.5
SKIP_SIZES_OVER_S = 4 * GEMM_SECONDS_PER_SIZE  # a size whose one product would take longer is not swept
PAIRED_SLICE_S = 0.5

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}

GemmOperands = dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
# FLOP/s of square products, by precision ("fp32", "bf16"), then products at once, then size
GemmRates = dict[str, dict[int, dict[int, float]]]


def square_products(n: int, seconds: float, workers: int, operands: GemmOperands, precision: str = "fp32") -> float:
    """FLOP/s of back-to-back ``n`` x ``n`` products for ``seconds`` (at least one each), ``workers`` at once.

    One worker runs them on the torch thread's cores; more run them concurrently on the torch thread's
    workers, each on its share of the cores, as (b) runs its forward passes. Call on the torch thread.
    ``operands`` caches each worker's matrices by (n, worker, precision).
    """
    dtype = PRECISIONS[precision]
    for w in range(workers):
        if (n, w, precision) not in operands:
            gen = torch.Generator().manual_seed(3 + w)
            a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
            operands[(n, w, precision)] = (a, b, torch.empty(n, n, dtype=dtype))

    @torch.inference_mode()  # on each worker's thread: the mode is per thread
    def products(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> float:
        torch.mm(a, b, out=c)  # warm-up, untimed
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds or count == 0:
            torch.mm(a, b, out=c)
            count += 1
        return count * 2 * n**3 / elapsed

    calls = [functools.partial(products, *operands[(n, w, precision)]) for w in range(workers)]
    return sum(run_in_turns(calls, workers))


def gemm_flops_per_s(arrangements: tuple[int, ...], precision: str = "fp32") -> dict[int, dict[int, float]]:
    """Best square-product rate by size, for each number of products run at once (best 0.25 s block)."""
    rates: dict[int, dict[int, float]] = {}
    with torch.inference_mode():
        for workers in arrangements:
            rates[workers] = {}
            for n in GEMM_SIZES:
                operands: GemmOperands = {}
                deadline = time.perf_counter() + GEMM_SECONDS_PER_SIZE / len(arrangements)
                best = 0.0
                while not best or time.perf_counter() < deadline:  # at least one block, however late
                    best = max(best, square_products(n, 0.25, workers, operands, precision))
                rates[workers][n] = best
                del operands
                # Where products are emulated (bf16 without native instructions: about 1 GFLOP/s a core), one
                # product of the next size would take minutes: the sizes measured so far give the bound.
                if 2 * (2 * n) ** 3 * workers / best > SKIP_SIZES_OVER_S:
                    break
    return rates


def paired_gemm_size(rates: dict[int, float], pass_s: float) -> int:
    """The fastest size whose one product takes at most a quarter of a forward pass (else the smallest)."""
    fitting = [n for n, rate in rates.items() if 2 * n**3 / rate <= pass_s / 4]
    return max(fitting, key=rates.__getitem__) if fitting else min(rates)


def time_paired(embedder, utterances: list[np.ndarray], rates: GemmRates, expected_turn_s: float) -> dict:
    """(b), each turn of forward passes between two spells of square GEMMs (outside its timing).

    With nothing else queued on the torch thread, (b) is one turn. The GEMMs run for half a turn's length
    before it (half of ``expected_turn_s``, then of the turn before) and for half of its length after it,
    so they bracket the turn's moments. Their time is shared by the arrangements of ``rates`` (products
    one at a time on all cores, or several at once as (b) runs its passes, in each precision of ``rates``)
    in alternating slices, and for each precision the faster arrangement is the bound: comparing (b) with
    a GEMM arranged otherwise than the best would flatter (b). The first precision of ``rates`` gives the
    top-level figures. Wraps the embedder's per-turn method on this instance only, for the length of the run.
    """
    arrangements = [(precision, workers) for precision, by_workers in rates.items() for workers in by_workers]
    turns: list[tuple[float, int, dict[tuple[str, int], float]]] = []
    sizes_used: set[int] = set()
    operands: GemmOperands = {}
    embed_turn = embedder._embed_turn
    previous_s = [expected_turn_s]

    def gemm_spell(seconds: float) -> dict[tuple[str, int], float]:
        """FLOP/s by arrangement over ``seconds``, the arrangements alternating in slices of PAIRED_SLICE_S."""
        slices = max(1, round(seconds / len(arrangements) / PAIRED_SLICE_S))
        share = seconds / len(arrangements) / slices
        sizes = {
            (p, workers): paired_gemm_size({size: rate / workers for size, rate in rates[p][workers].items()}, share)
            for p, workers in arrangements
        }
        sizes_used.update(sizes.values())
        sliced: dict[tuple[str, int], list[float]] = {arrangement: [] for arrangement in arrangements}
        for _ in range(slices):
            for (p, workers), n in sizes.items():
                sliced[(p, workers)].append(run_on_torch_thread(square_products, n, share, workers, operands, p))
        return {arrangement: float(np.mean(rates_)) for arrangement, rates_ in sliced.items()}

    def timed_turn(out: list, packs: list[list[int]], utterances: list[np.ndarray]) -> int:
        before_s = previous_s[0] / 2
        before = gemm_spell(before_s)
        start = time.perf_counter()
        passes = embed_turn(out, packs, utterances)
        elapsed = previous_s[0] = time.perf_counter() - start
        after = gemm_spell(elapsed / 2)
        bracketed = {
            a: (before[a] * before_s + after[a] * elapsed / 2) / (before_s + elapsed / 2) for a in arrangements
        }
        turns.append((elapsed, passes, bracketed))
        return passes

    embedder._embed_turn = timed_turn
    try:
        with torch.inference_mode():
            embedder.embed_speech(utterances)
    finally:
        del embedder._embed_turn
    b_s = sum(s for s, _, _ in turns)
    by_precision = {}
    for p, by_workers in rates.items():
        by_precision[p] = {
            # Weighted by time, so the same moments as (b); each turn's bound is its faster arrangement.
            "gemm_flops_per_s": sum(s * max(m[(p, w)] for w in by_workers) for s, _, m in turns) / b_s,
            "gemm_flops_per_s_by_workers": {str(w): sum(s * m[(p, w)] for s, _, m in turns) / b_s for w in by_workers},
        }
    return {
        "b_passes_s": b_s,
        "gemm_sizes": sorted(sizes_used),
        **by_precision[next(iter(rates))],
        "by_precision": by_precision,
        "turns": len(turns),
        "forward_passes": sum(p for _, p, _ in turns),
    }
