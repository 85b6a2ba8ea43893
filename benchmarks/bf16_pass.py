"""Where a bf16 model pass on oneDNN spends its time, stage by stage, and what of it runs in fp32.

Run from the repository root::

    .venv/bin/python -m benchmarks.bf16_pass [--utterances N] [--per-pass K] [--rounds R] [--threads T]
                                              [--seed S] [--out PATH] [--data DIR]

Issue 20 asks that whatever stays in fp32 in the bf16 path be measured and said. This runs the production
encoder (``SpeakerEncoder``, ``precision="bf16"``) where it takes the oneDNN pass
(``biometrics/voice/model/onednn_bf16.py``) on 3-8 s crops of LibriSpeech test-other, ``--per-pass``
utterances packed into each pass as the service packs them, on ``--threads`` cores (default one: a pass as
one of ``concurrent_passes`` runs it), and times each piece of the plan exclusively (a piece's time
excludes the timed pieces it calls):

- products (bf16 on oneDNN, bias and ReLU fused), by layer: the first layer, the SE-Res2Net blocks' 1x1
  layers, their Res2Net scales, the MFA, the pooling's frame layer and attention;
- fp32 statistics: the pooling's moments, its attention-weighted moments (softmax included), its context
  and hidden layer, the squeeze-excitation gates and the head (fp32 products of one column per utterance);
- bf16 element-wise work: reflect padding with the Res2Net input sums; each SE-Res2Net block's means,
  residual writes and copies; the pass's buffers, packing and Python.

Figures are wall milliseconds per 1,000 feature frames (10 s of audio) and shares of the pass, the best of
``--rounds`` rounds over all packs. A benchmark, not a test: it asserts no time. Results go to a table on
stdout and to JSON (default ``benchmarks/results/bf16_pass.json``). Where oneDNN has no bf16 kernels the
encoder runs another path and this exits with the reason.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from benchmarks.common import RESULTS_DIR, TEST_OTHER, write_results
from benchmarks.embedding_speed import crop_utterances
from benchmarks.host import ForeignLoad, cpu_model
from biometrics.torch_thread import run_on_torch_thread
from biometrics.voice.model import onednn_bf16
from biometrics.voice.model.onednn_bf16 import OneDnnPlan
from biometrics.voice.model.precision import NATIVE_BF16_FLAGS, cpu_flags

DEFAULT_OUT = RESULTS_DIR / "bf16_pass.json"
FRAMES_PER_FIGURE = 1000

# Stage -> what it computes in, in the order of the table.
STAGES = {
    "products: first layer": "bf16 oneDNN",
    "products: SE-Res2Net 1x1 layers": "bf16 oneDNN",
    "products: Res2Net scales": "bf16 oneDNN",
    "products: MFA": "bf16 oneDNN",
    "products: pooling frame layer and attention": "bf16 oneDNN",
    "pooling moments": "fp32",
    "pooling attention-weighted moments (softmax)": "fp32",
    "squeeze-excitation gates and head": "fp32",
    "padding and Res2Net sums": "bf16 element-wise",
    "SE-Res2Net means, residual writes, copies": "bf16 element-wise, fp32 means",
    "pooling context and hidden layer": "fp32",
    "buffers, packing, Python (the rest of the pass)": "-",
}


def product_roles(plan: OneDnnPlan) -> dict[int, str]:
    """Each fused layer of ``plan`` (by id) -> its stage."""
    roles = {id(plan.first): "products: first layer", id(plan.mfa): "products: MFA"}
    roles[id(plan.frame_layer)] = roles[id(plan.attention)] = "products: pooling frame layer and attention"
    for block in plan.blocks:
        roles[id(block.tdnn1)] = roles[id(block.tdnn2)] = "products: SE-Res2Net 1x1 layers"
        roles.update((id(layer), "products: Res2Net scales") for layer in block.res2net)
    return roles


class ExclusiveClock:
    """Wall time of nested calls, each charged to its stage minus the timed calls inside it."""

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.now = now
        self.seconds: Counter[str] = Counter()
        self._inner: list[float] = []  # per open call: time spent in timed calls inside it

    def timed(self, stage: Callable[..., str], fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            self._inner.append(0.0)
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = self.now() - start
                inner = self._inner.pop()
                self.seconds[stage(*args)] += elapsed - inner
                if self._inner:
                    self._inner[-1] += elapsed

        return wrapper


@contextmanager
def stage_clock(plan: OneDnnPlan) -> Iterator[ExclusiveClock]:
    """Times the plan's pieces while inside the block (the module's functions and classes, patched and put back)."""
    roles = product_roles(plan)
    clock = ExclusiveClock()
    module = onednn_bf16
    patches: list[tuple[object, str, str]] = [
        (module.FusedLayer, "__call__", ""),
        (module.Dense, "__call__", "squeeze-excitation gates and head"),
        (module._SEBlock, "__call__", "SE-Res2Net means, residual writes, copies"),
        (module.OneDnnPlan, "_pool", "pooling context and hidden layer"),
        (module.OneDnnPlan, "__call__", "buffers, packing, Python (the rest of the pass)"),
        (module, "_padded", "padding and Res2Net sums"),
        (module, "moments", "pooling moments"),
        (module, "weighted_moments", "pooling attention-weighted moments (softmax)"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, stage in patches:
            if owner is module.FusedLayer:
                label = lambda layer, *_: roles[id(layer)]  # noqa: E731
            else:
                label = lambda *_, stage=stage: stage  # noqa: E731
            setattr(owner, name, clock.timed(label, getattr(owner, name)))
        yield clock
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def main(argv: list[str] | None = None) -> dict:
    return run_on_torch_thread(_main, argv)


def _main(argv: list[str] | None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--utterances", type=int, default=24, help="number of 3-8 s crops (default 24)")
    parser.add_argument("--per-pass", type=int, default=3, help="utterances packed into each pass (default 3)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds over all packs; the best counts")
    parser.add_argument("--threads", type=int, default=1, help="cores a pass runs on (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data", type=Path, default=TEST_OTHER, help="LibriSpeech test-other directory")
    args = parser.parse_args(argv)
    for name in ("utterances", "per_pass", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    from biometrics.settings import CoreSettings
    from biometrics.voice.model.ecapa import SpeakerEncoder
    from biometrics.voice.model.weights import resolve_weights

    encoder = SpeakerEncoder(resolve_weights(CoreSettings(_env_file=None)), precision="bf16")
    if encoder.kernels != "onednn":
        native = sorted(NATIVE_BF16_FLAGS & cpu_flags()) or ["none"]
        raise SystemExit(
            f"the bf16 pass here runs on {encoder.kernels}, not oneDNN (native bf16 flags: {', '.join(native)}; "
            "oneDNN bf16 kernels: "
            f"{'yes' if onednn_bf16.onednn_bf16_available() else 'no'}): nothing of the oneDNN pass to time"
        )
    plan = encoder.classifier.mods.embedding_model._plan
    utterances, _ = crop_utterances(args.data, args.utterances, args.seed)
    features = [encoder.features(u) for u in utterances]
    packs = [features[i : i + args.per_pass] for i in range(0, len(features), args.per_pass)]
    frames = sum(int(f.shape[0]) for f in features)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for pack in packs:  # every pack's widths built once before timing (oneDNN keeps a primitive per shape)
            encoder.embed_features(pack)
        rounds = []
        for _ in range(args.rounds):
            with ForeignLoad() as load, stage_clock(plan) as clock:
                start = time.perf_counter()
                for pack in packs:
                    encoder.embed_features(pack)
                wall = time.perf_counter() - start
            rounds.append({"wall_s": wall, "stages_s": dict(clock.seconds), "foreign_load_cores": load.cores})
    finally:
        torch.set_num_threads(threads)

    best = min(rounds, key=lambda r: r["wall_s"])
    per = FRAMES_PER_FIGURE / frames * 1000.0  # seconds over all packs -> ms per 1,000 frames
    stages = {name: best["stages_s"].get(name, 0.0) for name in STAGES}
    stages["outside the model (packing rows, embedding norm)"] = best["wall_s"] - sum(stages.values())
    results = {
        "cpu_model": cpu_model(),
        "native_bf16_flags": sorted(NATIVE_BF16_FLAGS & cpu_flags()),
        "torch_version": torch.__version__,
        "threads": args.threads,
        "utterances": len(utterances),
        "per_pass": args.per_pass,
        "passes": len(packs),
        "frames": frames,
        "ms_per_1000_frames": best["wall_s"] * per,
        "audio_s_per_s": frames / 100.0 / best["wall_s"],
        "stages": {
            name: {"ms_per_1000_frames": s * per, "share": s / best["wall_s"], "computes_in": STAGES.get(name, "-")}
            for name, s in stages.items()
        },
        "shares": {
            kind: sum(s for name, s in stages.items() if STAGES.get(name, "-").startswith(kind)) / best["wall_s"]
            for kind in ("bf16 oneDNN", "fp32", "bf16 element-wise")
        },
        "rounds": rounds,
        "foreign_load_cores_best_round": best["foreign_load_cores"],
    }
    print_table(results)
    write_results(args.out, results)
    return results


def print_table(r: dict) -> None:
    print(
        f"{r['cpu_model']} (native bf16: {', '.join(r['native_bf16_flags']) or 'none'}), torch {r['torch_version']}, "
        f"{r['threads']} thread(s); {r['utterances']} utterances in {r['passes']} passes of {r['per_pass']}, "
        f"{r['frames']} frames; best round: {r['ms_per_1000_frames']:.1f} ms per 1,000 frames, "
        f"{r['audio_s_per_s']:.1f} audio s/s (other processes took {r['foreign_load_cores_best_round']:.2f} cores)\n"
    )
    print(f"{'stage':<50} {'ms / 1000 fr':>12} {'share':>7}  computes in")
    for name, stage in r["stages"].items():
        print(f"{name:<50} {stage['ms_per_1000_frames']:>12.2f} {stage['share']:>7.1%}  {stage['computes_in']}")
    print("\nshares: " + ", ".join(f"{kind} {share:.1%}" for kind, share in r["shares"].items()))


if __name__ == "__main__":
    main()
