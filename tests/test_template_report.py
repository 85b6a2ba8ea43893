"""``bioident templates report``: which voice templates a caller meets at the unknown-channel threshold (made
over the phone before front end 2, or before channels were recorded), opened under their data keys, audited."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.embedding import Embedding
from biometrics.voice.templates import VoiceTemplate
from tests.operations_fixtures import _cli, _deployment, _rows

pytestmark = pytest.mark.usefixtures("clean_service_environment")

MODEL = "ecapa-test-model"


def _embeddings(seed: int) -> list[Embedding]:
    vectors = np.random.default_rng(seed).normal(size=(3, 192)).astype(np.float32)
    return [Embedding(v / np.linalg.norm(v), MODEL) for v in vectors]


def _with_front_end(data: bytes, front_end: int) -> bytes:
    """The same template as an older release wrote it (its header's front end)."""
    (n,) = struct.unpack_from("<I", data, 5)
    header = json.loads(data[9 : 9 + n])
    head = json.dumps({**header, "front_end": front_end}).encode()
    return data[:5] + struct.pack("<I", len(head)) + head + data[9 + n :]


def _format_1(seed: int) -> bytes:
    """A template from before channels were recorded: one mean."""
    mean = np.mean([e.vector for e in _embeddings(seed)], axis=0).astype("<f8")
    head = json.dumps({"fingerprint": MODEL, "count": 3, "dim": 192}).encode()
    return b"BIVT1" + struct.pack("<I", len(head)) + head + mean.tobytes()


def _store(ctx, tenant: str, token: str, plaintext: bytes) -> None:
    from service.protected import data_key, seal_into
    from service.store.models import Subject, Template

    with ctx.db.session() as session:
        session.add(Subject(token=token, tenant_id=tenant))
        session.flush()
        key = data_key(session, ctx.keyring, token, "voice", create=True)
        row = Template(subject_token=token, tenant_id=tenant, modality="voice", model_fingerprint=MODEL,
                       sealed=b"", sample_count=3)  # fmt: skip
        session.add(row)
        session.flush()
        seal_into(row, key, plaintext)


def test_the_report_names_the_templates_held_to_the_unknown_channel_threshold(
    database_url, tmp_path, monkeypatch, capsys
):
    from service.store.models import Tenant

    data_dir = tmp_path / "data"
    ctx = _deployment(database_url, data_dir)
    with ctx.db.session() as session:
        session.add_all([Tenant(id="bank", name="bank"), Tenant(id="shop", name="shop")])
    wideband = VoiceTemplate.from_embeddings(_embeddings(1), AudioChannel.WIDEBAND).to_bytes()
    telephone = VoiceTemplate.from_embeddings(_embeddings(2), AudioChannel.TELEPHONE).to_bytes()
    _store(ctx, "bank", "sub_wideband", wideband)
    _store(ctx, "bank", "sub_phone_now", telephone)
    _store(ctx, "bank", "sub_phone_before", _with_front_end(telephone, 1))
    _store(ctx, "shop", "sub_format_1", _format_1(3))
    ctx.db.engine.dispose()

    code, out, err = _cli(monkeypatch, capsys, data_dir, "templates", "report", "--list", url=database_url)
    assert code == 0, err
    assert "4 voice templates" in out and "telephone 1" in out and "unknown 2" in out and "wideband 1" in out
    listed = sorted(line.split("\t") for line in out.splitlines() if "\t" in line)
    assert listed == [["bank", "sub_phone_before"], ["shop", "sub_format_1"]]

    code, out, err = _cli(monkeypatch, capsys, data_dir, "templates", "report", "--tenant", "shop", url=database_url)
    assert code == 0 and "1 voice templates" in out and "\t" not in out, (out, err)
    entries = _rows(database_url, "SELECT action, details FROM audit_entries WHERE action = 'voice.templates.report'")
    assert len(entries) == 2  # opening every template is audited
    assert all("sub_" not in str(details) for _, details in entries)  # counts only, no customer


def test_an_unknown_tenant_is_refused_plainly(database_url, tmp_path, monkeypatch, capsys):
    _deployment(database_url, tmp_path / "data").db.engine.dispose()
    code, out, err = _cli(
        monkeypatch, capsys, tmp_path / "data", "templates", "report", "--tenant", "nowhere", url=database_url
    )
    assert code != 0 and "no tenant nowhere" in err and "Traceback" not in err
