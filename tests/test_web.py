"""The web page: served offline-safe, and driven in a real headless Chromium."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from _fixtures_owner import login_link


STATIC = Path(__file__).resolve().parents[1] / "daemon" / "http" / "static"
SCREENSHOT_COPY = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "web.png"
UPDATE_SCREENSHOTS = os.environ.get("PENNELLO_UPDATE_SCREENSHOTS") == "1"  # refresh docs/ deliberately
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--no-first-run", "--window-size=1100,1000")


def test_page_and_assets_are_served_with_a_strict_policy(api_server):
    url = api_server()
    page = requests.get(f"{url}/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = requests.get(f"{url}/assets/{name}")
        assert response.status_code == 200 and kind in response.headers["Content-Type"]
    for name in _page_files() - {"index.html", "style.css"}:  # ES modules need a JavaScript type
        response = requests.get(f"{url}/assets/{name}")
        assert response.status_code == 200 and "javascript" in response.headers["Content-Type"], name
    assert requests.get(f"{url}/assets/../web.py").status_code == 404


def test_nothing_is_loaded_from_elsewhere():
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), path.name
        assert not re.search(r"url\(\s*[\"']?(https?:)?//", text), path.name
        assert not re.search(r"fetch\(\s*[\"'`]https?:", text), path.name
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script (CSP)


def _chromium(*extra_flags: str):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROME_FLAGS, *extra_flags):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    session.set_page_load_timeout(60)
    return session


@pytest.fixture
def browser():
    session = _chromium()
    yield session
    session.quit()


@pytest.fixture
def rebinding_browser():
    """A browser for which rebind.example resolves to 127.0.0.1, as after a DNS-rebinding attack."""
    session = _chromium("--host-resolver-rules=MAP rebind.example 127.0.0.1")
    yield session
    session.quit()


def _wait(browser, condition, timeout: float = 60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout, poll_frequency=0.1).until(condition)


def _loaded_result_image(browser):
    images = browser.find_elements("css selector", "#result img")
    ready = images and browser.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", images[0])
    return images[0] if ready else None


def _generate(browser, prompt: str):
    _wait(browser, lambda b: b.find_element("id", "generate-section").is_displayed())
    _wait(browser, lambda b: b.find_element("id", "width").get_attribute("value") == "64")
    browser.find_element("id", "prompt").send_keys(prompt)
    browser.find_element("id", "generate").click()
    image = _wait(browser, _loaded_result_image)
    _wait(browser, lambda b: b.find_element("id", "status-text").text.startswith("Done in"))
    return image


@pytest.mark.browser
def test_generate_in_the_browser_shows_the_picture(api_server, browser, tmp_path):
    url = api_server()
    browser.get(login_link(url))  # as `pennello open` and the tray's "Open web page" do
    assert "owner" in browser.find_element("id", "who").text or _wait(
        browser, lambda b: "owner" in b.find_element("id", "who").text)
    image = _generate(browser, "a yellow star on a green background")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 64
    _wait(browser, lambda b: b.find_elements("css selector", "#gallery img"))

    shot = tmp_path / "web.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    screen = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    ratio = browser.execute_script("return window.devicePixelRatio")
    box = browser.execute_script("const r = arguments[0].getBoundingClientRect();"
                                 "return [r.left, r.top, r.width, r.height]", image)
    left, top, width, height = (round(v * ratio) for v in box)
    assert width >= 200 and height >= 200  # shown large, not as a thumbnail
    area = screen[top + 4:top + height - 4, left + 4:left + width - 4]
    assert area.size and area.std() > 10, "the picture's area of the screenshot is blank"
    background = screen[5, 5]
    assert np.abs(area - background).sum(axis=2).mean() > 20  # differs from the page around it

    # What the browser shows is the picture the daemon saved.
    src = image.get_attribute("src")
    saved = np.asarray(Image.open(io.BytesIO(requests.get(src).content)).convert("RGB")).astype(int)
    shown = np.asarray(Image.fromarray(area.astype("uint8")).resize((64, 64), Image.NEAREST)).astype(int)
    assert np.abs(shown - saved).mean() < 40
    if UPDATE_SCREENSHOTS:
        shutil.copyfile(shot, SCREENSHOT_COPY)


@pytest.mark.browser
def test_a_lan_browser_pairs_then_generates(api_server, browser):
    url, lan = api_server(lan=True)
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    browser.get(f"{lan}/?pair={code}")
    _wait(browser, lambda b: b.find_element("id", "pair-section").is_displayed())
    assert browser.find_element("id", "pair-code").get_attribute("value") == code
    name = browser.find_element("id", "pair-name")
    name.clear()
    name.send_keys("test browser")
    browser.find_element("css selector", "#pair-form button").click()
    _wait(browser, lambda b: "test browser" in b.find_element("id", "who").text)
    assert not browser.find_element("id", "devices-section").is_displayed()  # owner only
    _generate(browser, "a kite seen from a paired browser")
    tokens = requests.get(f"{url}/api/tokens").json()["tokens"]
    assert any(t["name"] == "test browser" and t["last_used"] for t in tokens)


@pytest.mark.browser
def test_a_wrong_code_is_explained_in_the_page(api_server, browser):
    url, lan = api_server(lan=True)
    requests.post(f"{url}/api/pair/code")
    browser.get(f"{lan}/?pair=ZZZZZZZZ")
    _wait(browser, lambda b: b.find_element("id", "pair-section").is_displayed())
    browser.find_element("css selector", "#pair-form button").click()
    message = _wait(browser, lambda b: b.find_element("id", "pair-error").text)
    assert "pairing code" in message


# --- the HTTP surface in a real browser (docs/security-scopes.md) ----------------------------------

@pytest.fixture
def other_site(tmp_path):
    """Another web site on this machine (another port, so another origin), serving ``page.html``."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    site = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{site.server_address[1]}"
    site.shutdown()
    site.server_close()


