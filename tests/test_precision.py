"""bf16 embeddings where the CPU has native bf16 matrix units: the same embeddings, so the same decisions.

The session's ``embedder`` runs under BIOIDENT_PRECISION=auto: bf16 on a CPU with AMX-BF16 or AVX512-BF16,
fp32 elsewhere. These tests compare it with ``fp32_embedder`` on a subset of the shared speech; every
shared LibriSpeech utterance, and the accuracy audits in both precisions, are compared by
``benchmarks/precision_fidelity.py`` (figures in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from biometrics.cli import EXIT_INPUT_ERROR, main
from biometrics.voice.model import precision
from biometrics.voice.model.precision import cpuinfo_flags, has_native_bf16, resolve_precision
from tests.conftest import COHORT_DIR, REPO

# Feature flags as /proc/cpuinfo lists them (abridged).
ZEN3 = {"fpu", "sse4_2", "avx", "avx2", "fma", "sha_ni"}
ICE_LAKE = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_vbmi2"}  # bf16 only emulated
ZEN4 = {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8"}
GRAVITON3 = {"fp", "asimd", "sve", "bf16", "i8mm"}  # Arm: not detected as native, so fp32

FIDELITY_MIN_COSINE = 0.9999


@pytest.mark.parametrize(
    ("flags", "native"),
    [(ZEN3, False), (ICE_LAKE, False), (GRAVITON3, False), (ZEN4, True), (SAPPHIRE_RAPIDS, True), (set(), False)],
    ids=["zen3", "ice-lake", "graviton3", "zen4", "sapphire-rapids", "none"],
)
def test_auto_picks_bf16_only_on_cpus_with_native_bf16_matrix_instructions(flags, native):
    assert has_native_bf16(flags) is native
    assert resolve_precision("auto", flags=flags) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", flags=flags) == "fp32"
    assert resolve_precision("bf16", flags=flags) == "bf16"  # forced: emulated where not native


def test_auto_reads_this_machines_flags_and_stays_fp32_off_the_cpu(monkeypatch):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(ZEN3))
    assert resolve_precision("auto") == "fp32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(ZEN4))
    assert resolve_precision("auto") == "bf16"
    assert resolve_precision("auto", device="cuda") == resolve_precision("bf16", device="cuda") == "fp32"
    with pytest.raises(ValueError, match="auto, fp32 or bf16"):
        resolve_precision("fp16")  # type: ignore[arg-type]


def test_the_fidelity_benchmark_refuses_to_emulate_bf16_for_hours_unless_asked(monkeypatch):
    from benchmarks import precision_fidelity

    monkeypatch.setattr(precision_fidelity, "cpu_flags", lambda: frozenset(ZEN3))
    with pytest.raises(SystemExit, match="no native bf16.*--emulated-bf16"):
        precision_fidelity.main(["--skip-audits"])
    monkeypatch.setattr(precision_fidelity, "CoreSettings", _start)  # past the check, the run would start here
    for argv, flags in ((["--skip-audits", "--emulated-bf16"], ZEN3), (["--skip-audits"], ZEN4)):
        monkeypatch.setattr(precision_fidelity, "cpu_flags", lambda flags=flags: frozenset(flags))
        with pytest.raises(_Started):
            precision_fidelity.main(argv)


class _Started(Exception):
    pass


def _start(*args: object, **kwargs: object) -> None:
    raise _Started


def test_the_flags_come_from_the_first_processor_of_proc_cpuinfo():
    text = "processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    assert cpuinfo_flags(text) == {"fpu", "avx512_bf16", "amx_tile"}
    assert cpuinfo_flags("processor\t: 0\nFeatures\t: fp asimd bf16\n") == {"fp", "asimd", "bf16"}
    assert cpuinfo_flags("") == frozenset()
    assert isinstance(precision.cpu_flags(), frozenset)


def test_an_unknown_precision_is_refused_with_a_message(monkeypatch, capsys):
    monkeypatch.setenv("BIOIDENT_PRECISION", "fp16")
    assert main(["model", "info"]) == EXIT_INPUT_ERROR
    err = capsys.readouterr().err
    assert "BIOIDENT_PRECISION" in err and "'bf16'" in err and "Traceback" not in err


# A small randomly initialised ECAPA, sped up in bf16, against SpeechBrain's fp32 modules. Run in a child
# process with oneDNN held to AVX2, so torch computes the bf16 products without native bf16 instructions (the
# eager path: where oneDNN has bf16 kernels, the default, tests/test_onednn_bf16.py covers them).
EMULATED_BF16_CHECK = textwrap.dedent(
    """
    import copy, json, sys
    import torch
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    from biometrics.voice.model.cpu_kernels import make_segment_aware, speed_up_for_cpu
    from tests.model_helpers import randomise_batch_norms, relative_errors

    torch.manual_seed(1)
    model = ECAPA_TDNN(input_size=20, channels=[64, 64, 64, 64, 192], attention_channels=16, lin_neurons=24,
                       res2net_scale=4).eval()
    randomise_batch_norms(model, torch.Generator().manual_seed(2))
    expected_module = copy.deepcopy(model)
    changes = {**make_segment_aware(model), **speed_up_for_cpu(model, torch.bfloat16, onednn=False)}
    x, lengths = torch.randn(2, 60, 20), torch.tensor([1.0, 0.75])
    with torch.inference_mode():
        got, expected = model(x, lengths), expected_module(x, lengths)
        elsewhere = expected_module(torch.randn(2, 60, 20), lengths)
    error = float(relative_errors(got, expected, elsewhere).max())
    print(json.dumps({"changes": changes, "dtype": str(got.dtype), "max_relative_error": error}))
    """
)


def test_bf16_runs_where_torch_has_to_emulate_it():
    import json
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "ONEDNN_MAX_CPU_ISA": "AVX2", "ONEDNN_VERBOSE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", EMULATED_BF16_CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    # oneDNN logs every primitive it runs: none may use AMX or AVX-512 bf16 instructions.
    assert not [line for line in lines if line.startswith("onednn_verbose") and ("amx" in line or "bf16:" in line)]
    result = json.loads(lines[-1])
    # The trunk's convolutions (first layer, 3 x (2 + 3 Res2Net scales), MFA) take bf16; the output is fp32.
    assert result["changes"]["bf16_convolutions"] == 1 + 3 * (2 + 3) + 1
    assert result["dtype"] == "torch.float32"
    # |error| / |how far the output moves for other input| (a random model's cosines say nothing: model_helpers)
    assert result["max_relative_error"] <= 0.1


def test_a_bf16_ecapa_keeps_the_gates_and_head_in_fp32_and_pools_with_bf16_products():
    import torch
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    from biometrics.voice.model.cpu_kernels import GemmConv1d, make_segment_aware, speed_up_for_cpu

    model = ECAPA_TDNN(input_size=20, channels=[32, 32, 32, 32, 96], attention_channels=8, lin_neurons=12).eval()
    fp32_model = copy.deepcopy(model)
    make_segment_aware(model)
    changes = speed_up_for_cpu(model, torch.bfloat16, onednn=False)  # eager (oneDNN: tests/test_onednn_bf16.py)
    make_segment_aware(fp32_model)
    assert speed_up_for_cpu(fp32_model)["bf16_convolutions"] == 0
    kept = {name for name, m in model.named_modules() if isinstance(m, GemmConv1d) and m.operand_dtype == torch.float32}
    assert kept and all(".se_block." in name or name.startswith(("asp.", "fc.")) for name in kept)
    assert changes["gemm_convolutions"] - changes["bf16_convolutions"] == len(kept)
    # The pooling runs its own two frame-by-frame products: on bf16 operands with the trunk's, else fp32.
    assert model.asp._frame_weight_t.dtype == model.asp._attention_weight.dtype == torch.bfloat16
    assert fp32_model.asp._frame_weight_t.dtype == torch.float32 and fp32_model.asp._attention_weight is None


@pytest.fixture(scope="module")
def fidelity_files(test_other_files) -> list:
    """Two utterances of each test-other speaker and eight cohort speakers: short to long, 16 kHz."""
    cohort = sorted(COHORT_DIR.glob("*.flac"))
    return test_other_files[::5] + cohort[:: len(cohort) // 8][:8]


@pytest.mark.model
@pytest.mark.parametrize("channel", ["clean", "telephone"])
def test_bf16_and_fp32_embeddings_of_real_speech_agree(embedder, fp32_embedder, core_settings, fidelity_files, channel):
    from biometrics.voice.pipeline import Channel, analyse_files

    got = analyse_files(embedder, fidelity_files, core_settings, Channel(channel))
    reference = analyse_files(fp32_embedder, fidelity_files, core_settings, Channel(channel))
    cosines = [
        float(np.dot(a.embedding.vector, b.embedding.vector))
        for a, b in zip(got, reference, strict=True)
        if b.embedding is not None
    ]
    assert len(cosines) >= len(fidelity_files) - 2
    assert min(cosines) >= FIDELITY_MIN_COSINE, f"{embedder.precision} vs fp32: {sorted(cosines)[:3]}"
    assert all(a.measures == b.measures for a, b in zip(got, reference, strict=True))  # VAD and front end: fp32


@pytest.mark.model
def test_a_template_enrolled_in_one_precision_verifies_in_the_other(embedder, fp32_embedder, test_other_files):
    """Precision is recorded beside the fingerprint, not in it: templates stay interchangeable."""
    from biometrics.voice.audio import read_audio_file
    from biometrics.voice.templates import VoiceTemplate

    assert embedder.fingerprint == fp32_embedder.fingerprint
    assert embedder.precision == resolve_precision("auto")
    speaker, other = test_other_files[:4], test_other_files[10:12]
    waves = [read_audio_file(p) for p in speaker + other]
    by_precision = {e.precision: [s.embedding for s in e.analyse(waves)] for e in (embedder, fp32_embedder)}
    for enrolled_in, probed_in in [(embedder.precision, "fp32"), ("fp32", embedder.precision)]:
        template = VoiceTemplate.from_embeddings(by_precision[enrolled_in][:3])
        same = {p: float(np.dot(template.vector, by_precision[p][3].vector)) for p in (enrolled_in, probed_in)}
        others = [float(np.dot(template.vector, e.vector)) for e in by_precision[probed_in][4:]]
        assert abs(same[probed_in] - same[enrolled_in]) < 1e-3
        assert same[probed_in] > 0.5 > max(others)


def test_an_audit_in_one_precision_never_reads_analyses_cached_in_the_other():
    from biometrics.evaluation.cache import cache_key

    args = ("0" * 64, "clean", "ecapa-voxceleb-x", 120.0)
    assert cache_key(*args, "bf16") != cache_key(*args, "fp32") == cache_key(*args)
