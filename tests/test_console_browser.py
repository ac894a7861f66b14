"""The fleet console (host_tools/service/console.py) in a real browser: Debian's Chromium
(/usr/bin/chromium) driven by Selenium through /usr/bin/chromedriver, both paths given (Selenium's
own driver manager would try a download, which cannot work here). One browser and one real Service
(real Mosquitto, a VM sim gate board) for the whole file: log in through the page, see the board
listed, filter and page the device table, open the board's page (its heartbeat plots), send a
`display` from it and watch it reach SUCCEEDED, see a session appear in progress and then settle
(and its revenue per hour), see an alert raised (a charge-mismatch flag) and resolved, and dispatch
one command to a selection (one device answers, one never does; an actuating command whose
confirmation is dismissed is sent to nobody).

Screenshots, one per step, are written to build/test-artifacts/console/ (gitignored).
Without Chromium, its driver or selenium the browser test is skipped, and FAILS in CI (CI=true):
scripts/setup.sh installs them.
"""
from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from host_tools.cloud.ledger_open import open_ledger
from host_tools.cloud.session_model import Flag
from host_tools.cloud.session_store import SessionStore
from host_tools.service.config import load
from host_tools.service.run import Service
from tests.agentkit import CLOUD
from tests.test_ledger import DeviceChain
from tests.test_serve import write_config
from tests.test_serve_auth import Api, is_problem

