"""Drives shardgate's web console in Debian's Chromium through Selenium.

    console_drive.py --admin http://127.0.0.1:A --data http://127.0.0.1:D/prod \
        --token TOKEN --shots docs/console

Signs in (a wrong token first), sees the configured routes, creates an API key
in a usage plan and uses it on the data plane, sees the usage chart and live
traffic after the requests, disables the key and sees the data plane refuse it.
Saves a screenshot of each page under --shots. Exits 0 when every step held;
otherwise prints the step that failed and exits 1. Nothing leaves loopback.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT_S = 15


def data_get(url, key=None):
    req = urllib.request.Request(url)
    if key:
        req.add_header("x-api-key", key)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def until(what, fn, timeout=WAIT_S):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what}: not seen within {timeout} s (last error: {last})")


def browser(profile):
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1366,900",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(options=opts, service=service)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--admin", required=True)
    ap.add_argument("--data", required=True, help="the stage's base URL")
    ap.add_argument("--token", required=True)
    ap.add_argument("--plan", default="gold")
    ap.add_argument("--shots", required=True)
    a = ap.parse_args()
    os.makedirs(a.shots, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="shardgate-chromium-")
    d = browser(profile)
    wait = WebDriverWait(d, WAIT_S)
    step = "start"
    try:
        def shot(name):
            # Let charts draw before the picture.
            time.sleep(0.3)
            d.save_screenshot(os.path.join(a.shots, f"{name}.png"))

        def text():
            return d.find_element(By.TAG_NAME, "body").text

        step = "a wrong token is refused"
        d.get(f"{a.admin}/console")
        box = wait.until(ec.visibility_of_element_located((By.ID, "token")))
        box.send_keys("not-the-token-at-all")
        d.find_element(By.ID, "login").click()
        until("the wrong-token message", lambda: "Wrong token" in d.find_element(By.ID, "login-error").text)
        assert d.execute_script("return sessionStorage.getItem('shardgate.token')") is None
        shot("login-refused")

        step = "sign in and see the configured routes"
        box = d.find_element(By.ID, "token")
        box.clear()
        box.send_keys(a.token)
        d.find_element(By.ID, "login").click()
        until("the routes table", lambda: d.find_elements(By.CSS_SELECTOR, "table.routes"))
        body = text()
        for want in ("GET /hello", "GET /keyed", "GET /pets/{id}", "http_proxy", "required", "30 s"):
            assert want in body, f"{want!r} not on the APIs page"
        assert d.execute_script("return sessionStorage.getItem('shardgate.token')") == a.token
        assert d.execute_script("return localStorage.length") == 0, "the token must not reach local storage"
        shot("apis")

        step = "create a key in the plan; its value is shown once"
        d.find_element(By.LINK_TEXT, "API keys").click()
        name = wait.until(ec.visibility_of_element_located((By.ID, "key-name")))
        name.send_keys("console-key")
        Select(d.find_element(By.ID, "key-plan")).select_by_visible_text(a.plan)
        d.find_element(By.ID, "create-key").click()
        value = until(
            "the new key's value",
            lambda: d.find_element(By.ID, "new-key-value").text.strip(),
        )
        assert len(value) >= 20, value
        shot("keys")

        step = "the key works on the data plane; no key is refused"
        until("the key accepted", lambda: data_get(f"{a.data}/keyed", value)[0] == 200)
        status, _ = data_get(f"{a.data}/keyed")
        assert status == 403, f"no key: {status}"
        for _ in range(24):
            status, _ = data_get(f"{a.data}/keyed", value)
            assert status == 200, status
        for i in range(10):
            data_get(f"{a.data}/pets/{i % 3}")

        step = "the usage chart after traffic"
        d.find_element(By.LINK_TEXT, "Usage plans").click()

        def charted():
            fig = d.find_element(By.ID, f"usage-{a.plan}")
            fig.find_element(By.CSS_SELECTOR, ".uplot canvas")
            cells = [c.text for c in fig.find_elements(By.CSS_SELECTOR, "table.usage td")]
            return any(c.replace(",", "").isdigit() and int(c.replace(",", "")) >= 25 for c in cells)

        # Usage reaches the report on the workers' tick: reload the page until it does.
        until("the plans page", lambda: d.find_elements(By.ID, f"usage-{a.plan}"))
        end = time.monotonic() + WAIT_S
        while not charted():
            assert time.monotonic() < end, "no usage of 25+ requests in the chart's table"
            time.sleep(0.5)
            d.refresh()
            until("the plans page", lambda: d.find_elements(By.ID, f"usage-{a.plan}"))
        assert "console-key" in text()
        shot("plans")

        step = "live traffic"
        d.find_element(By.LINK_TEXT, "Live traffic").click()
        until("the traffic table", lambda: d.find_elements(By.ID, "traffic-table"))
        for _ in range(30):
            data_get(f"{a.data}/hello")
            time.sleep(0.05)

        def traffic_seen():
            rows = d.find_elements(By.CSS_SELECTOR, "#traffic-table tbody tr")
            text_rows = [r.text for r in rows]
            keyed = [r for r in text_rows if "GET /keyed" in r]
            return keyed and d.find_elements(By.CSS_SELECTOR, "#traffic-chart .uplot canvas") and \
                d.find_element(By.ID, "stat-rps").text not in ("–", "0.0")

        until("live traffic (a rate over 0 and the per-route table)", traffic_seen)
        # A few more readings, so that the picture has a line.
        for _ in range(40):
            data_get(f"{a.data}/pets/{_ % 4}")
            time.sleep(0.1)
        shot("traffic")

        step = "disable the key; the data plane refuses it"
        d.find_element(By.LINK_TEXT, "API keys").click()
        btn = until(
            "the Disable button",
            lambda: d.find_element(By.XPATH, "//button[normalize-space()='Disable console-key']"),
        )
        btn.click()
        until("the key shown disabled", lambda: d.find_elements(
            By.XPATH, "//table[@id='keys']//tr[td[1][normalize-space()='console-key']]//span[normalize-space()='disabled']"))
        until("the disabled key refused", lambda: data_get(f"{a.data}/keyed", value)[0] == 403)
        shot("keys-disabled")

        step = "deploy the config to the stage, then roll back to the file"
        d.find_element(By.LINK_TEXT, "APIs").click()
        until("the deploy button", lambda: d.find_element(
            By.XPATH, "//button[normalize-space()='Deploy the config to prod']")).click()
        until("the deployment's result", lambda: "stage prod serves it" in d.find_element(By.ID, "status").text)
        until("the stage serving the deployment", lambda: "Serves deployment" in text())
        Select(until("the deployment picker", lambda: d.find_element(By.NAME, "deployment"))).select_by_value("")
        d.find_element(By.XPATH, "//button[normalize-space()='Apply (roll back or forward)']").click()
        until("the rollback's result", lambda: "now serves the config file" in d.find_element(By.ID, "status").text)
        until("the stage serving the file", lambda: "Serves the config file" in text())
        status, _ = data_get(f"{a.data}/hello")
        assert status == 200, status

        step = "reload, upstream health, cluster"
        d.find_element(By.ID, "reload").click()
        until("the reload's result", lambda: "Config reloaded: generation" in d.find_element(By.ID, "status").text)
        d.find_element(By.LINK_TEXT, "Upstreams").click()
        until("the upstream group's targets", lambda: d.find_elements(By.XPATH, "//table//span[normalize-space()='up']"))
        shot("upstreams")
        d.find_element(By.LINK_TEXT, "Cluster").click()
        until("the cluster page", lambda: "Not in cluster mode" in text())

        step = "no errors in the browser's console"
        # Expected: the wrong token's 401, and /cluster's 404 outside cluster mode.
        expected = ("status of 401", "/cluster - Failed to load resource: the server responded with a status of 404")
        severe = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                  and not any(x in e.get("message", "") for x in expected)]
        assert not severe, f"browser console errors: {severe}"
        print("console: every step held")
        return 0
    except Exception as e:  # noqa: BLE001 - reported with the step
        print(f"console step failed: {step}: {type(e).__name__}: {e}", file=sys.stderr)
        try:
            d.save_screenshot(os.path.join(a.shots, "failed.png"))
            print(f"page text at failure:\n{d.find_element(By.TAG_NAME, 'body').text}", file=sys.stderr)
            for entry in d.get_log("browser"):
                print(f"browser: {entry}", file=sys.stderr)
        except Exception:  # noqa: BLE001
            pass
        return 1
    finally:
        d.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
