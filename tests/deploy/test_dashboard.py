"""The live dashboard (`GET /dashboard`), driven in headless Chromium against a real `tierflow up`.

What its user relies on: the page shows the deployment as it is now (tiers, links, the plan, the
matrix, recent requests) within a poll or two, generates text and images through the public API,
and its controls change the deployment itself: the profile the page shows after a change is the
one the server now runs, and a tier taken down is down until it is brought back up.

The browser test needs Selenium (the `dev` extra) and Chromium with its driver (Debian's
`chromium` and `chromium-driver`, which `.ci/run` installs); without them it fails, saying so.
Screenshots go to
`$TIERFLOW_ARTIFACTS` (default `test-artifacts/dashboard` under the repository root).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.processes import tierflow_up

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "tierflow" / "api" / "static"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 1000)

# ids in the page itself, and the ids the page makes per tier / per link (built in dashboard.js)
STATIC_IDS = ("tiers", "links", "plan", "matrix", "recent", "contexts", "device", "prompt", "generate",
              "output", "image-button", "image-size", "image", "error")
ROW_IDS = ("tier-${name}-status", "tier-${name}-down", "tier-${name}-up", "link-${name}-profile",
           "link-${name}-select", "link-${name}-apply")

# --------------------------------------------------------------------------------------------
# fast: the page is three local files, and it has the ids its browser test (and a reader) use
# --------------------------------------------------------------------------------------------


def test_the_dashboard_is_three_local_files_with_the_ids_its_test_uses() -> None:
    html = (STATIC / "dashboard.html").read_text(encoding="utf-8")
    js = (STATIC / "dashboard.js").read_text(encoding="utf-8")
    css = (STATIC / "dashboard.css").read_text(encoding="utf-8")
    # everything the page loads comes from the deployment itself: no CDN, no external font
    loaded = re.findall(r"""<(?:script|link|img)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    fetched = sorted(url for url in loaded if not url.startswith("data:"))  # the favicon is inline
    assert fetched == ["/dashboard/static/dashboard.css", "/dashboard/static/dashboard.js"]
    for name, text in (("dashboard.html", html), ("dashboard.js", js), ("dashboard.css", css)):
        assert not re.search(r"https?://", text), f"{name} names a remote URL"
        assert "@import" not in text and "//cdn" not in text, name
    assert "url(" not in css  # no fonts or images fetched by the stylesheet
    for element in STATIC_IDS:
        assert f'id="{element}"' in html, element
        assert f'byId("{element}")' in js, element
    for template in ROW_IDS:
        assert template in js, template
    # the calls of the server contract, and the key kept where the contract says
    for route in ("/dashboard/state", "/generate", "/v1/images/generations", "/deployment/links/",
                  "/deployment/tiers/", "tierflow_key", "Authorization", "getReader"):
        assert route in js, route
    assert "innerHTML" not in js  # the server's strings (reasons, ids) go in as text only


# --------------------------------------------------------------------------------------------
# slow: a real deployment, a real browser
# --------------------------------------------------------------------------------------------


@dataclass
class Deployment:
    info: dict[str, Any]
    process: subprocess.Popen[str]

    @property
    def api(self) -> str:
        return str(self.info["api"])

    @property
    def key(self) -> str:
        return str(self.info["api_key"])

    def state(self) -> dict[str, Any]:
        answer = httpx.get(f"{self.api}/dashboard/state", headers={"Authorization": f"Bearer {self.key}"},
                           timeout=30)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory, tierflow_home: Path) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("dashboard")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TIERFLOW_HOME": str(tierflow_home)}
    args = ["demo-lm", "--port", "0", "--certs", str(root / "pki"), "--store", str(root / "contexts.sqlite"),
            "--profile", "wifi", "--image-model", "demo-image"]
    with tierflow_up(args, env) as (info, process):
        yield Deployment(info, process)


