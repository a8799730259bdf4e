#!/usr/bin/python3
"""A person with a browser, driven by Selenium + chromedriver (Debian's
chromium, chromium-driver and python3-selenium): open a protected DVR page
through camgate, get camgate's login page, sign in, see the DVR page and its
MJPEG <img> play, sign out, and be asked to sign in again.

Runs inside the test's WAN namespace (the Rust test `browser.rs` starts it
and checks the result). Prints one JSON object with what the browser saw;
writes screenshots to --out. Exits non-zero only when the browser itself
cannot be driven; the test judges the observations.
"""

import argparse
import json
import os
import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait


def browser(args):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",  # root in a test namespace
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=420,800",  # a phone-sized window
        f"--user-data-dir={args.out}/profile",
        # camgate's self-signed certificate: trusted by its SPKI pin only.
        f"--ignore-certificate-errors-spki-list={args.spki}",
        f"--host-resolver-rules=MAP {args.host} {args.address}",
    ):
        options.add_argument(flag)
    # Network events, to say why a request failed if one does.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service("/usr/bin/chromedriver", log_output=f"{args.out}/chromedriver.log")
    return webdriver.Chrome(options=options, service=service)


def network_events(driver):
    """The DevTools network events of requests that failed or were answered."""
    events = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.loadingFailed", "Network.responseReceived"):
            params = message["params"]
            response = params.get("response", {})
            events.append([message["method"], params.get("requestId"), response.get("url"),
                           response.get("status"), params.get("errorText"), params.get("blockedReason")])
    return events


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--spki", required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ["XDG_CONFIG_HOME"] = f"{args.out}/xdg"

    seen = {}
    driver = browser(args)
    try:
        wait = WebDriverWait(driver, 20)
        base = f"https://{args.host}" + ("" if args.port == 443 else f":{args.port}")

        driver.get(base + args.path)
        wait.until(expected_conditions.presence_of_element_located((By.ID, "password")))
        seen["login_url"] = driver.current_url
        seen["login_title"] = driver.title
        seen["login_styled"] = driver.execute_script(
            "return getComputedStyle(document.querySelector('button')).backgroundColor")
        driver.save_screenshot(f"{args.out}/login.png")

        driver.find_element(By.ID, "user").send_keys(args.user)
        driver.find_element(By.ID, "password").send_keys("not the password")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".error")))
        seen["wrong_password_message"] = driver.find_element(By.CSS_SELECTOR, ".error").text

        driver.find_element(By.ID, "user").clear()
        driver.find_element(By.ID, "user").send_keys(args.user)
        driver.find_element(By.ID, "password").send_keys(args.password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "live")))
        seen["after_login_url"] = driver.current_url
        seen["dvr_heading"] = driver.find_element(By.TAG_NAME, "h1").text
        # The MJPEG tile: decoded frames give it a size.
        wait.until(lambda d: d.execute_script(
            "const i = document.getElementById('live'); return i.naturalWidth > 0"))
        seen["img_width"] = driver.execute_script("return document.getElementById('live').naturalWidth")
        seen["cookies_visible_to_script"] = driver.execute_script("return document.cookie")
        driver.save_screenshot(f"{args.out}/dvr.png")

        driver.get(base + "/.camgate/logout")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(expected_conditions.presence_of_element_located((By.ID, "password")))
        seen["after_logout_url"] = driver.current_url

        driver.get(base + args.path)
        wait.until(expected_conditions.presence_of_element_located((By.ID, "password")))
        seen["protected_after_logout_url"] = driver.current_url
    except Exception as error:  # report what was seen so far, then fail
        seen["error"] = f"{type(error).__name__}: {error}"
        try:
            driver.save_screenshot(f"{args.out}/error.png")
            seen["error_page"] = driver.page_source[:2000]
            seen["error_resources"] = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => "
                "[e.name, e.nextHopProtocol, e.responseStart, e.transferSize])")
            seen["error_network"] = network_events(driver)
        except Exception:
            pass
    finally:
        driver.quit()
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
