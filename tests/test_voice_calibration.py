"""A calibration file from an audit changes the service's threshold and adds calibrated scores."""

from __future__ import annotations

import itertools

import pytest
from fastapi.testclient import TestClient

from biometrics.errors import IncompatibleModel
from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.calibration_fit import calibrate
from biometrics.scoring.scorer import Scorer
from tests.audit_reports import report_with_scores
from tests.conftest import TEST_OTHER, speaker_of
from tests.voice_helpers import GENUINE, SPEAKER, _audio, _consent, _enrol

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def cosine_report(test_other_files, clean_samples, embedder) -> AccuracyReport:
    """An audit report whose scores, which calibration reads, are real scores of the test speakers."""
    genuine, impostor = [], []
    for (fa, sa), (fb, sb) in itertools.combinations(zip(test_other_files, clean_samples, strict=True), 2):
        score = Scorer().score(sa.embedding, sb.embedding)
        (genuine if speaker_of(fa) == speaker_of(fb) else impostor).append(score)
    return report_with_scores(
        genuine, impostor, method="cosine", model_fingerprint=embedder.fingerprint, dataset_sha256="0" * 64
    )


def _service(tmp_path, database_url, embedder, calibration_file):
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        _env_file=None, data_dir=tmp_path, database_url=database_url, calibration_file=calibration_file
    )
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    return ctx, bootstrap_admin(ctx.db), create_app(ctx)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_calibration_file_sets_the_threshold_and_adds_llr(cosine_report, embedder, tmp_path, database_url):
    calibration = calibrate(cosine_report, target_fmr=0.001)
    path = tmp_path / "calibration.json"
    calibration.save(path)
    assert calibration.threshold != Scorer().threshold
    ctx, admin_key, app = _service(tmp_path, database_url, embedder, path)
    with TestClient(app) as http:
        from tests.service_fixtures import Api

        api = Api(http=http, ctx=ctx, admin_key=admin_key, data_dir=tmp_path)
        api.tenant("bank")
        ivr, portal = api.client("bank", "ivr"), api.client("bank", "portal")
        _consent(api, portal)
        assert _enrol(api, ivr).status_code == 201
        result = http.post(
            "/v1/voice/verify",
            data={"reference": "ACC-1001"},
            files=[_audio(TEST_OTHER / SPEAKER / GENUINE)],
            headers=api.headers(ivr),
        ).json()
    assert result["threshold"] == pytest.approx(calibration.threshold)
    assert result["llr"] == pytest.approx(calibration.llr(result["score"]), abs=1e-3)
    assert result["llr"] > 0 and result["decision"] == "accept"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_calibration_from_another_model_is_refused(cosine_report, embedder, tmp_path, database_url):
    other = calibrate(cosine_report.model_copy(update={"model_fingerprint": "ecapa-voxceleb-another"}), target_fmr=0.01)
    path = tmp_path / "calibration.json"
    other.save(path)
    with pytest.raises(IncompatibleModel):
        _service(tmp_path, database_url, embedder, path)
