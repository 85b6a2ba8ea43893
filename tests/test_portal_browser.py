"""The portal in a real browser: Debian's headless Chromium, driven through its chromedriver (Selenium), at a
phone's width, against the service on a real port. Each page is saved as a screenshot in test-output/portal/.

Chromium and chromedriver come from scripts/setup.sh (apt); where they are missing these tests skip, saying so.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import socket
import threading
import time

import httpx
import pytest
from sqlalchemy import text

from tests.conftest import REPO, TEST_OTHER
from tests.operations_fixtures import _execute, _rows
from tests.voice_helpers import ENROL, GENUINE, NOTICE, SPEAKER

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SHOTS = REPO / "test-output" / "portal"
PHONE = (390, 844)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.usefixtures("clean_service_environment"),
    pytest.mark.skipif(
        not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)),
        reason="Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them with apt)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Deployment:
    """The service on a real port (SQLite), a bank with its clients, and HTTP for the bank's backend."""

    def __init__(self, ctx, base: str, admin_key: str) -> None:
        self.ctx, self.base = ctx, base
        self.http = httpx.Client(base_url=base, timeout=120)
        h = {"Authorization": f"Bearer {admin_key}"}
        assert self.http.post("/v1/tenants", json={"id": "bank", "name": "Example Bank"}, headers=h).status_code == 201
        self.keys = {}
        for role in ("ivr", "portal"):
            made = self.http.post("/v1/clients", json={"tenant_id": "bank", "name": role, "role": role}, headers=h)
            self.keys[role] = {"Authorization": f"Bearer {made.json()['api_key']}"}

    def consent(self, reference: str) -> dict:
        body = {"reference": reference, "modality": "voice", "purpose": "authentication", "notice_version": "2026-12",
                "notice_text": NOTICE, "channel": "ivr", "evidence_ref": "call-1"}  # fmt: skip
        response = self.http.post("/v1/consents", json=body, headers=self.keys["portal"])
        assert response.status_code == 201, response.text
        return response.json()

    def enrol(self, reference: str) -> None:
        files = [("audio", (n, (TEST_OTHER / SPEAKER / n).read_bytes(), "audio/flac")) for n in ENROL]
        response = self.http.post(
            "/v1/voice/enrol", data={"reference": reference}, files=files, headers=self.keys["ivr"]
        )
        assert response.status_code == 201, response.text

    def link(self, reference: str) -> str:
        portal = self.keys["portal"]
        response = self.http.post("/v1/subjects:portal-link", json={"reference": reference}, headers=portal)
        assert response.status_code == 201, response.text
        return response.json()["url"]

    @property
    def url(self) -> str:
        return self.ctx.settings.resolved_database_url


@pytest.fixture(scope="module")
def deployment(embedder, tmp_path_factory):
    import uvicorn

    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings
    from service.store.db import upgrade

    data = tmp_path_factory.mktemp("portal")
    url = f"sqlite:///{data / 'bioident.db'}"
    upgrade(url)
    # Secure cookies stay on: Chromium keeps them for http://localhost, a secure context.
    settings = ServiceSettings(_env_file=None, data_dir=data, database_url=url, portal_exchange_per_minute=1000)
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    admin_key = bootstrap_admin(ctx.db)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ctx), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the service did not start"
        time.sleep(0.05)
    yield Deployment(ctx, f"http://localhost:{port}", admin_key)
    server.should_exit = True
    thread.join(timeout=10)
    ctx.db.engine.dispose()


@pytest.fixture(scope="module")
def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={PHONE[0]},{PHONE[1]}", "--lang=en"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium):
    chromium.delete_all_cookies()
    yield chromium
    chromium.delete_all_cookies()


UNLABELLED = """
return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button, a'))
  .filter(e => {
    const label = e.id && document.querySelector('label[for="' + e.id + '"]');
    return !(label && label.textContent.trim()) && !e.getAttribute('aria-label') && !e.textContent.trim();
  }).map(e => e.outerHTML);
"""


def shot(driver, name: str) -> None:
    """A full-page screenshot at the phone's width, for a reviewer to look at; and the page's basic
    accessibility: its language, one h1, a name for every control, nothing wider than the phone."""
    from selenium.webdriver.common.by import By

    assert driver.find_element(By.TAG_NAME, "html").get_attribute("lang") in ("en", "ru", "uk", "be")
    assert len(driver.find_elements(By.TAG_NAME, "h1")) == 1
    assert driver.execute_script(UNLABELLED) == []
    assert fits_a_phone(driver)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(PHONE[0], max(PHONE[1], min(height + 120, 6000)))
    driver.save_screenshot(str(SHOTS / f"{name}.png"))
    driver.set_window_size(*PHONE)