@pytest.mark.browser
def test_a_page_of_another_site_cannot_act_as_the_owner(api_server, browser, other_site, caplog):
    import logging

    caplog.set_level(logging.DEBUG, logger="pennello.daemon.http.app")
    url = api_server()
    browser.get(login_link(url))  # the browser holds the owner's session: it must not help the other site
    caplog.clear()  # only what the other site's page makes happen counts below
    folder, site = other_site
    (folder / "page.html").write_text(f"""<!doctype html><title>start</title>
<form id="f" method="post" action="{url}/api/pair/code" target="sink"></form>
<iframe name="sink"></iframe>
<script>
fetch("{url}/api/pair/code", {{method: "POST", mode: "no-cors"}})
  .then(() => {{ document.getElementById("f").submit(); document.title = "sent"; }})
  .catch((e) => {{ document.title = "error " + e; }});
</script>""")
    browser.get(f"{site}/page.html")
    _wait(browser, lambda b: b.title == "sent")
    _wait(browser, lambda b: caplog.text.count("http POST /api/pair/code -> 403") >= 2, timeout=30)
    assert "-> 201" not in caplog.text
    assert requests.get(f"{url}/api/pair/status").json()["code_expires_in_s"] is None  # no code was made

    # The daemon's own page, holding this run's page secret, can.
    browser.get(f"{url}/")
    _wait(browser, lambda b: b.find_element("id", "devices-section").is_displayed())
    browser.find_element("id", "new-code").click()
    code = _wait(browser, lambda b: b.find_element("id", "code").text)
    assert requests.get(f"{url}/api/pair/status").json()["code_expires_in_s"] > 0
    assert re.fullmatch(r"[2-9A-HJ-NP-Z]{8}", code)


@pytest.mark.browser
def test_a_rebinding_page_gets_nothing(api_server, rebinding_browser):
    url = api_server()
    port = url.rsplit(":", 1)[1]
    rebinding_browser.get(f"http://rebind.example:{port}/")
    body = rebinding_browser.find_element("tag name", "body").text
    assert "host_not_allowed" in body and "rebind.example" in body  # our daemon answered, and refused
    assert "pennello-page" not in rebinding_browser.page_source
    rebinding_browser.get(f"http://rebind.example:{port}/api/outputs")
    assert "host_not_allowed" in rebinding_browser.find_element("tag name", "body").text


def _page_files() -> set[str]:
    """Every file the page loads: index.html's assets and, from them, every module they import."""
    index = (STATIC / "index.html").read_text(encoding="utf-8")
    wanted, seen = list(re.findall(r'(?:src|href)="/assets/([\w.-]+)"', index)), {"index.html"}
    while wanted:
        name = wanted.pop()
        if name not in seen:
            seen.add(name)
            wanted += re.findall(r'^import .*?"\./([\w.-]+)";$', (STATIC / name).read_text(encoding="utf-8"), re.M)
    return seen


def test_a_built_wheel_ships_every_file_the_page_loads(tmp_path):
    import subprocess
    import sys
    import zipfile

    root = STATIC.parents[2]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(tmp_path), str(root)], check=True, timeout=300)
    (wheel,) = tmp_path.glob("pennello-*.whl")
    shipped = {Path(name).name for name in zipfile.ZipFile(wheel).namelist()
               if name.startswith("pennello/daemon/http/static/")}
    needed = _page_files()
    assert {"app.js", "api.js", "viewer.js", "style.css"} <= needed  # the crawl follows imports
    assert needed <= shipped
    assert shipped == {path.name for path in STATIC.iterdir()}  # and nothing is left behind
