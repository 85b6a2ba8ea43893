"""The vault: tokenized IDs, the keyring and envelope encryption. Fast: no model, no database."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import stat

import pytest

from service.vault import (
    ActiveKeyRetirement,
    DecryptionError,
    InvalidReference,
    Keyring,
    KeyringInvalid,
    KeyringPermissionError,
    KeyringReadOnly,
    KeyStatus,
    KeyVersionRetired,
    KeyVersionUnavailable,
    TemplateBinding,
    VaultError,
    WrappedKey,
    data_key_context,
    is_subject_token,
    new_data_key,
    open_sealed,
    rewrap,
    seal,
    subject_token,
    unwrap_data_key,
    wrap_data_key,
)

PEPPER = bytes(range(32))
OTHER_PEPPER = bytes(range(1, 33))
TEMPLATE = b"\x00\x01embedding-bytes\xff" * 8
BINDING = TemplateBinding("sub_" + "a" * 64, "voice", "tpl_1", "ecapa-sha256:1234")
CONTEXT = data_key_context(BINDING.subject_token, "voice")


@pytest.fixture()
def keyring_path(tmp_path):
    return tmp_path / "keyring.json"


@pytest.fixture()
def keyring(keyring_path) -> Keyring:
    return Keyring.load_or_create(keyring_path)


def _secrets_in_file(path) -> list[bytes]:
    document = json.loads(path.read_text())
    encoded = [document["pepper"]] + [k["key"] for k in document["keks"] if "key" in k]
    return [base64.b64decode(e) for e in encoded]


def _renderings(secret: bytes) -> list[str]:
    return [base64.b64encode(secret).decode(), secret.hex(), repr(secret)[2:-1]]


# --- tokenized IDs -----------------------------------------------------------------------------


def test_the_same_customer_always_gets_the_same_token():
    token = subject_token(PEPPER, "bank-a", "CUST-0042")
    assert token == subject_token(PEPPER, "bank-a", "CUST-0042")
    assert is_subject_token(token)
    assert token.startswith("sub_") and len(token) == 4 + 64


def test_the_same_reference_at_another_tenant_is_another_subject():
    assert subject_token(PEPPER, "bank-a", "CUST-0042") != subject_token(PEPPER, "bank-b", "CUST-0042")


def test_tokens_cannot_be_linked_without_the_pepper():
    assert subject_token(PEPPER, "bank-a", "CUST-0042") != subject_token(OTHER_PEPPER, "bank-a", "CUST-0042")


def test_tenant_and_reference_cannot_be_shifted_into_each_other():
    assert subject_token(PEPPER, "ab", "c") != subject_token(PEPPER, "a", "bc")


def test_only_surrounding_whitespace_is_ignored_in_a_reference():
    assert subject_token(PEPPER, "bank-a", "  CUST-0042\n") == subject_token(PEPPER, "bank-a", "CUST-0042")
    assert subject_token(PEPPER, "bank-a", "cust-0042") != subject_token(PEPPER, "bank-a", "CUST-0042")


def test_a_token_never_contains_the_reference():
    reference = "deadbeef42"  # hex-looking on purpose
    token = subject_token(PEPPER, "bank-a", reference)
    assert reference not in token


@pytest.mark.parametrize("reference", ["", "   ", "\t\n"])
def test_an_empty_reference_is_refused(reference):
    with pytest.raises(InvalidReference) as caught:
        subject_token(PEPPER, "bank-a", reference)
    assert isinstance(caught.value, ValueError)
    assert caught.value.code == "subject_reference_invalid"


# --- keyring -----------------------------------------------------------------------------------


def test_a_new_keyring_file_is_readable_only_by_its_owner(keyring, keyring_path):
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert keyring.active_version == 1
    assert [v.status for v in keyring.versions()] == [KeyStatus.ACTIVE]


def test_a_keyring_file_is_loaded_again_not_replaced(keyring, keyring_path):
    again = Keyring.load_or_create(keyring_path)
    assert again.pepper == keyring.pepper
    data_key = new_data_key()
    assert unwrap_data_key(again, wrap_data_key(keyring, data_key, context=CONTEXT), context=CONTEXT) == data_key


def test_a_group_readable_keyring_is_refused(keyring, keyring_path):
    os.chmod(keyring_path, 0o640)
    with pytest.raises(KeyringPermissionError, match="chmod 600"):
        Keyring.load_or_create(keyring_path)


def test_adding_a_version_makes_it_active_and_keeps_the_file_private(keyring, keyring_path):
    assert keyring.add_version() == 2
    assert keyring.active_version == 2
    assert {v.version: v.status for v in keyring.versions()} == {1: KeyStatus.DECRYPT_ONLY, 2: KeyStatus.ACTIVE}
    assert stat.S_IMODE(keyring_path.stat().st_mode) == 0o600
    assert Keyring.load_or_create(keyring_path).active_version == 2
    assert not [p for p in keyring_path.parent.iterdir() if p != keyring_path]  # no temp files left


def test_the_active_version_cannot_be_retired(keyring):
    with pytest.raises(ActiveKeyRetirement):
        keyring.retire(keyring.active_version)
    assert keyring.versions()[0].status is KeyStatus.ACTIVE


def test_a_retired_version_can_no_longer_unwrap(keyring, keyring_path):
    wrapped = wrap_data_key(keyring, new_data_key(), context=CONTEXT)
    old_key = base64.b64encode(_secrets_in_file(keyring_path)[1]).decode()
    keyring.add_version()
    keyring.retire(1)

    with pytest.raises(KeyVersionRetired) as caught:  # gone for good: what it wraps opens for nobody
        unwrap_data_key(keyring, wrapped, context=CONTEXT)
    assert caught.value.version == 1
    reloaded = Keyring.load_or_create(keyring_path)
    with pytest.raises(KeyVersionUnavailable):
        unwrap_data_key(reloaded, wrapped, context=CONTEXT)
    assert old_key not in keyring_path.read_text()
    assert reloaded.versions()[0].status is KeyStatus.RETIRED


def test_an_unknown_version_is_named_by_number_only(keyring, keyring_path):
    with pytest.raises(KeyVersionUnavailable, match="version 7 ") as caught:
        unwrap_data_key(keyring, WrappedKey(7, b"\x00" * 60), context=CONTEXT)
    assert not isinstance(caught.value, KeyVersionRetired)  # newer than this keyring: reload it, not lost
    keyring.add_version()
    keyring.add_version()
    document = json.loads(keyring_path.read_text())
    document["keks"] = [k for k in document["keks"] if k["version"] != 2]  # destroyed in the secret store
    with pytest.raises(KeyVersionRetired):  # older than the active one and not held: opens for nobody
        unwrap_data_key(Keyring.from_document(json.dumps(document)), WrappedKey(2, b"\x00" * 60), context=CONTEXT)


def test_an_env_keyring_is_read_only_for_rotation(keyring, keyring_path):
    from_env = Keyring.from_env({"BIOIDENT_KEYRING": keyring_path.read_text()})
    assert from_env.pepper == keyring.pepper
    data_key = new_data_key()
    assert unwrap_data_key(from_env, wrap_data_key(keyring, data_key, context=CONTEXT), context=CONTEXT) == data_key
    with pytest.raises(KeyringReadOnly, match="secret store"):
        from_env.add_version()
    with pytest.raises(KeyringReadOnly):
        from_env.retire(1)


def test_a_missing_or_malformed_keyring_is_refused_without_echoing_it(keyring_path):
    with pytest.raises(KeyringInvalid):
        Keyring.from_env({})
    secret_looking = '{"format": "bioident-keyring/1", "pepper": "c2VjcmV0LXBlcHBlcg==", "keks": []}'
    with pytest.raises(KeyringInvalid) as caught:
        Keyring.from_env({"BIOIDENT_KEYRING": secret_looking})
    assert "c2VjcmV0" not in str(caught.value)


def test_key_material_never_appears_in_reprs(keyring, keyring_path):
    data_key = new_data_key()
    wrapped = wrap_data_key(keyring, data_key, context=CONTEXT)
    shown = " ".join(
        [repr(keyring), str(keyring), repr(wrapped), str(wrapped), repr(keyring.versions()), repr(keyring._keks)]
        + [repr(data_key), str(data_key)]
    )
    for secret in [*_secrets_in_file(keyring_path), data_key._material, wrapped.blob]:
        for rendering in _renderings(secret):
            assert rendering not in shown


# --- envelope encryption -----------------------------------------------------------------------


def test_a_sealed_template_opens_with_its_key_and_binding():
    data_key = new_data_key()
    sealed = seal(data_key, TEMPLATE, aad=BINDING)
    assert TEMPLATE not in sealed
    assert open_sealed(data_key, sealed, aad=BINDING) == TEMPLATE
    assert seal(data_key, TEMPLATE, aad=BINDING) != sealed  # fresh nonce each time


@pytest.mark.parametrize("moved_field", ["subject_token", "modality", "template_id", "model_fingerprint"])
def test_a_sealed_template_moved_to_another_row_does_not_open(moved_field):
    data_key = new_data_key()
    sealed = seal(data_key, TEMPLATE, aad=BINDING)
    elsewhere = dataclasses.replace(BINDING, **{moved_field: getattr(BINDING, moved_field) + "x"})
    with pytest.raises(DecryptionError):
        open_sealed(data_key, sealed, aad=elsewhere)


def test_binding_fields_cannot_be_shifted_into_each_other():
    data_key = new_data_key()
    sealed = seal(data_key, TEMPLATE, aad=TemplateBinding("ab", "c", "t", "m"))
    with pytest.raises(DecryptionError):
        open_sealed(data_key, sealed, aad=TemplateBinding("a", "bc", "t", "m"))


def test_another_subjects_data_key_does_not_open_a_template():
    sealed = seal(new_data_key(), TEMPLATE, aad=BINDING)
    with pytest.raises(DecryptionError) as caught:
        open_sealed(new_data_key(), sealed, aad=BINDING)
    assert str(caught.value) == "ciphertext does not match its binding or key"
    assert isinstance(caught.value, VaultError) and caught.value.code == "vault_decryption_failed"


def test_any_altered_or_missing_byte_is_detected():
    data_key = new_data_key()
    sealed = seal(data_key, TEMPLATE, aad=BINDING)
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(DecryptionError):
            open_sealed(data_key, bytes(tampered), aad=BINDING)
    for cut in (0, 1, 13, len(sealed) - 1):
        with pytest.raises(DecryptionError):
            open_sealed(data_key, sealed[:cut], aad=BINDING)


def test_a_wrapped_key_moved_to_another_subject_does_not_unwrap(keyring):
    wrapped = wrap_data_key(keyring, new_data_key(), context=CONTEXT)
    with pytest.raises(DecryptionError):
        unwrap_data_key(keyring, wrapped, context=data_key_context("sub_" + "b" * 64, "voice"))
    with pytest.raises(DecryptionError):
        unwrap_data_key(keyring, wrapped, context=data_key_context(BINDING.subject_token, "fingerprint"))
    tampered = WrappedKey(wrapped.kek_version, wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1]))
    with pytest.raises(DecryptionError):
        unwrap_data_key(keyring, tampered, context=CONTEXT)


def test_rotation_rewraps_data_keys_without_touching_templates(keyring):
    data_key = new_data_key()
    wrapped = wrap_data_key(keyring, data_key, context=CONTEXT)
    sealed = seal(data_key, TEMPLATE, aad=BINDING)

    keyring.add_version()
    rewrapped = rewrap(keyring, wrapped, context=CONTEXT)
    keyring.retire(1)

    assert rewrapped.kek_version == 2
    recovered = unwrap_data_key(keyring, rewrapped, context=CONTEXT)
    assert recovered == data_key
    assert open_sealed(recovered, sealed, aad=BINDING) == TEMPLATE  # same sealed bytes, never re-encrypted


@pytest.mark.parametrize("version", [0, -1, 2**31, 2**63, "1", 1.0])
def test_a_key_version_outside_the_databases_integers_is_refused(keyring, keyring_path, version):
    document = json.loads(keyring_path.read_text())
    document["keks"][0]["version"] = version
    with pytest.raises(KeyringInvalid, match="'version' must be an integer from 1 to 2147483647"):
        Keyring.from_env({"BIOIDENT_KEYRING": json.dumps(document)})


def test_keys_retire_refuses_a_version_no_database_can_hold(monkeypatch, capsys):
    from service.cli import main

    for version in ("99999999999999999999999", "0", "x"):
        with pytest.raises(SystemExit) as exited:
            main(["keys", "retire", version])
        assert exited.value.code == 2 and "a key version is an integer from 1 to" in capsys.readouterr().err


def test_a_directory_named_as_the_keyring_is_refused_by_name(tmp_path):
    with pytest.raises(KeyringInvalid, match=f"keyring file {tmp_path} is not a regular file"):
        Keyring.load(tmp_path)
