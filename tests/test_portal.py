"""The customer portal over HTTP, on SQLite and PostgreSQL: one-time links, sessions, CSRF, languages,
consent choices with signed receipts, never-enrol, the export. (The browser stories: test_portal_browser.py.)"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import text

from service.consent.receipts import InvalidReceipt, verify_receipt
from tests.operations_fixtures import _execute, _problem, _rows
from tests.portal_fixtures import browser, consent, field, portal_link, sign_in


def test_a_link_opens_the_portal_once_and_gives_a_strict_session_cookie(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-1")
    link = portal_link(api, keys["portal"], "ACC-1")
    customer = browser(api)
    first = sign_in(customer, link)
    assert first.status_code == 200 and "Your biometric data" in first.text
    cookie = next(h for h in first.history[0].headers.get_list("set-cookie") if h.startswith("bioident_portal="))
    assert all(flag in cookie.lower() for flag in ("httponly", "secure", "samesite=strict", "path=/portal"))
    assert first.headers["content-security-policy"].startswith("default-src 'none'")
    assert "script-src" not in first.headers["content-security-policy"] and "<script" not in first.text
    assert first.headers["cache-control"] == "no-store" and first.headers["referrer-policy"] == "no-referrer"

    again = browser(api).get(link)  # someone else, or the same customer, opens it a second time
    assert again.status_code == 410 and "already used" in again.text and "Your consents" not in again.text


def test_an_expired_or_forged_link_gets_a_clear_page_and_no_data(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-2")
    link = portal_link(api, keys["portal"], "ACC-2")
    link_id = link.rsplit("/", 1)[1].split(".")[0]
    _execute(api.ctx.settings.resolved_database_url,
             (text("UPDATE portal_links SET expires_at = :t WHERE id = :id"),
              {"t": dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), "id": link_id}))  # fmt: skip
    customer = browser(api)
    expired = customer.get(link)
    assert expired.status_code == 410 and "expired" in expired.text
    assert customer.post(link, data={"pre": "x"}).status_code in (403, 410)

    forged = link[:-4] + ("0000" if not link.endswith("0000") else "1111")  # another signature
    page = browser(api).get(forged)
    assert page.status_code == 404 and "not valid" in page.text
    assert browser(api).get("/portal/").status_code == 401  # no cookie, no data


def test_the_exchange_is_refused_without_the_link_pages_token(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-3")
    link = portal_link(api, keys["portal"], "ACC-3")
    customer = browser(api)
    customer.get(link)
    refused = customer.post(link, data={})
    assert refused.status_code == 403
    assert sign_in(customer, link).status_code == 200  # the link was not used up by the refused post


def test_link_exchanges_are_rate_limited_per_address(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-4")
    api.ctx.settings.portal_exchange_per_minute = 3
    customer = browser(api)
    statuses = [customer.get("/portal/l/pln_" + "0" * 32 + f".9999999999.{i:064x}").status_code for i in range(4)]
    assert statuses[:3] == [404, 404, 404] and statuses[3] == 429


def test_forms_without_their_csrf_token_are_refused_and_change_nothing(bank_portal):
    api, keys = bank_portal
    given = consent(api, keys["portal"], "ACC-5")
    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-5"))
    for data in ({}, {"csrf": "0" * 64}):
        assert customer.post(f"/portal/consents/{given['id']}/withdraw", data=data).status_code == 403
        assert customer.post("/portal/erase", data={**data, "confirm": "yes"}).status_code == 403
        assert customer.post("/portal/never-enrol", data={**data, "choice": "set"}).status_code == 403
    consents = api.http.get(f"/v1/subjects/{given['subject_token']}/consents", headers=api.headers(keys["portal"]))
    assert consents.json()[0]["active"] is True
    withdrawn = customer.post(f"/portal/consents/{given['id']}/withdraw", data={"csrf": field(home.text, "csrf")})
    assert withdrawn.status_code == 200 and "Consent withdrawn" in withdrawn.text


def test_each_language_renders_its_own_strings(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-6")
    customer = browser(api)
    sign_in(customer, portal_link(api, keys["portal"], "ACC-6"))
    headings = {"en": "Your consents", "ru": "Ваши согласия", "uk": "Ваші згоди", "be": "Вашы згоды"}
    for lang, heading in headings.items():
        page = customer.get("/portal/", headers={"Accept-Language": f"{lang},en;q=0.5"})
        assert f'<html lang="{lang}">' in page.text and heading in page.text
        assert all(other not in page.text for other in headings.values() if other != heading)
    switched = customer.get("/portal/?lang=uk", headers={"Accept-Language": "ru"})
    assert "Ваші згоди" in switched.text
    assert "Ваші згоди" in customer.get("/portal/", headers={"Accept-Language": "ru"}).text  # the switch is kept


def test_receipts_are_stored_signed_and_verify_with_the_published_key(bank_portal):
    api, keys = bank_portal
    given = consent(api, keys["portal"], "ACC-7")
    withdrawn = api.http.post(f"/v1/subjects/{given['subject_token']}/consents/{given['id']}:withdraw",
                              headers=api.headers(keys["portal"])).json()  # fmt: skip
    jwk = api.http.get("/v1/receipts/keys").json()["keys"][0]
    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-7"))
    listing = customer.get("/portal/receipts")
    assert "Consent given" in listing.text and "Consent withdrawn" in listing.text
    document = customer.get(f"/portal/receipts/{withdrawn['signed_receipt_id']}/download").json()
    receipt = verify_receipt(document["jws"], jwk)
    assert receipt == document["receipt"]
    assert receipt["piiPrincipalId"] == given["subject_token"] and receipt["event"]["type"] == "consent.withdraw"
    assert receipt["event"]["consent_id"] == given["id"] and receipt["services"][0]["purposes"][0]["purpose"]
    assert receipt["event"]["receipt_sha256"] == withdrawn["receipt_sha256"]
    header, payload, signature = document["jws"].split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB")
    try:
        verify_receipt(f"{header}.{tampered}.{signature}", jwk)
        raise AssertionError("a tampered receipt verified")
    except InvalidReceipt:
        pass
    assert "Your receipts" in home.text


def test_the_portal_client_sets_never_enrol_and_only_the_customer_lifts_it(bank_portal):
    api, keys = bank_portal
    portal, ivr = api.headers(keys["portal"]), api.headers(keys["ivr"])
    flagged = api.http.post("/v1/subjects:never-enrol", json={"reference": "ACC-8"}, headers=portal)
    assert flagged.status_code == 200, flagged.text
    consent(api, keys["portal"], "ACC-8")
    files = [("audio", ("a.wav", b"RIFF....", "audio/wav"))]
    refused = api.http.post("/v1/voice/enrol", data={"reference": "ACC-8"}, files=files, headers=ivr)
    assert _problem(refused, 403)["type"].endswith("/opted_out")
    session = api.http.post("/v1/voice/enrolments", json={"reference": "ACC-8"}, headers=api.headers(keys["ivr"]))
    assert _problem(session, 403)["type"].endswith("/opted_out")

    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-8"))
    assert "nobody can enrol" in home.text
    lifted = customer.post("/portal/never-enrol", data={"csrf": field(home.text, "csrf"), "choice": "lift"})
    assert lifted.status_code == 200 and "nobody can enrol" not in lifted.text
    allowed = api.http.post("/v1/voice/enrolments", json={"reference": "ACC-8"}, headers=api.headers(keys["ivr"]))
    assert allowed.status_code == 201, allowed.text
    query = "SELECT outcome FROM audit_entries WHERE action = 'subject.never_enrol' ORDER BY seq"
    actions = [row[0] for row in _rows(api.ctx.settings.resolved_database_url, query)]
    assert actions == ["set", "lifted"]


def test_erase_everything_destroys_every_modality_and_gives_a_receipt(bank_portal):
    api, keys = bank_portal
    voice = consent(api, keys["portal"], "ACC-9")
    consent(api, keys["portal"], "ACC-9", modality="fingerprint")
    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-9"))
    assert customer.post("/portal/erase", data={"csrf": field(home.text, "csrf")}).status_code == 400  # unconfirmed
    erased = customer.post("/portal/erase", data={"csrf": field(home.text, "csrf"), "confirm": "yes"})
    assert erased.status_code == 200 and "Everything erased" in erased.text
    consents = api.http.get(f"/v1/subjects/{voice['subject_token']}/consents", headers=api.headers(keys["portal"]))
    assert [c["active"] for c in consents.json()] == [False, False]


def test_a_customer_gives_consent_in_their_language_and_gets_its_receipt(bank_portal):
    import hashlib

    from service.portal.i18n import gettext
    from service.portal.views import NOTICES

    api, keys = bank_portal
    first = consent(api, keys["portal"], "ACC-10")
    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-10"))
    form = {"csrf": field(home.text, "csrf"), "modality": "fingerprint", "purpose": "authentication"}
    assert customer.post("/portal/consents", data=form).status_code == 400  # the notice not confirmed
    not_offered = {**form, "notice_read": "yes", "purpose": "marketing"}
    assert customer.post("/portal/consents", data=not_offered).status_code == 400
    given = customer.post("/portal/consents?lang=ru", data={**form, "notice_read": "yes"})
    assert given.status_code == 200 and "Согласие дано" in given.text
    consents = api.http.get(f"/v1/subjects/{first['subject_token']}/consents", headers=api.headers(keys["portal"]))
    fingerprint = [c for c in consents.json() if c["modality"] == "fingerprint"]
    assert len(fingerprint) == 1 and fingerprint[0]["channel"] == "portal"
    assert fingerprint[0]["recorded_by"] == "customer"
    shown = gettext("ru", NOTICES["fingerprint"])  # the notice as the customer read it, in Russian
    assert shown != NOTICES["fingerprint"]
    assert fingerprint[0]["notice_sha256"] == hashlib.sha256(shown.encode()).hexdigest()


def test_signing_out_ends_the_session(bank_portal):
    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-11")
    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-11"))
    cookie = customer.cookies.get("bioident_portal")
    signed_out = customer.post("/portal/sign-out", data={"csrf": field(home.text, "csrf")})
    assert signed_out.status_code == 200 and "You are signed out" in signed_out.text
    replayed = browser(api)
    replayed.cookies.set("bioident_portal", cookie, domain="testserver", path="/portal")
    assert replayed.get("/portal/").status_code == 401  # the old cookie opens nothing


def test_the_language_follows_accept_language_with_its_weights():
    from service.portal.i18n import negotiate

    assert negotiate("uk-UA,uk;q=0.9,ru;q=0.8,en;q=0.5") == "uk"
    assert negotiate("de-DE, ru;q=0.3, be;q=0.7") == "be"
    assert negotiate("fr, de") == "en" and negotiate(None) == "en" and negotiate("ru;q=0, en;q=0.1") == "en"


def test_a_catalogue_not_compiled_by_setup_is_compiled_in_memory(tmp_path, monkeypatch):
    import shutil

    from service.portal import i18n

    folder = tmp_path / "be" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    shutil.copy(i18n.TRANSLATIONS / "be" / "LC_MESSAGES" / "messages.po", folder / "messages.po")
    monkeypatch.setattr(i18n, "TRANSLATIONS", tmp_path)
    i18n.translations.cache_clear()
    try:
        assert i18n.translations("be").gettext("Your consents") == "Вашы згоды"
    finally:
        i18n.translations.cache_clear()


def test_links_and_sessions_that_ended_long_ago_are_pruned(bank_portal):
    from service.portal.links import prune

    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-12")
    customer = browser(api)
    sign_in(customer, portal_link(api, keys["portal"], "ACC-12"))
    fresh = portal_link(api, keys["portal"], "ACC-12")
    url = api.ctx.settings.resolved_database_url
    two_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    _execute(url, (text("UPDATE portal_sessions SET expires_at = :t"), {"t": two_days_ago}),
             (text("UPDATE portal_links SET expires_at = :t WHERE id <> :id"),
              {"t": two_days_ago, "id": fresh.rsplit("/", 1)[1].split(".")[0]}))  # fmt: skip
    assert prune(api.ctx.db) == 2
    assert _rows(url, "SELECT COUNT(*) FROM portal_sessions") == [(0,)]
    assert _rows(url, "SELECT COUNT(*) FROM portal_links") == [(1,)]
    assert sign_in(browser(api), fresh).status_code == 200  # the link still valid is kept


def test_a_link_opened_on_two_replicas_at_once_opens_one_session(bank_portal):
    import threading

    from service.context import ServiceContext
    from service.portal.links import LinkUsed, exchange_link

    api, keys = bank_portal
    consent(api, keys["portal"], "ACC-13")
    signed = portal_link(api, keys["portal"], "ACC-13").rsplit("/", 1)[1]
    replicas = [ServiceContext(api.ctx.settings, keyring=api.ctx.keyring) for _ in range(4)]
    barrier, outcomes = threading.Barrier(len(replicas)), []

    def open_link(ctx) -> None:
        barrier.wait()
        try:
            outcomes.append(("session", exchange_link(ctx, signed)))
        except LinkUsed:
            outcomes.append(("used", None))

    threads = [threading.Thread(target=open_link, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for replica in replicas:
        replica.db.engine.dispose()
    assert sorted(kind for kind, _ in outcomes) == ["session", "used", "used", "used"]
    assert _rows(api.ctx.settings.resolved_database_url, "SELECT COUNT(*) FROM portal_sessions") == [(1,)]


def test_the_retention_policy_is_served_from_the_package_a_wheel_installs(bank_portal):
    import tomllib
    from pathlib import Path

    from service.portal import router

    api, _ = bank_portal
    page = api.http.get("/portal/retention-policy")
    first_line = router.POLICY.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
    assert page.status_code == 200 and first_line and first_line in page.text
    assert router.POLICY.parent == Path(router.__file__).parent  # not a file of the checkout around it
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert router.POLICY.name in project["tool"]["setuptools"]["package-data"]["service.portal"]


def test_receipts_speak_the_language_the_customer_was_addressed_in(bank_portal):
    from service.consent.receipts import payload_of, receipts_of

    api, keys = bank_portal

    def languages() -> dict[str, list[str]]:
        with api.ctx.db.session() as session:
            found: dict[str, list[str]] = {}
            for receipt in receipts_of(session, "bank", token):
                found.setdefault(receipt.kind, []).append(payload_of(receipt)["language"])
            return found

    body = {"reference": "ACC-20", "modality": "voice", "purpose": "authentication", "notice_version": "2026-12",
            "notice_text": "Повідомлення", "channel": "ivr", "evidence_ref": "call-20"}  # fmt: skip
    for bad in ("english!", "u", "uk_UA"):
        refused = api.http.post("/v1/consents", json={**body, "language": bad}, headers=api.headers(keys["portal"]))
        assert refused.status_code == 422 and refused.headers["content-type"].startswith("application/problem+json")
    given = api.http.post("/v1/consents", json={**body, "language": "UK"}, headers=api.headers(keys["portal"])).json()
    token = given["subject_token"]
    assert languages() == {"consent.grant": ["uk"]}  # tags are case-insensitive: written as BCP 47 has them
    again = api.http.post("/v1/consents", json={**body, "purpose": "fraud"}, headers=api.headers(keys["portal"]))
    assert again.status_code == 201 and languages()["consent.grant"] == ["uk", "uk"]  # none sent: theirs so far
    api.http.post(f"/v1/subjects/{token}/consents/{given['id']}:withdraw", headers=api.headers(keys["portal"]))
    assert languages()["consent.withdraw"] == ["uk"]  # over the API: the customer's language so far

    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-20"))
    form = {"csrf": field(home.text, "csrf"), "modality": "fingerprint", "purpose": "authentication"}
    assert customer.post("/portal/consents?lang=ru", data={**form, "notice_read": "yes"}).status_code == 200
    assert sorted(languages()["consent.grant"]) == ["ru", "uk", "uk"]
    erased = customer.post("/portal/erase?lang=be", data={"csrf": form["csrf"], "confirm": "yes"})
    assert erased.status_code == 200
    assert languages()["erasure"] == ["be"] and sorted(languages()["consent.withdraw"]) == ["be", "be", "uk"]


# --- every event a customer can see has a name, in every language ---------------------------------------------


class _Code:
    """The service's functions and calls, to follow an audited action or outcome back to the strings written."""

    def __init__(self, *folders: str) -> None:
        import ast
        from pathlib import Path

        self.functions: dict[str, list[ast.FunctionDef]] = {}
        self.calls: list[tuple[ast.Call, ast.FunctionDef | None]] = []
        for folder in folders:
            for path in sorted((Path(__file__).parents[1] / folder).rglob("*.py")):
                self._read(ast.parse(path.read_text(encoding="utf-8")), None)

    def _read(self, node, function) -> None:  # noqa: ANN001
        import ast

        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call):
                self.calls.append((child, function))
            self._read(child, child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function)

    def values(self, node, function, depth: int = 0) -> set[str] | None:  # noqa: ANN001
        """The strings ``node`` can be; None where one of them is computed, not written in the code."""
        import ast
        import itertools

        from service.modality import Modality

        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, ast.IfExp):
            body, orelse = self.values(node.body, function, depth), self.values(node.orelse, function, depth)
            return None if body is None or orelse is None else body | orelse
        if isinstance(node, ast.JoinedStr):  # f"{modality}.lockout"
            parts = [[p.value] if isinstance(p, ast.Constant) else [str(m) for m in Modality] for p in node.values]
            return {"".join(chosen) for chosen in itertools.product(*parts)}
        if isinstance(node, ast.Name) and function is not None and depth < 5:
            return self._variable(node.id, function, depth + 1)
        return None

    def _variable(self, name: str, function, depth: int) -> set[str] | None:  # noqa: ANN001
        """A local variable's assigned values, else a parameter's default and what every caller passes for it."""
        import ast

        assigned = [a.value for a in ast.walk(function) if isinstance(a, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == name for t in a.targets)]  # fmt: skip
        args = function.args
        params = [p.arg for p in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
        if not assigned and name not in params:
            return None
        defaults = dict(zip(reversed([p.arg for p in args.args]), reversed(args.defaults), strict=False))
        defaults |= {p.arg: d for p, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None}
        sources = [(value, function) for value in assigned]
        if not assigned:
            sources += [(defaults[name], None)] if name in defaults else []
            position = params.index(name)
            for call, caller in self.calls:
                if getattr(call.func, "id", getattr(call.func, "attr", None)) == function.name:
                    passed = next((k.value for k in call.keywords if k.arg == name), None)
                    if passed is None and position < len(call.args):
                        passed = call.args[position]
                    sources += [(passed, caller)] if passed is not None else []
        found = [self.values(value, scope, depth) for value, scope in sources]
        return None if None in found else set().union(*found)


def _audited_against_a_customer() -> dict[str, set[str]]:
    """Action -> outcomes of every audit entry service/ and enroll/ record with a subject token (the ones that
    can reach a customer's portal), followed back through the helpers that pass them on."""
    code, found = _Code("service", "enroll"), {}
    for call, function in code.calls:
        keywords = {k.arg: k.value for k in call.keywords}
        name = getattr(call.func, "id", getattr(call.func, "attr", None))
        if name not in ("record_event", "append") or "action" not in keywords or "subject_token" not in keywords:
            continue
        actions, outcomes = code.values(keywords["action"], function), code.values(keywords["outcome"], function)
        assert actions is not None, f"the action audited in {function.name} cannot be followed: name it here"
        if outcomes is None:  # a voice decision: the scorer's, or a stream's (inconclusive where it must decide)
            from biometrics.scoring.scorer import Decision

            assert function.name == "decide_voice", f"the outcome audited in {function.name} cannot be followed"
            outcomes = {*map(str, Decision), "inconclusive"}
        for action in actions:
            found.setdefault(action, set()).update(outcomes)
    return found


def test_every_event_recorded_about_a_customer_has_a_name_translated_in_every_language():
    from babel.messages.pofile import read_po

    from biometrics.scoring.operating_points import PAIRS, pair_name
    from service.consent.records import ConsentChannel
    from service.portal import i18n
    from service.portal.views import ACTION_NAMES, CHANNEL_NAMES, HIDDEN_ACTIONS, OTHER_CHANNEL, OUTCOME_NAMES

    recorded = _audited_against_a_customer()
    assert {"consent.grant", "fingerprint.pay", "fingerprint.reenrol", "voice.stream", "watchlist.hit"} <= set(recorded)
    assert recorded["voice.identified"] == {"match"}  # an identification, against each customer it named
    audited = {a: o for a, o in recorded.items() if not a.startswith(HIDDEN_ACTIONS.rstrip("%"))}  # never shown
    assert "watchlist.hit" not in audited and "watchlist.hit" not in ACTION_NAMES
    assert sorted(audited.keys() - ACTION_NAMES.keys()) == []
    assert sorted(set().union(*audited.values()) - OUTCOME_NAMES.keys()) == []
    # Every channel an event can show (views._channel): a consent's, a voice decision's pair, an action's domain.
    channels = {*map(str, ConsentChannel), *(pair_name(pair) for pair in PAIRS), *(a.split(".")[0] for a in audited)}
    assert sorted(channels - CHANNEL_NAMES.keys()) == []

    shown = {*ACTION_NAMES.values(), *OUTCOME_NAMES.values(), *CHANNEL_NAMES.values(), OTHER_CHANNEL, "Other activity"}
    with open(i18n.TRANSLATIONS / "messages.pot", "rb") as pot:
        assert sorted(shown - {m.id for m in read_po(pot) if m.id}) == []  # extracted: N_ and the template
    for language in i18n.LANGUAGES:
        with open(i18n.TRANSLATIONS / language / "LC_MESSAGES" / "messages.po", "rb") as po:
            catalogue = read_po(po, locale=language)
        missing = sorted(m for m in shown if catalogue.get(m) is None or catalogue.get(m).fuzzy
                         or (language != i18n.DEFAULT and not catalogue.get(m).string))  # fmt: skip
        assert missing == [], language


def test_a_finger_payment_and_an_accepted_call_are_uses_named_on_the_customers_page(bank_portal):
    import re

    from service.auth import Principal, Role
    from service.portal.views import overview
    from service.trail.chain import record_event

    api, keys = bank_portal
    token = consent(api, keys["portal"], "ACC-30", modality="fingerprint", purpose="payment")["subject_token"]
    consent(api, keys["portal"], "ACC-30")
    till, ivr = Principal("cli_till", "bank", Role.TERMINAL), Principal("cli_ivr", "bank", Role.IVR)
    with api.ctx.db.session() as session:
        paid = record_event(session, till, action="fingerprint.pay", outcome="accept", subject_token=token,
                            details={"mode": "finger", "purpose": "payment"}).seq  # fmt: skip
        record_event(session, till, action="fingerprint.pay", outcome="reject", subject_token=token)  # no use
        called = record_event(session, ivr, action="voice.stream", outcome="accept", subject_token=token,
                              details={"stream_id": "s-1", "channels": "narrowband"}).seq  # fmt: skip
        record_event(session, ivr, action="voice.stream", outcome="inconclusive", subject_token=token)
        record_event(session, ivr, action="watchlist.hit", outcome="hit", subject_token=token)
        record_event(session, till, action="fingerprint.future", outcome="someday", subject_token=token)
    with api.ctx.db.session() as session:
        from service.store.models import AuditEntry

        used = {m.modality: m.last_use for m in overview(session, "bank", token, ()).modalities}
        assert used == {"fingerprint": session.get(AuditEntry, paid).at, "voice": session.get(AuditEntry, called).at}

    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-30"))
    cards = dict(re.findall(r'<article class="card modality" id="modality-(\w+)">(.*?)</article>', home.text, re.S))
    assert cards.keys() == {"voice", "fingerprint"} and all("Never" not in card for card in cards.values())
    for shown in ("Payment with your fingerprint", "Voice check during a call", "inconclusive", "Other activity"):
        assert shown in home.text
    for raw in ("fingerprint.pay", "voice.stream", "fingerprint.future", "someday", "watchlist"):
        assert raw not in home.text
    russian = customer.get("/portal/?lang=ru").text
    assert "Оплата отпечатком пальца" in russian and "Проверка голоса во время звонка" in russian
    assert "без результата" in russian and "Другое действие" in russian


def test_an_identification_that_named_the_customer_is_a_use_shown_with_named_channels(bank_portal):
    import re

    from service.auth import Principal, Role
    from service.portal.views import overview
    from service.store.models import AuditEntry
    from service.trail.chain import record_event

    api, keys = bank_portal
    token = consent(api, keys["portal"], "ACC-40")["subject_token"]  # given over the phone ("ivr")
    other = consent(api, keys["portal"], "ACC-41")["subject_token"]
    ivr = Principal("cli_ivr", "bank", Role.IVR)
    with api.ctx.db.session() as session:
        record_event(session, ivr, action="voice.verify", outcome="accept", subject_token=token,
                     details={"purpose": "authentication", "channels": "wideband/telephone"})  # fmt: skip
        # As an identification that named both writes them: its own entry, then one against each of them.
        record_event(session, ivr, action="voice.identify", outcome="match", score=0.7,
                     details={"purpose": "authentication", "candidates": [other, token]})  # fmt: skip
        record_event(session, ivr, action="voice.identified", outcome="match", subject_token=other,
                     details={"purpose": "authentication", "rank": 1})  # fmt: skip
        named = record_event(session, ivr, action="voice.identified", outcome="match", subject_token=token,
                             details={"purpose": "authentication", "rank": 2}).seq  # fmt: skip
        record_event(session, ivr, action="voice.verify", outcome="reject", subject_token=token,
                     details={"channels": "telephone/wideband"})  # fmt: skip
        record_event(session, ivr, action="voice.future", outcome="someday", subject_token=token,
                     details={"channel": "carrier-pigeon"})  # fmt: skip
    with api.ctx.db.session() as session:
        (voice,) = [m for m in overview(session, "bank", token, ()).modalities if m.modality == "voice"]
        assert voice.last_use == session.get(AuditEntry, named).at  # the identification, not the earlier check

    customer = browser(api)
    home = sign_in(customer, portal_link(api, keys["portal"], "ACC-40"))

    def rows(html: str) -> list[tuple[str, str, str]]:
        """What, channel and outcome of each row of the events table, newest first."""
        return re.findall(r"<tr><td>[^<]*</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td></tr>", html)

    assert rows(home.text) == [
        ("Portal opened", "This portal", "opened"), ("Portal link sent", "This portal", "sent"),
        ("Other activity", "Other", "–"), ("Voice check", "Wideband audio", "rejected"),
        ("Recognised by your voice", "Voice", "matched"), ("Voice check", "Phone line", "accepted"),
        ("Consent given", "Phone call", "given"),
    ]  # fmt: skip
    for raw in ("voice.identified", "wideband/telephone", "telephone/wideband", "carrier-pigeon", other):
        assert raw not in home.text
    russian = rows(customer.get("/portal/?lang=ru").text)
    assert ("Вас узнали по голосу", "Голос", "совпадение") in russian
    assert ("Проверка голоса", "Телефонная линия", "принято") in russian
    assert ("Другое действие", "Другое", "–") in russian and ("Согласие дано", "Телефонный звонок", "дано") in russian
