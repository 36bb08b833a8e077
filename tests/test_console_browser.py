"""The operator console (/console) against a real service on 127.0.0.1: real routed requests (real models;
the fallback a fake OpenAI-compatible server through LangChain's ChatOpenAI), then

- in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium; marker `browser`,
  skipped only where the browser is not installed): sign in with an operator key, see the overview with
  data, label three queued decisions, run learn (progress bar) and see the escalation rate change, the
  what-if curve; screenshots go to $SLM_ROUTER_SCREENSHOTS (`make console-screenshots` sets docs/console,
  the README's pictures), else to the test's temporary folder, so a test run leaves the clone clean;
- over plain HTTP: no session -> 401 (a browser is sent to the login page), a viewer key cannot label
  (403), a form without its CSRF token is refused (403), and with `privacy.log_text: false` no page
  contains the routed text.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from slm_router.policies import Policy
from slm_router.router.runnable import Router
from slm_router.router.service.app import create_app
from slm_router.router.service.console.sessions import SessionStore
from tests.conftest import policy_with, serving
from tests.fake_llm import FakeLLM

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("SLM_ROUTER_SCREENSHOTS") or tempfile.mkdtemp(prefix="slm-router-console-"))
VIEWER_KEY = "console-viewer-key"
OPERATOR_KEY = "console-operator-key"
HTML = {"Accept": "text/html"}

# What the operator labels: decisions the router escalated, and the route they belonged to.
TO_LABEL = {
    "Can you look into this for me?": "triage",  # low confidence
    "Could you handle this one please": "triage",  # low confidence
    "Send it to jane@example.com tomorrow": "extract",  # routed to `other`, so the fallback answered
}
TRAFFIC = [
    *TO_LABEL,
    "I love this blender",
    "This is the worst service I have ever had, I want a refund now",
    "The delivery was fine, nothing special",
    "Absolutely fantastic support, thank you so much!",
    "I am really angry, my package arrived broken and nobody answers my emails!",
    "My order #48213 never arrived, my email is sam@example.org",
    "Please update ticket TCK-5521 and call me at +1 415 555 0100",
    "Refund of $49.99 for order 77812 on 2024-03-02",
    "Translate 'good morning' to Spanish",
    "How do you say thank you in German?",
    "Translate this into French: where is the train station?",
    "What's the capital of Australia?",
    "Write me a short poem about routers",
    "Who won the world cup in 1998?",
    "What is the best way to grow tomatoes on a balcony?",
    "Explain quantum entanglement simply",
    "the package thing again",
    "hmm",
    "Could you handle this please",
    "please help with ticket",
    "Not sure what to make of the latest update, honestly.",
    "Is it good or bad that the update changed everything?",
    "Can you look into this one for me?",
    "Customer says: the app crashes on login and they are furious, order 99120",
    "Recommend a good book about history",
    "Send the invoice to jane@example.com tomorrow",
    "What time is it in Tokyo?",
    "<script>alert(1)</script> what is the weather like today?",
]
SECRET = "zebra-quartz-7731"  # a word that must never appear on a page without privacy.log_text
PRIVATE_TRAFFIC = [
    f"I love this {SECRET} blender",
    f"Can you look into {SECRET} for me?",
    f"What's the capital of {SECRET}?",
]


def _serve(default_policy: Policy, router: Router, fake: FakeLLM, log_text: bool, log: Path) -> Any:
    """A service on its own Router (sharing the session's models): fallback the fake server, every
    specialist answer shadowed (the quality page's data), the decision log in `log`."""
    policy = policy_with(
        default_policy,
        **{
            "fallback.kind": "openai",
            "fallback.base_url": fake.base_url,
            "fallback.model": "fake",
            "fallback.retries": 0,
            "privacy.log_text": log_text,
            "decision_log.path": str(log),
            "escalation.shadow.sample_rate": 1.0,
            "escalation.budget.max_cost_per_hour": 0.05,
        },
    )
    service = Router(policy, pool=router.pool, embedder=router.embedder)
    app = create_app(service, policy.server, {VIEWER_KEY}, warmup=False, admin_keys={OPERATOR_KEY})
    return serving(app)


def _route_all(url: str, texts: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=120, headers={"Authorization": f"Bearer {VIEWER_KEY}"}) as api:
        for text in texts:
            answer = api.post("/v1/route", json={"text": text})
            assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def console_url(
    default_policy: Policy,
    router: Router,
    _fake_llm_server: FakeLLM,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    _fake_llm_server.reset()
    log = tmp_path_factory.mktemp("console") / "decisions.db"
    with _serve(default_policy, router, _fake_llm_server, True, log) as url:
        _route_all(url, TRAFFIC)
        yield url


@pytest.fixture(scope="module")
def private_url(
    default_policy: Policy,
    router: Router,
    _fake_llm_server: FakeLLM,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    _fake_llm_server.reset()
    log = tmp_path_factory.mktemp("private") / "decisions.db"
    with _serve(default_policy, router, _fake_llm_server, False, log) as url:
        _route_all(url, PRIVATE_TRAFFIC)
        yield url


def sign_in(client: httpx.Client, key: str) -> str:
    """Sign in through the login form as a browser would; returns the session's CSRF token."""
    page = client.get("/console/login", headers=HTML)
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token, page.text
    answer = client.post(
        "/console/login", data={"csrf": token[1], "key": key, "next": "/console"}, headers=HTML
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console", answer.text
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and key not in cookie
    review = client.get("/console/review", headers=HTML)
    found = re.search(r'name="csrf" value="([^"]+)"', review.text)
    assert found, review.text
    return found[1]


def first_decision(html: str) -> str:
    found = re.search(r'data-decision="(\d+)"', html)
    assert found, "the review queue is empty"
    return found[1]


# --- over plain HTTP -----------------------------------------------------------------------------------


def test_without_a_session_the_console_answers_401_and_a_browser_goes_to_login(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=60) as client:
        for path in ("/console", "/console/review", "/console/fragments/overview", "/console/learn"):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.json()["error"]["type"] == "unauthorized"
        assert (
            client.post("/console/review/label", data={"decision_id": "1", "route": "other"}).status_code
            == 401
        )
        browser = client.get("/console/review", headers=HTML)
        assert browser.status_code == 303
        assert browser.headers["location"] == "/console/login?next=/console/review"
        assert client.get("/v1/console/stats").status_code == 401  # the JSON API still wants its key
        wrong = client.get("/console/login", headers=HTML)
        token = re.search(r'name="csrf" value="([^"]+)"', wrong.text)
        assert token
        bad = client.post("/console/login", data={"csrf": token[1], "key": "nope"}, headers=HTML)
        assert bad.status_code == 303 and "error=unknown" in bad.headers["location"]
        assert client.get("/console").status_code == 401  # a wrong key made no session


def test_an_operator_reads_messages_escaped(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=60) as client:
        sign_in(client, OPERATOR_KEY)
        review = client.get("/console/review", headers=HTML)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in review.text and "<script>alert" not in review.text


def test_a_viewer_reads_but_cannot_label(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=60) as client:
        csrf = sign_in(client, VIEWER_KEY)
        overview = client.get("/console", headers=HTML)
        assert overview.status_code == 200 and 'id="role">viewer<' in overview.text
        review = client.get("/console/review", headers=HTML)
        assert "<fieldset disabled>" in review.text  # the forms are there, switched off
        # Any API key is a viewer, and the queue holds every caller's messages: a viewer reads none.
        assert "alert(1)" not in review.text and "shown to operators only" in review.text
        decision = first_decision(review.text)
        refused = client.post(
            "/console/review/label", data={"csrf": csrf, "decision_id": decision, "route": "sentiment"}
        )
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "forbidden"
        assert client.post("/console/learn/start", data={"csrf": csrf}).status_code == 403
        assert client.post("/console/policy/rollback", data={"csrf": csrf}).status_code == 403


def test_an_operator_form_needs_the_session_csrf_token(console_url: str) -> None:
    with httpx.Client(base_url=console_url, timeout=60) as client:
        csrf = sign_in(client, OPERATOR_KEY)
        decision = first_decision(client.get("/console/review", headers=HTML).text)
        for token in (None, "forged", csrf[:-1]):
            data = {"decision_id": decision, "route": "sentiment"} | ({"csrf": token} if token else {})
            refused = client.post("/console/review/label", data=data)
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "csrf"
        with httpx.Client(base_url=console_url, timeout=60) as other:
            other_csrf = sign_in(other, OPERATOR_KEY)
        stolen = client.post(
            "/console/review/label", data={"csrf": other_csrf, "decision_id": decision, "route": "sentiment"}
        )
        assert stolen.status_code == 403  # a token is bound to its own session
        assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
        assert client.get("/console").status_code == 401  # the session is gone on the server too


def test_sessions_expire_when_idle_and_stay_bounded() -> None:
    store = SessionStore(idle_s=0.05, max_sessions=2)
    first, _ = store.create("operator", "key-a", "key-a")
    assert store.get(first) is not None
    time.sleep(0.1)
    assert store.get(first) is None  # idle too long
    ids = [store.create("viewer", f"key-{i}", "t")[0] for i in range(3)]
    assert store.get(ids[0]) is None and store.get(ids[2]) is not None  # the oldest went beyond the cap
    assert store.get("") is None and store.get("made-up") is None


def test_without_log_text_no_page_contains_the_routed_text(private_url: str) -> None:
    with httpx.Client(base_url=private_url, timeout=60) as client:
        csrf = sign_in(client, OPERATOR_KEY)
        pages = [
            "/console",
            "/console?window=7d",
            "/console/fragments/overview?window=15m",
            "/console/quality?window=24h",
            "/console/review",
            "/console/learn",
            "/console/fragments/job",
            "/console/whatif",
            "/console/whatif?route=sentiment&threshold=0.7",
        ]
        review = client.get("/console/review", headers=HTML).text
        assert "data-decision=" in review and "privacy.log_text: false" in review
        for path in pages:
            page = client.get(path, headers=HTML)
            assert page.status_code == 200, (path, page.text)
            assert SECRET not in page.text, path
        client.post(
            "/console/review/label",
            data={"csrf": csrf, "decision_id": first_decision(review), "route": "other"},
        )
        started = client.post("/console/learn/start", data={"csrf": csrf})
        assert (
            started.status_code == 303
            and "log_text" in httpx.URL(started.headers["location"]).params["error"]
        )


# --- in a real browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless system Chromium; nothing is downloaded (explicit driver path, so no Selenium Manager)."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"needs Chromium at {CHROMIUM} and {CHROMEDRIVER} (apt install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
    ):
        options.add_argument(arg)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, condition: Any, timeout: float = 60) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # A live region swaps its content while we look: an element gone stale is looked up again.
    wait = WebDriverWait(driver, timeout, 0.2, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition)


def _shot(driver: Any, name: str, max_height: int = 2400) -> None:
    """A whole-page screenshot (up to `max_height`): the window grows to the page's height first."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(max(int(height) + 40, 900), max_height))
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(SHOTS / name))
    driver.set_window_size(1400, 1000)


def _pct(text: str) -> float:
    return float(text.split("%")[0])


@pytest.mark.browser
def test_operator_labels_three_decisions_runs_learn_and_sees_the_escalation_rate_change(
    console_url: str, browser: Any
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    browser.get(f"{console_url}/console")
    _wait(browser, ec.presence_of_element_located((By.ID, "login")))  # no session: the login page
    assert "/console/login" in browser.current_url
    browser.find_element(By.ID, "key").send_keys(OPERATOR_KEY)
    browser.find_element(By.ID, "sign-in").click()
    _wait(browser, ec.presence_of_element_located((By.ID, "total-requests")))
    assert browser.find_element(By.ID, "role").text == "operator"
    assert int(browser.find_element(By.ID, "total-requests").text) >= len(TRAFFIC)
    assert _pct(browser.find_element(By.ID, "escalation-rate").text) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect")) > 5  # bars with data
    assert browser.get_cookie("slm_console")["httpOnly"]
    before = browser.find_element(By.ID, "live").get_attribute("data-refreshed")
    _wait(browser, lambda d: d.find_element(By.ID, "live").get_attribute("data-refreshed") != before, 30)
    browser.find_element(By.CSS_SELECTOR, '.windows a[data-window="15m"]').click()
    _wait(browser, ec.url_contains("window=15m"))
    assert int(browser.find_element(By.ID, "total-requests").text) >= len(TRAFFIC)
    _shot(browser, "overview.png")

    browser.get(f"{console_url}/console/review")
    for text, route in TO_LABEL.items():
        item = next(
            a
            for a in browser.find_elements(By.CSS_SELECTOR, "article.item")
            if a.find_element(By.CSS_SELECTOR, ".text").text == text
        )
        decision = item.get_attribute("data-decision")
        Select(item.find_element(By.NAME, "route")).select_by_value(route)
        item.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # The post answers with the queue again, saying which decision it saved (each once: no stale match).
        _wait(
            browser,
            lambda d, said=f"decision {decision}.": any(
                said in n.text for n in d.find_elements(By.ID, "notice")
            ),
        )
        saved = browser.find_element(By.ID, f"decision-{decision}")
        assert route in saved.find_element(By.CSS_SELECTOR, ".label-saved").text
    _shot(browser, "review.png", max_height=1400)

    browser.get(f"{console_url}/console/learn")
    assert browser.find_element(By.ID, "labelled-count").text == "3"
    browser.find_element(By.ID, "run-learn").click()
    _wait(browser, ec.presence_of_element_located((By.ID, "learn-progress")))
    _wait(
        browser, lambda d: d.find_element(By.ID, "job").get_attribute("data-state") in ("done", "failed"), 300
    )
    job = browser.find_element(By.ID, "job")
    assert job.get_attribute("data-state") == "done", job.text
    esc_before = _pct(browser.find_element(By.ID, "esc-before").text)
    esc_after = _pct(browser.find_element(By.ID, "esc-after").text)
    assert esc_after < esc_before, (esc_before, esc_after)
    _shot(browser, "learn.png")
    browser.find_element(By.ID, "write-policy").click()  # a new file: never over the live policy unasked
    _wait(browser, lambda d: "Wrote" in " ".join(n.text for n in d.find_elements(By.ID, "notice")))
    written = browser.find_element(By.ID, "reload-name").get_attribute("value")
    assert written.startswith("policy-learned-") and written.endswith(".yaml")
    browser.find_element(By.ID, "reload").click()
    _wait(browser, lambda d: "Serving" in " ".join(n.text for n in d.find_elements(By.ID, "notice")))
    assert browser.find_element(By.ID, "live-policy").text.endswith(written)
    browser.find_element(By.ID, "rollback").click()
    _wait(browser, lambda d: "Rolled back" in " ".join(n.text for n in d.find_elements(By.ID, "notice")))
    assert browser.find_element(By.ID, "live-policy").text == "(in-process policy)"
    assert not browser.find_element(By.ID, "rollback").is_enabled()  # one step back, then nothing to undo

    browser.get(f"{console_url}/console/whatif?threshold=0.6")
    _wait(browser, ec.presence_of_element_located((By.ID, "whatif-table")))
    assert "0.60 (chosen)" in browser.find_element(By.ID, "at-chosen").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart polyline")) >= 2
    _shot(browser, "whatif.png")
    browser.get(f"{console_url}/console/quality?window=1h")
    _wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "figure.chart")))
    _shot(browser, "quality.png")
