"""Payment links without a matcher: card numbers refused, PINs only as argon2id hashes of a peppered PIN,
the payment token sealed under the fingerprint data key and destroyed with it by a withdrawal."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from service.auth import Principal, Role
from service.consent.records import ConsentChannel, ConsentTerms, record_consent
from service.consent.withdrawal import withdraw_consent
from service.errors import NotFound
from service.modality import Modality
from service.payment.cards import CardNumberRefused, looks_like_card_number, luhn_valid, refuse_card_number
from service.payment.links import link_of_card, open_payment_token, store_payment_link
from service.payment.pins import InvalidPin, hash_pin, pin_matches
from service.store.db import Database
from service.store.models import DataKey, PaymentLink, Tenant
from service.vault import Keyring

TOKEN = "sub_" + "d" * 64
OTHER = "sub_" + "e" * 64
ACTOR = Principal("cli_terminal", "shop", Role.TERMINAL)
PAYMENT_TOKEN = "tok_network_9f2c7a51e0"


@pytest.mark.parametrize(
    "value",
    [
        "4111111111111111",  # a test Visa number
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "5555555555554444",
        "378282246310005",  # 15-digit Amex
        "6011000990139424",
        "card 4111 1111 1111 1111 exp 12/29",
        "4000056655665556122",  # 19 digits, Luhn-valid
        "4111.1111.1111.1111",  # as exported elsewhere: dots, slashes, underscores, tabs, double spaces
        "4111/1111/1111/1111",
        "4111_1111_1111_1111",
        "4111\t1111\t1111\t1111",
        "4111  1111  1111  1111",
        "\uff14" + "\uff11" * 15,  # full-width digits
        "\u0664" + "\u0661" * 15,  # Arabic-Indic digits
    ],
)
def test_card_numbers_are_refused(value):
    assert looks_like_card_number(value)
    with pytest.raises(CardNumberRefused) as refused:
        refuse_card_number(value, "payment_token")
    assert refused.value.status == 422
    assert value not in str(refused.value) and "4111" not in refused.value.detail


@pytest.mark.parametrize(
    "value",
    [
        PAYMENT_TOKEN,
        "4111111111111112",  # fails the Luhn check
        "411111111111",  # 12 digits
        "41111111111111111111",  # 20 digits: no 13-19 digit run is a number by itself
        "tok-2026-12-04",
        "1234 5678",
    ],
)
def test_payment_tokens_are_not_taken_for_card_numbers(value):
    assert not looks_like_card_number(value)


def test_luhn():
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_pins_are_hashed_with_argon2id_and_bound_to_the_subject():
    pepper = Keyring.ephemeral().pepper
    stored = hash_pin(pepper, TOKEN, "4821")
    assert stored.startswith("$argon2id$") and "4821" not in stored
    assert pin_matches(pepper, TOKEN, "4821", stored)
    assert not pin_matches(pepper, TOKEN, "4822", stored)
    assert not pin_matches(pepper, OTHER, "4821", stored)  # a hash copied to another subject
    assert not pin_matches(Keyring.ephemeral().pepper, TOKEN, "4821", stored)  # the database alone is not enough
    assert not pin_matches(pepper, TOKEN, "48a1", stored) and not pin_matches(pepper, TOKEN, "4821", "garbage")
    for bad in ("123", "1234567", "12a4", "", "١٢٣٤"):
        with pytest.raises(InvalidPin):
            hash_pin(pepper, TOKEN, bad)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_withdrawal_destroys_the_payment_link_and_the_receipt_lists_it(database_url):
    keyring = Keyring.ephemeral()
    db = Database(database_url, audit_key=keyring.audit_key())
    try:
        with db.session() as session:
            session.add(Tenant(id="shop", name="shop"))
            session.flush()
            terms = ConsentTerms(Modality.FINGERPRINT, "payment", "v1", "0" * 64, ConsentChannel.TERMINAL, "till-7")
            consent = record_consent(session, ACTOR, TOKEN, terms)
            link = store_payment_link(session, keyring, "shop", TOKEN, PAYMENT_TOKEN, "4821")
            assert PAYMENT_TOKEN.encode() not in link.sealed and "4821" not in link.pin_hash
        with db.session() as session:
            found = link_of_card(session, keyring, "shop", PAYMENT_TOKEN)
            assert found.subject_token == TOKEN
            assert open_payment_token(session, keyring, found) == PAYMENT_TOKEN
            with pytest.raises(CardNumberRefused):
                link_of_card(session, keyring, "shop", "4111 1111 1111 1111")
            with pytest.raises(NotFound):
                link_of_card(session, keyring, "other-shop", PAYMENT_TOKEN)
        with db.session() as session:
            receipt = withdraw_consent(session, ACTOR, TOKEN, consent.id)
        assert receipt.destroyed["data_key"] is True and receipt.destroyed["payment_links"] == [link.id]
        with db.session() as session:
            assert session.execute(select(PaymentLink)).first() is None
            assert session.execute(select(DataKey)).first() is None
            with pytest.raises(NotFound):
                link_of_card(session, keyring, "shop", PAYMENT_TOKEN)
    finally:
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_payment_token_names_one_customer(database_url):
    from service.errors import Conflict

    keyring = Keyring.ephemeral()
    db = Database(database_url, audit_key=keyring.audit_key())
    try:
        with db.session() as session:
            session.add(Tenant(id="shop", name="shop"))
            session.flush()
            for token in (TOKEN, OTHER):
                terms = ConsentTerms(Modality.FINGERPRINT, "payment", "v1", "0" * 64, ConsentChannel.TERMINAL, "t")
                record_consent(session, ACTOR, token, terms)
            store_payment_link(session, keyring, "shop", TOKEN, PAYMENT_TOKEN, None)
        with db.session() as session, pytest.raises(Conflict):
            store_payment_link(session, keyring, "shop", OTHER, PAYMENT_TOKEN, None)
        with db.session() as session:
            relinked = store_payment_link(session, keyring, "shop", TOKEN, "tok_new_card_77", None)
            assert open_payment_token(session, keyring, relinked) == "tok_new_card_77"
            assert session.execute(select(PaymentLink)).scalars().all() == [relinked]
    finally:
        db.engine.dispose()