def _artifacts() -> Path:
    where = Path(os.environ.get("TIERFLOW_ARTIFACTS") or REPO / "test-artifacts" / "dashboard")
    where.mkdir(parents=True, exist_ok=True)
    return where


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    driver_path = CHROMEDRIVER if os.path.exists(CHROMEDRIVER) else shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.fail("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    profile = tempfile.mkdtemp(prefix="tierflow-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size={},{}".format(*WINDOW),
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    """The dashboard in the browser: waits that say what the page showed when they gave up."""

    def __init__(self, driver: Any, artifacts: Path) -> None:
        self.driver = driver
        self.artifacts = artifacts

    def text(self, element_id: str) -> str:
        from selenium.common.exceptions import NoSuchElementException
        from selenium.webdriver.common.by import By

        try:
            return str(self.driver.find_element(By.ID, element_id).text).strip()
        except NoSuchElementException:
            return "<no such element>"

    def wait(self, what: str, condition: Callable[[Any], object], timeout: float) -> Any:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.25,
                                 ignored_exceptions=(StaleElementReferenceException,)).until(condition)
        except TimeoutException:
            self.driver.save_screenshot(str(self.artifacts / "failed.png"))
            try:
                console = [entry["message"] for entry in self.driver.get_log("browser")][-10:]
            except Exception:  # the log is a chromedriver extra
                console = []
            raise AssertionError(
                f"gave up after {timeout} s waiting for {what}; the page's error: {self.text('error')!r}; "
                f"tiers: {self.text('tiers')!r}; links: {self.text('links')!r}; console: {console}"
            ) from None

    def wait_text(self, element_id: str, expected: str, timeout: float) -> None:
        self.wait(f"#{element_id} to show {expected!r}", lambda _: self.text(element_id) == expected, timeout)

    def click(self, element_id: str, timeout: float = 30) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions as ec

        self.wait(f"#{element_id} to be clickable", ec.element_to_be_clickable((By.ID, element_id)), timeout)
        self.driver.find_element(By.ID, element_id).click()

    def screenshot(self, name: str) -> Path:
        """The whole page (the window grown to its height for the shot), as a PNG in the artifacts."""
        path = self.artifacts / name
        width, height = WINDOW
        page_height, chrome = self.driver.execute_script(
            "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
        self.driver.set_window_size(width, max(height, min(int(page_height) + int(chrome) + 8, 6000)))
        try:
            assert self.driver.save_screenshot(str(path)), path
        finally:
            self.driver.set_window_size(width, height)
        return path


@pytest.mark.slow
def test_the_dashboard_shows_the_deployment_live_and_drives_it(up: Deployment, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = Page(browser, _artifacts())
    url = str(up.info.get("dashboard") or "")
    assert url.startswith(f"{up.api}/dashboard") and f"#key={up.key}" in url, up.info
    shots: list[Path] = []

    # 1. the page, with the key from the URL's fragment: three tiers up, the device's link on wifi
    browser.get(url)
    for tier in ("device", "edge", "cloud"):
        page.wait_text(f"tier-{tier}-status", "up", timeout=90)
    page.wait_text("link-device-edge-profile", "wifi", timeout=30)
    assert browser.execute_script("return localStorage.getItem('tierflow_key')") == up.key
    page.wait("the plan and the matrix",
              lambda _: "ms" in page.text("plan") and "text_short" in page.text("matrix"), timeout=30)
    shots.append(page.screenshot("1-loaded.png"))

    # 2. text, streamed into the page; the request then appears among the recent ones
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("def ")
    page.click("generate")
    page.wait("generated text in #output", lambda _: page.text("output") != "", timeout=120)
    page.wait("the reply to finish", lambda d: d.find_element(By.ID, "output").get_attribute("data-state")
              in ("done", "error"), timeout=120)
    assert browser.find_element(By.ID, "output").get_attribute("data-state") == "done", page.text("error")
    page.wait("a text request in the recent requests",
              lambda d: d.find_elements(By.CSS_SELECTOR, '#recent tr[data-kind="text"]'), timeout=30)
    shots.append(page.screenshot("2-text.png"))

    # 3. an image of 256 px, shown in the page
    Select(browser.find_element(By.ID, "image-size")).select_by_value("256x256")
    page.click("image-button")

    def image_src(driver: Any) -> str:
        return str(driver.find_element(By.ID, "image").get_attribute("src") or "")

    page.wait("a data: image in #image", lambda d: image_src(d).startswith("data:image/png;base64,"),
              timeout=180)
    size = browser.execute_script("const i = document.getElementById('image'); "
                                  "return i.complete ? [i.naturalWidth, i.naturalHeight] : null")
    assert size in (None, [256, 256]), size
    shots.append(page.screenshot("3-image.png"))

    # 4. the device's link to 3g with its select and button: the page shows what the server now runs
    Select(browser.find_element(By.ID, "link-device-edge-select")).select_by_value("3g")
    page.click("link-device-edge-apply")
    page.wait_text("link-device-edge-profile", "3g", timeout=30)
    assert up.state()["links"]["device-edge"]["profile"] == "3g"

    # 5. the cloud down, then up again
    page.click("tier-cloud-down")
    page.wait_text("tier-cloud-status", "down", timeout=60)
    cloud = up.state()["tiers"]["cloud"]
    assert not cloud["available"] or (cloud["process"] or {}).get("alive") is False, cloud
    page.click("tier-cloud-up")
    page.wait_text("tier-cloud-status", "up", timeout=120)
    assert page.text("error") == ""
    shots.append(page.screenshot("5-tiers.png"))

    for shot in shots:
        assert shot.stat().st_size > 1000 and shot.read_bytes()[:8] == PNG_MAGIC, shot
