"""Issue 18 in a real browser: headless Debian chromium (Selenium 4, chromedriver) in the root
namespace opens Admin Router's front door, logs in, creates an app with a Load Balanced port from
the form (a bad id caught in the browser, Marathon's 422 shown in the form), sees it running and
its VIP appear, curls the VIP name from an agent, scales and restarts it, reads Nodes and Network (DNS lookup),
has its session cleared mid-form and continues after logging in again with what it typed, destroys
the app, installs and uninstalls a package from the form generated from its options schema, and
logs out.
One lab (an agent and a public agent) for the module; the page is never reloaded after the
login, so every list change below came through Marathon's event stream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from bench.ui_pages import chromium
from tests.e2e.conftest import LabHandle, wait_until

pytestmark = pytest.mark.e2e

APP = "/ui-web"
VIP = "ui-web.marathon.l4lb.thisdcos.directory"
KEPT = "/ui-kept"
SITE = "/ui-site"
SERVE = "echo ui-$MESOS_TASK_ID > index.html && exec python3 -m http.server $PORT0"


@pytest.fixture(scope="module")
def lab(lab_factory) -> Iterator[LabHandle]:
    handle = lab_factory(agents=1, public_agents=1)
    yield handle
    for app_id in (APP, KEPT, SITE):
        handle.remove_app(app_id)


@pytest.fixture(scope="module")
def browser(lab: LabHandle) -> Iterator[WebDriver]:
    driver = chromium(1280, 800)
    try:
        yield driver
    finally:
        driver.quit()


def password(lab: LabHandle) -> str:
    return (lab.state.directory / "admin-password").read_text().strip()


def element(driver: WebDriver, css: str, text: str | None = None, timeout: float = 20) -> WebElement:
    """The first element matching ``css`` (whose text contains ``text``), waited for."""
    def found() -> WebElement | None:
        try:
            for candidate in driver.find_elements(By.CSS_SELECTOR, css):
                if text is None or text in candidate.text:
                    return candidate
        except StaleElementReferenceException:
            return None
        return None
    try:
        return wait_until(found, timeout, message=f"{css!r}" + (f" with {text!r}" if text else ""))
    except AssertionError as missing:
        raise AssertionError(f"{missing}\n--- the page shows:\n{shown(driver)}") from None


def shown(driver: WebDriver) -> str:
    """What the user sees (for a failure's message): the page's text and the console's errors."""
    text = driver.find_element(By.TAG_NAME, "body").text[:3000]
    try:
        console = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    except Exception:  # noqa: BLE001 (a driver without the log endpoint)
        console = []
    return text + ("\n--- console:\n" + "\n".join(console[-10:]) if console else "")


def gone(driver: WebDriver, css: str, timeout: float = 20) -> None:
    wait_until(lambda: not driver.find_elements(By.CSS_SELECTOR, css), timeout, message=f"{css!r} gone")


def type_into(driver: WebDriver, css: str, value: str) -> None:
    field = element(driver, css)
    field.send_keys(Keys.CONTROL, "a")        # as a user replaces a value (fires input events, unlike clear())
    field.send_keys(Keys.DELETE)
    field.send_keys(value)


def cell(driver: WebDriver, app_id: str, column: str) -> str:
    try:
        return driver.find_element(By.CSS_SELECTOR, f'tr[data-app-id="{app_id}"] td.{column}').text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def unlabelled(driver: WebDriver, form: str) -> list[str]:
    """The form's fields no <label for> names (screen readers and clicks on the label need one)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0] + ' :is(input, select, textarea)')]"
        ".filter(e => !e.id || !document.querySelector(`label[for='${e.id}']`)).map(e => e.id || e.outerHTML)", form)


def marathon_app(lab: LabHandle, app_id: str) -> dict | None:
    with lab.marathon() as client:
        resp = client.get(f"/v2/apps/{app_id.strip('/')}")
    return resp.json()["app"] if resp.status_code == 200 else None


def test_login_refuses_a_wrong_password_then_shows_the_services(browser: WebDriver, lab: LabHandle) -> None:
    front = lab.state.front_door
    assert httpx.get(f"{front}/marathon/v2/apps", timeout=5).status_code == 401    # the APIs stay closed
    module = httpx.get(f"{front}/ui/vendor/preact.module.js", timeout=5)         # the UI's files are open
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    browser.get(front + "/")
    type_into(browser, "#login-uid", "admin")
    type_into(browser, "#login-password", "not-the-password")
    element(browser, "#login-submit").click()
    assert "password" in element(browser, "#login-error").text.lower()
    type_into(browser, "#login-password", password(lab))
    element(browser, "#login-password").send_keys(Keys.ENTER)            # the keyboard is enough
    element(browser, "#services-table")
    browser.execute_script("window.navstarNotReloaded = true")


def test_create_a_load_balanced_app_from_the_form(browser: WebDriver, lab: LabHandle) -> None:
    element(browser, "#create-open").click()
    assert unlabelled(browser, "#create-form") == []
    type_into(browser, "#create-id", "Bad_ID")
    element(browser, "#create-submit").click()
    assert "not a valid id segment" in element(browser, "#create-id-error").text     # caught before sending

    type_into(browser, "#create-id", APP)
    type_into(browser, "#create-cmd", SERVE)
    type_into(browser, "#create-mem", "32")
    element(browser, "#create-lb-0").click()
    assert element(browser, "#create-vipname-0").text == f"{VIP}:80"
    # Marathon's own 422 (a health check protocol it does not know) lands in the form, nothing made.
    type_into(browser, "#create-extra", '{"healthChecks": [{"protocol": "BOGUS"}]}')
    element(browser, "#create-submit").click()
    refused = element(browser, "#create-extra-error").text
    assert "/healthChecks(0)/protocol" in refused and "Input should be" in refused, refused
    assert "422" in element(browser, "#create-form-error").text
    assert marathon_app(lab, APP) is None

    type_into(browser, "#create-extra", "{}")
    element(browser, "#create-submit").click()
    gone(browser, "#create-form")
    app = marathon_app(lab, APP)
    assert app is not None and app["portDefinitions"][0]["labels"] == {"VIP_0": f"{APP}:80"}
    # Running, as the event stream tells the list (no reload).
    wait_until(lambda: cell(browser, APP, "running") == "1" and cell(browser, APP, "status") == "Running", 40,
               message=f"{APP} running in the list")
    assert f"{VIP}:80" in cell(browser, APP, "vip-name") or f"{VIP}:80" in element(
        browser, f'tr[data-app-id="{APP}"]').text

    element(browser, f'tr[data-app-id="{APP}"] a').click()
    vip_row = element(browser, "#vips-table tr", text=f"{VIP}:80", timeout=30)
    element(browser, "#vips-table .backend", timeout=30)
    assert " 11." in vip_row.text, vip_row.text          # its allocated address (11.0.0.0/8)
    (task,) = lab.running(APP, 1)
    element(browser, "#tasks-table td", text=task["id"])

    def answered() -> str | None:
        out = lab.exec("agent-1", "curl", "-s", "--max-time", "3", f"http://{VIP}:80/")
        return out.stdout if out.returncode == 0 and "ui-" in out.stdout else None
    assert task["id"] in wait_until(answered, 30, message=f"{VIP} answers from agent-1")


def test_scale_restart_then_nodes_and_network(browser: WebDriver, lab: LabHandle) -> None:
    element(browser, "#nav-services").click()
    type_into(browser, 'tr[data-app-id="/ui-web"] .scale-input', "2")
    element(browser, 'tr[data-app-id="/ui-web"] button.scale').click()
    wait_until(lambda: cell(browser, APP, "running") == "2", 40, message=f"{APP} scaled to 2 in the list")
    before = {task["id"] for task in lab.running(APP, 2)}
    element(browser, 'tr[data-app-id="/ui-web"] button.restart').click()

    def restarted() -> bool:
        running = {task["id"] for task in lab.tasks(APP) if task.get("state") == "TASK_RUNNING"}
        return len(running) == 2 and not running & before
    wait_until(restarted, 60, message=f"{APP}'s two tasks replaced by the restart")
    wait_until(lambda: cell(browser, APP, "deployments") == "0" and cell(browser, APP, "running") == "2", 30,
               message=f"{APP} restarted in the list")

    element(browser, "#nav-nodes").click()
    private = element(browser, "#private-agents tr[data-agent-id='agent-1']")
    assert "reachable" in private.text and "9." in private.find_element(By.CSS_SELECTOR, ".overlay-subnet").text
    assert "reachable" in element(browser, "#public-agents tr[data-agent-id='public-agent-1']").text

    element(browser, "#nav-network").click()
    element(browser, "#network-vips tr", text=f"{VIP}:80")
    element(browser, "#overlay-table tr", text=lab.ip("agent-1"))
    type_into(browser, "#dns-name", "ui-web.marathon.mesos")
    element(browser, "#dns-submit").click()
    assert f"A {lab.ip('agent-1')}" in element(browser, "#dns-answer").text
    type_into(browser, "#dns-name", "no such name")
    element(browser, "#dns-submit").click()
    assert "DNS name" in element(browser, "#dns-error").text


def test_an_expired_session_returns_to_login_keeping_the_form(browser: WebDriver, lab: LabHandle) -> None:
    element(browser, "#nav-services").click()
    element(browser, "#create-open").click()
    type_into(browser, "#create-id", KEPT)
    type_into(browser, "#create-instances", "0")
    type_into(browser, "#create-cmd", "sleep 600")
    browser.delete_all_cookies()                # the login cookie gone, as when a session expires
    element(browser, "#create-submit").click()
    element(browser, ".overlay #login-password")
    assert element(browser, "#create-id").get_attribute("value") == KEPT
    assert marathon_app(lab, KEPT) is None
    type_into(browser, ".overlay #login-password", password(lab))
    element(browser, ".overlay #login-submit").click()
    gone(browser, ".overlay")
    gone(browser, "#create-form")               # the parked request went on after the login
    assert marathon_app(lab, KEPT) is not None
    element(browser, f'tr[data-app-id="{KEPT}"]')
    # The same id again: Marathon's 409 goes next to the id.
    element(browser, "#create-open").click()
    type_into(browser, "#create-id", KEPT)
    type_into(browser, "#create-instances", "0")
    type_into(browser, "#create-cmd", "sleep 600")
    element(browser, "#create-submit").click()
    assert element(browser, "#create-id-error").text == f"An app with id [{KEPT}] already exists."
    element(browser, "#create-open").click()


def test_destroy_asks_first(browser: WebDriver, lab: LabHandle) -> None:
    for app_id in (KEPT, APP):
        element(browser, f'tr[data-app-id="{app_id}"] button.destroy').click()
        element(browser, f'tr[data-app-id="{app_id}"] button.confirm-destroy').click()
        gone(browser, f'tr[data-app-id="{app_id}"]', timeout=40)
        assert marathon_app(lab, app_id) is None


def test_install_and_uninstall_a_package_from_its_options_form(browser: WebDriver, lab: LabHandle) -> None:
    element(browser, "#nav-packages").click()
    element(browser, "#catalogue button[data-package='static-site']").click()
    element(browser, "#install-form")
    assert unlabelled(browser, "#install-form") == []
    type_into(browser, "#opt_service_name", "ui-site")
    type_into(browser, "#opt_service_instances", "11")
    element(browser, "#install-submit").click()
    assert element(browser, "#opt_site_title-error").text == "required"         # from its schema
    assert element(browser, "#opt_service_instances-error").text == "must be at most 10"
    assert marathon_app(lab, SITE) is None

    type_into(browser, "#opt_service_instances", "1")
    type_into(browser, "#opt_site_title", "Hello UI")
    element(browser, "#install-submit").click()
    assert "/ui-site" in element(browser, "#install-done", timeout=30).text
    element(browser, "#installed-table tr[data-app-id='/ui-site']")
    assert marathon_app(lab, SITE)["env"]["SITE_TITLE"] == "Hello UI"
    lab.running(SITE, 1)

    element(browser, "#installed-table tr[data-app-id='/ui-site'] button.uninstall").click()
    gone(browser, "#installed-table tr[data-app-id='/ui-site']", timeout=30)
    assert marathon_app(lab, SITE) is None
    assert browser.execute_script("return window.navstarNotReloaded") is True

    element(browser, "#logout").click()                  # the cookie cleared: back to the login page
    element(browser, "#login-uid")
    assert not [c for c in browser.get_cookies() if c["name"] == "dcos-acs-auth-cookie"]