def fits_a_phone(driver) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def navigates(driver, act) -> None:
    """Runs ``act`` (a click, a key press) and waits until the next page has replaced this one."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.wait import WebDriverWait

    page = driver.find_element(By.TAG_NAME, "html")
    stale = expected_conditions.staleness_of(page)

    def replaced(d) -> bool:
        try:
            return stale(d)
        except WebDriverException as exc:  # chromedriver's word for a node of a page being replaced right now
            if "does not belong to the document" in str(exc):
                return True
            raise

    act()
    WebDriverWait(driver, 30).until(replaced)


def h1(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "h1").text


def sign_in(driver, link: str, name: str | None = None) -> None:
    from selenium.webdriver.common.by import By

    driver.get(link)
    if name:
        shot(driver, name)
    navigates(driver, driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click)
    assert h1(driver) == "Your biometric data", driver.page_source[:500]


def test_a_customer_sees_their_voice_exports_it_and_withdraws_it_then_verification_is_refused(deployment, browser):
    from selenium.webdriver.common.by import By

    consent = deployment.consent("ACC-1")
    deployment.enrol("ACC-1")
    sign_in(browser, deployment.link("ACC-1"), "01-link")
    voice = browser.find_element(By.ID, "modality-voice")
    assert "Enrolled since" in voice.text and "Templates (encrypted)\n1" in voice.text
    assert fits_a_phone(browser)
    shot(browser, "02-overview-enrolled")

    cookie = browser.get_cookie("bioident_portal")
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"
    exported = deployment.http.get("/portal/export.json", cookies={"bioident_portal": cookie["value"]})
    body = exported.json()
    assert [c["id"] for c in body["consents"]] == [consent["id"]]
    assert {"consent.grant", "voice.enrol", "portal.link", "portal.session"} <= {e["action"] for e in body["events"]}
    assert len(body["templates"]) == 1 and "sealed" not in exported.text
    query = "SELECT sealed FROM templates WHERE subject_token = :s"
    (sealed,) = _rows(deployment.url, query, s=consent["subject_token"])[0]
    assert sealed.hex() not in exported.text and base64.b64encode(sealed).decode()[:40] not in exported.text

    navigates(browser, browser.find_element(By.CSS_SELECTOR, "section[aria-labelledby=consents] a.button.danger").click)
    assert h1(browser) == "Withdraw consent"
    shot(browser, "03-withdraw-confirm")
    navigates(browser, browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click)
    assert "Consent withdrawn" in h1(browser)
    assert "Your encryption key and everything sealed under it" in browser.page_source
    shot(browser, "04-withdrawal-receipt")
    navigates(browser, browser.find_element(By.LINK_TEXT, "Back to your data").click)
    assert "Not enrolled" in browser.find_element(By.ID, "modality-voice").text
    shot(browser, "05-overview-withdrawn")

    audio = [("audio", (GENUINE, (TEST_OTHER / SPEAKER / GENUINE).read_bytes(), "audio/flac"))]
    verify = deployment.http.post("/v1/voice/verify", data={"reference": "ACC-1"}, files=audio,
                                  headers=deployment.keys["ivr"])  # fmt: skip
    assert verify.status_code == 403 and verify.json()["type"].endswith("/consent_required")


def test_expired_and_reused_links_show_a_clear_page_and_no_data(deployment, browser):
    deployment.consent("ACC-2")
    link = deployment.link("ACC-2")
    sign_in(browser, link)
    browser.delete_all_cookies()
    browser.get(link)
    assert h1(browser) == "This link was already used" and "Your consents" not in browser.page_source
    shot(browser, "06-link-used")

    expired = deployment.link("ACC-2")
    link_id = expired.rsplit("/", 1)[1].split(".")[0]
    _execute(deployment.url, (text("UPDATE portal_links SET expires_at = :t WHERE id = :id"),
                              {"t": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), "id": link_id}))  # fmt: skip
    browser.get(expired)
    assert h1(browser) == "This link has expired" and "Your consents" not in browser.page_source
    shot(browser, "07-link-expired")


def test_a_form_posted_without_its_csrf_token_is_refused(deployment, browser):
    from selenium.webdriver.common.by import By

    deployment.consent("ACC-3")
    sign_in(browser, deployment.link("ACC-3"))
    form = browser.find_element(By.CSS_SELECTOR, "form[action='/portal/never-enrol']")
    browser.execute_script("arguments[0].querySelector('input[name=csrf]').remove()", form)
    navigates(browser, form.find_element(By.CSS_SELECTOR, "button").click)
    assert h1(browser) == "The form could not be accepted"
    shot(browser, "08-csrf-refused")
    flag = _rows(deployment.url, "SELECT never_enrol_at FROM subjects WHERE token = :s",
                 s=deployment.consent("ACC-3")["subject_token"])  # fmt: skip
    assert flag == [(None,)]


def test_each_language_renders_its_own_strings(deployment, browser):
    from selenium.webdriver.common.by import By

    deployment.consent("ACC-4")
    sign_in(browser, deployment.link("ACC-4"))
    expected = {
        "ru": ("Ваши биометрические данные", "Ваши согласия"),
        "uk": ("Ваші біометричні дані", "Ваші згоди"),
        "be": ("Вашы біяметрычныя даныя", "Вашы згоды"),
        "en": ("Your biometric data", "Your consents"),
    }
    for lang, (title, consents) in expected.items():
        navigates(browser, browser.find_element(By.CSS_SELECTOR, f".languages a[hreflang={lang}]").click)
        assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == lang
        assert h1(browser) == title and browser.find_element(By.ID, "consents").text == consents
        assert fits_a_phone(browser)
        shot(browser, f"09-overview-{lang}")


def test_a_customer_withdraws_with_the_keyboard_only(deployment, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    given = deployment.consent("ACC-5")
    browser.get(deployment.link("ACC-5"))

    def press_tab_until(predicate, most: int = 80) -> None:
        for _ in range(most):
            ActionChains(browser).send_keys(Keys.TAB).perform()
            if predicate(browser.switch_to.active_element):
                return
        raise AssertionError("never reached by the keyboard")

    press_tab_until(lambda e: e.tag_name == "button" and "Continue" in e.text)
    navigates(browser, ActionChains(browser).send_keys(Keys.ENTER).perform)
    assert h1(browser) == "Your biometric data"
    press_tab_until(lambda e: (e.get_attribute("href") or "").endswith(f"/consents/{given['id']}/withdraw"))
    shot(browser, "10-keyboard-focus-on-withdraw")
    navigates(browser, ActionChains(browser).send_keys(Keys.ENTER).perform)
    assert h1(browser) == "Withdraw consent"
    press_tab_until(lambda e: e.tag_name == "button" and e.text == "Withdraw and destroy")
    navigates(browser, ActionChains(browser).send_keys(Keys.ENTER).perform)
    assert "Consent withdrawn" in h1(browser)
    consents = deployment.http.get(f"/v1/subjects/{given['subject_token']}/consents", headers=deployment.keys["portal"])
    assert consents.json()[0]["active"] is False


def test_never_enrol_me_refuses_an_enrolment_over_the_api(deployment, browser):
    from selenium.webdriver.common.by import By

    deployment.consent("ACC-6")
    sign_in(browser, deployment.link("ACC-6"))
    navigates(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/portal/never-enrol'] button").click)
    assert "nobody can enrol" in browser.find_element(By.ID, "never-enrol").find_element(By.XPATH, "..").text
    shot(browser, "11-never-enrol")
    files = [("audio", (n, (TEST_OTHER / SPEAKER / n).read_bytes(), "audio/flac")) for n in ENROL]
    refused = deployment.http.post("/v1/voice/enrol", data={"reference": "ACC-6"}, files=files,
                                   headers=deployment.keys["ivr"])  # fmt: skip
    assert refused.status_code == 403 and refused.json()["type"].endswith("/opted_out")


def test_a_customer_inactive_past_retention_finds_their_data_purged(deployment, browser):
    from selenium.webdriver.common.by import By

    from service.consent.retention import purge_inactive

    given = deployment.consent("ACC-7")
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=deployment.ctx.settings.retention_days + 1)
    _execute(deployment.url, (text("UPDATE subjects SET last_active_at = :t WHERE token = :s"),
                              {"t": when, "s": given["subject_token"]}))  # fmt: skip
    purged = purge_inactive(deployment.ctx.db, deployment.ctx.settings, deployment.ctx.keyring)
    assert [p.subject_token for p in purged] == [given["subject_token"]]
    sign_in(browser, deployment.link("ACC-7"))
    assert "Withdrawn on" in browser.find_element(By.ID, "consents").find_element(By.XPATH, "..").text
    navigates(browser, browser.find_element(By.LINK_TEXT, "Your receipts").click)
    assert "Purged after the retention period" in browser.page_source
    shot(browser, "12-receipts-after-purge")
    navigates(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Purged after the retention period").click)
    shot(browser, "13-purge-receipt")
    navigates(browser, browser.find_element(By.LINK_TEXT, "How long we keep your data and how we destroy it").click)
    assert h1(browser) == "Retention and destruction policy" and "3 years" in browser.page_source
    shot(browser, "14-retention-policy")


def test_a_customer_erases_everything_and_signs_out(deployment, browser):
    from selenium.webdriver.common.by import By

    given = deployment.consent("ACC-8")
    sign_in(browser, deployment.link("ACC-8"))
    erase = browser.find_element(By.CSS_SELECTOR, "form[action='/portal/erase']")
    erase.find_element(By.CSS_SELECTOR, "label[for=erase-confirm]").click()  # the label ticks its box
    navigates(browser, erase.find_element(By.CSS_SELECTOR, "button").click)
    assert "Everything erased" in h1(browser)
    shot(browser, "15-erasure-receipt")
    consents = deployment.http.get(f"/v1/subjects/{given['subject_token']}/consents", headers=deployment.keys["portal"])
    assert [c["active"] for c in consents.json()] == [False]

    navigates(browser, browser.find_element(By.CSS_SELECTOR, "form[action='/portal/sign-out'] button").click)
    assert h1(browser) == "You are signed out"
    shot(browser, "16-signed-out")
    browser.get(deployment.base + "/portal/")
    assert h1(browser) == "You are not signed in" and "Your consents" not in browser.page_source
    shot(browser, "17-not-signed-in")