ROOT = Path(__file__).resolve().parents[1]
ART = ROOT / "build" / "test-artifacts" / "console"
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1280,1000")
PW = "console-test-pw"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, DRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        msg = f"the console's browser test needs {', '.join(missing)}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(msg + " (CI: run scripts/setup.sh, which installs chromium and chromium-driver)")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in (*ARGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(a)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")   # belt and braces: Selenium Manager never goes online
        d = webdriver.Chrome(service=DriverService(executable_path=DRIVER), options=opts)
    d.set_window_size(1280, 1000)
    ART.mkdir(parents=True, exist_ok=True)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def console(module_broker, tmp_path_factory):
    """A real Service (as tests/test_serve.py starts it) over a site with one VM gate board, 120
    registered devices that never connect (the table's paging), and an operator account."""
    from tests.appkit import make_site
    root = tmp_path_factory.mktemp("console")
    site = make_site(module_broker, root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_MQTT_PW", CLOUD[1])
        mp.setenv("TEST_API_TOKEN", "t0ken")
        cfg = write_config(root, site)
        # alerts evaluated twice a second; a session flag counts for 8 s (raised, then resolved)
        cfg.write_text(cfg.read_text() + "\n[alerts]\nevery_s = 0.5\nflag_window_s = 8\n")
        svc = Service(load(cfg)).start()
        try:
            board = site.board("gate-1", "gate")
            site.reg.add_many([(f"lot9-vend-{i:03d}", os.urandom(32), "vending", "sim-vending") for i in range(120)])
            assert svc.accounts is not None
            svc.accounts.add_user("olga", "operator", PW)
            yield svc, site, board, root
        finally:
            svc.stop()
            site.close()


def test_the_console_logs_in_lists_commands_and_shows_sessions(browser, console):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait
    svc, site, board, root = console
    d = browser
    step = iter(range(1, 100))

    def shot(name: str) -> None:
        d.save_screenshot(str(ART / f"{next(step):02d}-{name}.png"))

    def until(what, timeout: float = 15.0):
        try:
            # the pages re-render on their refresh: an element read as it is replaced is asked again
            return WebDriverWait(d, timeout, 0.1, ignored_exceptions=(StaleElementReferenceException,)).until(
                lambda _: what())
        except Exception:
            shot("FAILED")
            raise

    def text(css: str) -> str:
        els = d.find_elements(By.CSS_SELECTOR, css)
        try:
            return els[0].text if els else ""
        except StaleElementReferenceException:   # the page re-rendered it between find and read
            return ""

    # the root redirects to the console, which asks for a login; a wrong password is refused in words
    d.get(svc.url + "/")
    until(lambda: d.find_elements(By.ID, "login-user"))
    assert d.current_url.startswith(svc.url + "/console/")
    d.find_element(By.ID, "login-user").send_keys("olga")
    d.find_element(By.ID, "login-password").send_keys("wrong")
    d.find_element(By.ID, "login-submit").click()
    until(lambda: "wrong user name or password" in text("#login-error"))
    shot("login-refused")
    d.find_element(By.ID, "login-password").clear()
    d.find_element(By.ID, "login-password").send_keys(PW)
    d.find_element(By.ID, "login-submit").click()

    # the devices: the board listed (first page of 50, id order), the next page, a filter
    until(lambda: d.find_elements(By.CSS_SELECTOR, '#devices tr[data-id="gate-1"]'))
    assert "olga (operator)" in text("#who")
    rows = d.find_elements(By.CSS_SELECTOR, "#devices tbody tr")
    assert len(rows) == 50 and "page 1" in text("#devices-status")
    if "online" in _json(svc.url + "/v1/devices?limit=1")[0]:   # a server that keeps presence
        until(lambda: text('#devices tr[data-id="gate-1"]').split()[4:5] == ["online"])
    shot("devices")
    d.find_element(By.ID, "next").click()
    until(lambda: "page 2" in text("#devices-status"))
    assert not d.find_elements(By.CSS_SELECTOR, '#devices tr[data-id="gate-1"]')
    d.find_element(By.ID, "prev").click()
    until(lambda: "page 1" in text("#devices-status"))
    Select(d.find_element(By.ID, "f-kind")).select_by_value("gate")
    d.find_element(By.CSS_SELECTOR, "#filters button").click()
    until(lambda: len(d.find_elements(By.CSS_SELECTOR, "#devices tbody tr")) == 1)
    shot("devices-filtered")

    # the board's page: status, its heartbeats (the board beats every 5 s) drawn as SVG plots
    d.find_element(By.LINK_TEXT, "gate-1").click()
    until(lambda: "sim-gate" in text("#device-info"))
    until(lambda: d.find_elements(By.CSS_SELECTOR, 'svg[data-key="heap_avg"] polyline'), 20)
    assert "s ago" in text("#dd-last-heartbeat")
    assert "0 charged, 0 sessions" in text("#dd-offline-budget-used")   # nothing owed offline, no policy
    shot("device")

    # a display command sent from the page reaches SUCCEEDED, and the board shows it
    Select(d.find_element(By.ID, "cmd-name")).select_by_value("display")
    until(lambda: d.find_elements(By.CSS_SELECTOR, '#cmd-args input[name="text"]'))
    d.find_element(By.CSS_SELECTOR, '#cmd-args input[name="text"]').send_keys("hi console")
    d.find_element(By.ID, "cmd-send").click()
    until(lambda: "SUCCEEDED" in text("#cmd-log li .state"))
    board.hw.wait_output("display", "hi console", 5)
    # and the device's command history (the audit log's, refreshed with the page) lists it
    until(lambda: "display" in text("#device-commands") and "SUCCEEDED" in text("#device-commands"), 15)
    shot("command-succeeded")

    # a session appears in progress, then settles (its signed records committed to the ledger)
    led = open_ledger(str(root / "ledger.db"))
    try:
        chain = DeviceChain("lot9-vend-000")
        t0 = int(time.time()) - 600
        led.commit(chain.records([chain.make("sess_open", sid="s-console", payer="payer-7", t0=t0, slot=1),
                                  chain.make("sess_open", sid="s-offline", payer="payer-8", t0=t0 + 1, slot=2,
                                             offline=True)]))
        d.find_element(By.LINK_TEXT, "Sessions").click()
        until(lambda: "s-console" in text("#sessions-open"))
        # the one opened offline is listed with its re-authorisation: nobody has asked yet
        until(lambda: "s-offline" in text("#sessions-offline") and "s-console" not in text("#sessions-offline"))
        assert text('#sessions-offline tr[data-sid="s-offline"] .reauth') == "awaiting"
        shot("session-open")
        led.commit(chain.records([chain.make("sess_close", sid="s-console", payer="payer-7", t0=t0, slot=1,
                                             amount=1234567, cur="CNY", t1=t0 + 300, lines=[["cola", 1, 1234567]],
                                             reason="done")]))
        until(lambda: "s-console" in text("#sessions-closed") and "s-console" not in text("#sessions-open"), 10)
        assert "12345.67 CNY" in text('#sessions-closed tr[data-sid="s-console"] .amount')
        d.find_element(By.ID, "rev-site").send_keys("lot9-")
        d.find_element(By.ID, "rev-go").click()
        until(lambda: "12345.67 CNY" in text("#revenue-table") and "lot9-vend-000" in text("#revenue-table"))
        shot("session-settled")
        # the session service flags a charge: the alert is raised (the flag and the open alert are
        # shown), and resolved once the flag is older than the rule's window
        SessionStore(led).add_flag(Flag("charge_mismatch", "lot9-vend-000", "s-console", "charged 1500, costs 1000",
                                        device_amount=1000, cloud_amount=1000, charged=1500, cur="CNY",
                                        at=time.time()))
        # the site's reconciliation: the board never sent a heartbeat, so it is unknown until the flag
        # makes it flagged (the section reloads with the page every 5 s)
        site = d.find_element(By.ID, "recon-site")
        site.send_keys("lot9-")
        until(lambda: text('#recon-table tr[data-id="lot9-vend-000"] .status') == "flagged", 10)
        assert "charge_mismatch x1" in text('#recon-table tr[data-id="lot9-vend-000"]')
        assert "120 devices: 0 mismatch · 1 flagged · 0 pending · 119 unknown" in text("#recon-totals")
        shot("reconciliation")
    finally:
        led.close()
    d.find_element(By.LINK_TEXT, "Devices").click()
    until(lambda: d.find_elements(By.ID, "f-kind"))
    Select(d.find_element(By.ID, "f-kind")).select_by_value("")    # the filter outlives the page
    d.find_element(By.CSS_SELECTOR, "#filters button").click()
    until(lambda: "charge_mismatch" in text("#alerts") and "lot9-vend-000" in text("#alerts"), 10)
    assert text('#devices tr[data-id="lot9-vend-000"] td.alerts') == "1"
    shot("alert-raised")
    d.find_element(By.LINK_TEXT, "lot9-vend-000").click()       # its page: the flag and the open alert
    until(lambda: "charge_mismatch" in text("#device-flags") and "15.00 CNY" in text("#device-flags")
          and "charge_mismatch" in text("#device-alerts"))
    d.back()
    until(lambda: d.find_elements(By.CSS_SELECTOR, '#devices tr[data-id="lot9-vend-000"]'))

    # select many, one command: the board answers, a device that never connects times out
    for dev in ("gate-1", "lot9-vend-000"):
        d.find_element(By.CSS_SELECTOR, f'#devices tr[data-id="{dev}"] input.sel').click()
    assert "2 selected" in text("#selected-count")
    Select(d.find_element(By.ID, "bulk-name")).select_by_value("get_state")
    tmo = d.find_element(By.ID, "bulk-timeout")
    tmo.clear()
    tmo.send_keys("2")
    d.find_element(By.ID, "bulk-send").click()
    until(lambda: "SUCCEEDED" in text('#devices tr[data-id="gate-1"] .result')
          and "TIMED_OUT" in text('#devices tr[data-id="lot9-vend-000"] .result'), 15)
    shot("bulk-dispatched")
    until(lambda: not d.find_element(By.ID, "alerts").is_displayed(), 15)     # resolved: no open alert
    assert text('#devices tr[data-id="lot9-vend-000"] td.alerts') == ""
    shot("alert-resolved")

    # an actuating command asks first; dismissed, it is sent to nobody (the audit log has no call)
    before = len(svc.accounts.audit(limit=1000)) if svc.accounts else 0
    Select(d.find_element(By.ID, "bulk-name")).select_by_value("reboot")
    d.find_element(By.ID, "bulk-send").click()
    dialog = until(lambda: _alert(d))
    assert "reboot acts on the world" in dialog.text and "2 device(s)" in dialog.text
    dialog.dismiss()
    until(lambda: "not confirmed" in (d.find_element(By.CSS_SELECTOR, '#devices tr[data-id="gate-1"] .result')
                                      .get_attribute("title") or ""))
    assert svc.accounts is not None and len(svc.accounts.audit(limit=1000)) == before
    shot("actuating-not-confirmed")

    # money in the page: integer minor units by string arithmetic, read as their JSON text (a float
    # would turn 2^53 + 1 into 2^53)
    got = d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "import('/console/static/app.js').then((m) => done([m.money('5', 'CNY'), m.money('-1234', 'USD'),"
        " m.money('500', 'JPY'), m.money('1', 'KWD'), m.money(m.parse('{\"amount\": 9007199254740993}').amount, 'EUR'),"
        " m.money(null, 'EUR'), m.money('12a', 'EUR')]))")
    assert got == ["0.05 CNY", "-12.34 USD", "500 JPY", "0.001 KWD", "90071992547409.93 EUR", "", "12a"]

    # log out: the console asks for a login again and the session is over
    d.find_element(By.ID, "logout").click()
    until(lambda: d.find_elements(By.ID, "login-user"))
    d.get(svc.url + "/console/#/devices")
    until(lambda: d.find_elements(By.ID, "login-user"))
    shot("logged-out")


