"""Drive the web UI in headless Chromium, as a person would, and take a screenshot.

Uses the system's Chromium and chromedriver (Debian: ``apt-get install chromium chromium-driver``)
through selenium; nothing is downloaded. The test suite and the README screenshot share ``tour``:

    python -m jakiro.application.browser --out docs/webui.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


class BrowserMissing(RuntimeError):
    """Chromium or chromedriver is not installed."""


def find_chromium() -> tuple[str, str]:
    """Paths of the Chromium binary and of chromedriver, or ``BrowserMissing`` saying which is absent."""
    browser = next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)
    driver = shutil.which("chromedriver")
    missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} not found on PATH (Debian: apt-get install chromium chromium-driver)"
        )
    return browser, driver


@contextmanager
def headless_chromium(width: int = 1440, height: int = 1100) -> Iterator[Any]:
    """A selenium driver for a headless Chromium window of ``width`` x ``height``; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def status_text(driver: Any, tries: int = 20) -> str:
    """The status line's text (read again when the page re-renders it under our feet)."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By

    for _ in range(tries - 1):
        try:
            return driver.find_element(By.ID, "status").text.strip()
        except StaleElementReferenceException:
            continue
    return driver.find_element(By.ID, "status").text.strip()


def wait_for_answer(driver: Any, previous_status: str, timeout: float) -> str:
    """Wait until the status line shows a new final message (done or a warning); return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    from .webui import DONE, ERROR

    def finished(_: Any) -> str | bool:
        text = status_text(driver)
        return text if text != previous_status and text.startswith((DONE, ERROR)) else False

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(finished)


def send_message(driver: Any, text: str, timeout: float = 120) -> str:
    """Type ``text`` into the prompt box, press Enter and wait for the answer; return the status line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    before = status_text(driver)
    box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    return wait_for_answer(driver, before, timeout)


def regenerate_with(driver: Any, label: str, timeout: float = 120) -> str:
    """Pick the decoding whose radio label is ``label``, press Regenerate, wait; return the status line."""
    from selenium.webdriver.common.by import By

    before = status_text(driver)
    driver.find_element(By.XPATH, f"//*[@id='mode']//label[normalize-space()='{label}']").click()
    driver.find_element(By.ID, "regenerate").click()
    return wait_for_answer(driver, before, timeout)


def set_slider(driver: Any, elem_id: str, value: int) -> None:
    """Type ``value`` into the number box of the slider ``elem_id``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, f"#{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)


def press_midway(driver: Any, text: str, button: str, timeout: float = 120) -> None:
    """Send ``text`` and press the button ``button`` (an element id) once tokens stream in."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.send_keys(text, Keys.ENTER)
    WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda _: re.search(r"Generating with .*: \d+ tokens", status_text(driver))
    )
    driver.find_element(By.ID, button).click()


def stop_midway(driver: Any, text: str, timeout: float = 120) -> str:
    """Send ``text``, press Stop once tokens stream in, and return the status line after the stop."""
    from selenium.webdriver.support.ui import WebDriverWait

    press_midway(driver, text, "stop", timeout)
    return WebDriverWait(driver, 10).until(lambda _: status_text(driver).startswith("Stopped.") and status_text(driver))


def clear_midway(driver: Any, text: str, timeout: float = 120) -> None:
    """Send ``text``, press Clear once tokens stream in, and wait until the conversation is empty."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    press_midway(driver, text, "clear", timeout)
    WebDriverWait(driver, 10).until(lambda _: text not in driver.find_element(By.ID, "chatbot").text)


def tour(driver: Any, url: str, prompt: str, screenshot: str, timeout: float = 120) -> dict[str, str]:
    """Ask ``prompt`` with plain decoding, regenerate it with Jakiro, and save a screenshot.

    Returns the status lines, the stats table's text and the chat's HTML for checking.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    driver.find_element(By.XPATH, "//*[@id='mode']//label[normalize-space()='Plain decoding']").click()
    plain = send_message(driver, prompt, timeout)
    jakiro = regenerate_with(driver, "Jakiro (speculative)", timeout)
    driver.save_screenshot(screenshot)
    return {
        "plain": plain,
        "jakiro": jakiro,
        "stats": driver.find_element(By.ID, "stats").text,
        "chat": driver.find_element(By.ID, "chatbot").get_attribute("innerHTML"),
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """Serve the embedded model on a free loopback port and save the README screenshot."""
    parser = argparse.ArgumentParser(
        prog="python -m jakiro.application.browser",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="docs/webui.png")
    parser.add_argument("--prompt", default="Give me three tips for staying focused while studying.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args(argv)

    from .webui import build_demo, launch, load_model, parse_args, template_for

    model = load_model(parse_args([]))
    demo = build_demo(model, template_for("auto", model.tokenizer), max_new_tokens=args.max_new_tokens)
    try:
        url = launch(demo, port=free_port())
        with headless_chromium() as driver:
            seen = tour(driver, url, args.prompt, args.out, timeout=600)
        print(f"{seen['plain']}\n{seen['jakiro']}\n{seen['stats']}\nsaved {args.out}")
    finally:
        demo.close()


if __name__ == "__main__":
    main()