def _json(url: str):
    req = urllib.request.Request(url, headers={"Authorization": "Bearer t0ken"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _alert(d):
    from selenium.common.exceptions import NoAlertPresentException
    try:
        return d.switch_to.alert
    except NoAlertPresentException:
        return None


def test_the_console_routes_and_their_refusals(tmp_path):
    """Without a browser: / redirects, the shell and its module answer with the security headers,
    the command list needs a login, a path outside the static folder is not served."""
    api = Api(f"sqlite:///{tmp_path / 'r.db'}")
    try:
        viewer = api.user("vic", "viewer")
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as e:
            opener.open(api.url + "/")
        assert e.value.code == 307 and e.value.headers["Location"] == "/console/"
        st, html, hdr = api.call("/console/")
        assert st == 200 and 'src="/console/static/app.js"' in html
        assert "default-src 'self'" in hdr["Content-Security-Policy"] and hdr["X-Frame-Options"] == "DENY"
        st, js, hdr = api.call("/console/static/app.js")
        assert st == 200 and "X-CSRF-Token" in js and "frame-ancestors 'none'" in hdr["Content-Security-Policy"]
        assert is_problem(api.call("/console/commands.json"), 401, "unauthenticated")
        st, cmds, _ = api.call("/console/commands.json", token=viewer)
        by = {c["name"]: c for c in cmds}
        assert st == 200 and by["reboot"]["actuating"] and not by["display"]["actuating"]
        assert by["display"]["args"][0] == {"name": "text", "type": "tstr", "required": True}
        assert api.call("/console/static/../console.py")[0] == 404
        assert api.call("/console/static/nope.js")[0] == 404
        assert "/console/" not in api.call("/openapi.json")[1]["paths"]
    finally:
        api.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None
