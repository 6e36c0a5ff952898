"""The web page as an app: every feature of the page driven in a real headless Chromium, on a phone
and a desktop screen, in light and dark. Its picture routes over plain HTTP (delete, preview) are
tests/test_web_pictures_api.py."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import requests

from _fixtures_owner import login_link
from test_web import _chromium, _wait
from test_web_install import stand_in  # noqa: F401 (a fixture: a stand-in model on a loopback mirror)
from test_web_pictures_api import _draw, _pair


# --- the page in a real Chromium -----------------------------------------------------------------------

PHONE, DESKTOP = (390, 844, True), (1280, 800, False)
SCREENSHOTS = Path(__file__).resolve().parents[1] / "docs" / "screenshots"
UPDATE_SCREENSHOTS = os.environ.get("PENNELLO_UPDATE_SCREENSHOTS") == "1"  # refresh docs/ deliberately
PICTURE = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "web.png"


@pytest.fixture
def browser(tmp_path):
    session = _chromium()
    session.downloads = tmp_path / "downloads"  # type: ignore[attr-defined]
    session.downloads.mkdir()
    session.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(session.downloads)})
    yield session
    problems = [entry for entry in session.get_log("browser") if entry["level"] == "SEVERE"
                and "status of 40" not in entry["message"]]  # 4xx answers a test provokes are expected
    session.quit()
    assert not problems, problems


def _screen(browser, size: tuple[int, int, bool], dark: bool = False) -> None:
    width, height, mobile = size
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
    browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})


def _open(browser, url: str, size=DESKTOP, dark: bool = False) -> None:
    _screen(browser, size, dark)
    browser.get(login_link(url))  # the owner's page, as `pennello open` opens it (then "/")
    _wait(browser, lambda b: b.find_element("id", "generate-section").is_displayed())
    _wait(browser, lambda b: b.find_element("id", "width").get_attribute("value"))


def _by(browser, css: str):
    return browser.find_element("css selector", css)


def _click(browser, element_id: str) -> None:
    element = browser.find_element("id", element_id)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _set(browser, element_id: str, value: str) -> None:
    field = browser.find_element("id", element_id)
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", field)
    field.clear()
    field.send_keys(value)


def _results(browser, count: int) -> list:
    def loaded(b):
        images = b.find_elements("css selector", "#result img")
        done = len(images) == count and all(b.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth > 0", image) for image in images)
        return images if done else None

    images = _wait(browser, loaded)
    _wait(browser, lambda b: b.find_element("id", "status-text").text.startswith("Done in"))
    return images


def _open_newest(browser) -> dict:
    """Open the gallery's first picture; the record it shows, as the API has it."""
    _wait(browser, lambda b: b.find_elements("css selector", "#gallery .thumb"))
    thumb = _by(browser, "#gallery .thumb")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
    thumb.click()
    _wait(browser, lambda b: b.find_element("id", "viewer").is_displayed())
    image_id = browser.find_element("id", "viewer-image").get_attribute("src").rsplit("/", 1)[1]
    return {"id": image_id}


def _save_screenshot(browser, name: str) -> None:
    """A screenshot for docs/, in 128 colours: a fraction of the bytes, the same look."""
    from PIL import Image

    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    shot.quantize(128, method=Image.Quantize.MEDIANCUT).save(SCREENSHOTS / name, optimize=True)


def _unlabelled_controls(browser) -> list[str]:
    return browser.execute_script("""
        const named = (e) => (e.getAttribute('aria-label') || (e.labels && e.labels[0]?.textContent)
                               || e.textContent || e.title || e.querySelector('img')?.alt || '').trim();
        return [...document.querySelectorAll('input, select, textarea, button, a[href]')]
            .filter((e) => e.offsetParent !== null && !named(e)).map((e) => e.outerHTML.slice(0, 80));""")


@pytest.mark.browser
@pytest.mark.parametrize("size,dark", [(PHONE, False), (PHONE, True), (DESKTOP, False), (DESKTOP, True)],
                         ids=["phone-light", "phone-dark", "desktop-light", "desktop-dark"])
def test_generate_on_a_phone_and_a_desktop_in_light_and_dark(api_server, browser, size, dark):
    url = api_server()
    _open(browser, url, size, dark)
    background = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    level = sum(int(v) for v in background[background.index("(") + 1:-1].split(",")[:3]) / 3
    assert (level < 60) if dark else (level > 200), background
    assert browser.find_element("id", "prompt").get_attribute("placeholder") == "a red circle on a blue background"
    assert _by(browser, "#size option").text == "64 × 64 (default)"  # the manifest's default size
    assert "pennello-tiny" in browser.find_element("id", "models").text
    catalog = browser.find_element("id", "catalog").text  # the owner sees what else may be installed
    assert "pennello install sd-turbo" in catalog and "pennello install pennello-tiny" not in catalog
    assert _unlabelled_controls(browser) == []

    # The keyboard alone reaches Generate and starts it.
    browser.find_element("id", "prompt").send_keys("a blue square on a white background")
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(40):
        if browser.execute_script("return document.activeElement.id") == "generate":
            break
        ActionChains(browser).send_keys(Keys.TAB).perform()  # to the page, not into a file field
    assert browser.execute_script("return document.activeElement.id") == "generate"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    _results(browser, 1)
    assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]  # no sideways scroll
    if UPDATE_SCREENSHOTS:
        name = f"{'phone' if size is PHONE else 'desktop'}-{'dark' if dark else 'light'}.png"
        browser.execute_script("document.activeElement.blur();" + (
            "document.getElementById('status').scrollIntoView()" if size is PHONE else "scrollTo(0, 0)"))
        _save_screenshot(browser, name)


@pytest.mark.browser
def test_settings_are_stored_shown_and_used_again(api_server, browser):
    url = api_server()
    _open(browser, url)
    _set(browser, "prompt", "a green triangle on a black background")
    _set(browser, "negative-prompt", "blurry")
    _set(browser, "n", "2")
    Select = pytest.importorskip("selenium.webdriver.support.select").Select
    Select(browser.find_element("id", "seed-mode")).select_by_value("fixed")
    _set(browser, "seed", "4242")
    _click(browser, "advanced")  # the fold opens
    _set(browser, "steps", "3")
    _click(browser, "generate")
    images = _results(browser, 2)
    newest = requests.get(f"{url}/api/outputs?limit=2").json()["images"]
    assert {r["negative_prompt"] for r in newest} == {"blurry"} and {r["steps"] for r in newest} == {3}
    assert sorted(r["seed"] for r in newest) == [4242, 4243]

    images[0].click()  # a picture just made opens its full-size view
    _wait(browser, lambda b: b.find_element("id", "viewer").is_displayed())
    details = browser.find_element("id", "viewer-details").text
    for shown in ("a green triangle on a black background", "blurry", "pennello-tiny", "Manifest digest", "64x64"):
        assert shown in details
    assert _unlabelled_controls(browser) == []  # the view's controls too

    # Reuse: another picture's settings fill the form again, seed fixed.
    browser.find_element("id", "viewer-close").click()
    _set(browser, "prompt", "something else")
    Select(browser.find_element("id", "seed-mode")).select_by_value("random")
    _open_newest(browser)
    _click(browser, "use-settings")
    assert not browser.find_element("id", "viewer").is_displayed()
    form = {name: browser.find_element("id", name).get_attribute("value")
            for name in ("prompt", "negative-prompt", "seed-mode", "seed", "steps")}
    assert form["prompt"] == "a green triangle on a black background" and form["negative-prompt"] == "blurry"
    assert form["seed-mode"] == "fixed" and form["seed"] in ("4242", "4243") and form["steps"] == "3"

    # The seed of the last picture made can be reused.
    Select(browser.find_element("id", "seed-mode")).select_by_value("reuse")
    assert browser.find_element("id", "seed").get_attribute("value") in ("4242", "4243")


@pytest.mark.browser
def test_download_and_delete_from_the_full_size_view(api_server, browser):
    url = api_server()
    picture = _draw(url)
    _open(browser, url, PHONE)
    assert _open_newest(browser)["id"] == picture["id"]
    assert "a red square" in browser.find_element("id", "viewer-details").text
    assert browser.execute_script("return document.documentElement.scrollWidth") <= PHONE[0]
    if UPDATE_SCREENSHOTS:
        _save_screenshot(browser, "phone-viewer.png")
    _click(browser, "download")
    saved = browser.downloads / f"{picture['id']}.png"
    _wait(browser, lambda b: saved.is_file() and saved.stat().st_size > 0)
    assert saved.read_bytes() == requests.get(f"{url}/api/images/{picture['id']}").content

    _click(browser, "delete")  # asked first; "keep" keeps it
    _click(browser, "delete-keep")
    assert requests.get(f"{url}/api/images/{picture['id']}").status_code == 200
    _click(browser, "delete")
    _click(browser, "delete-confirm")
    _wait(browser, lambda b: not b.find_element("id", "viewer").is_displayed())
    assert requests.get(f"{url}/api/images/{picture['id']}").status_code == 404
    _wait(browser, lambda b: picture["id"] not in b.find_element("id", "gallery").get_attribute("innerHTML"))


@pytest.mark.browser
def test_cancel_from_the_form_and_from_the_queue(api_server, browser):
    url = api_server()
    _open(browser, url)
    _set(browser, "prompt", "a long job")
    _set(browser, "n", "8")
    _click(browser, "advanced")
    _set(browser, "steps", "100")
    _click(browser, "generate")
    _wait(browser, lambda b: "running" in b.find_element("id", "queue").text
          or "waiting" in b.find_element("id", "queue").text)
    _click(browser, "cancel")
    _wait(browser, lambda b: b.find_element("id", "status-text").text == "Cancelled")
    assert not browser.find_element("id", "cancel").is_displayed()

    # A job from elsewhere (the CLI, another program) shows in the queue, and can be cancelled there.
    job = requests.post(f"{url}/api/generate", json={"prompt": "another long job", "n": 8, "steps": 100}).json()
    _wait(browser, lambda b: b.find_elements("css selector", "#queue button[aria-label='Cancel: another long job']"))[0].click()
    _wait(browser, lambda b: requests.get(f"{url}/api/jobs/{job['id']}").json()["status"] == "cancelled")
    _wait(browser, lambda b: b.find_element("id", "queue-empty").is_displayed())


@pytest.mark.browser
def test_the_progress_box_shows_the_picture_so_far(api_server, browser):
    url = api_server()
    _open(browser, url)
    # Watch the box: every change to it while the job runs must leave a picture in it (no flicker).
    browser.execute_script("""
        const box = document.getElementById('preview');
        window.previewSwaps = 0; window.previewEmptied = 0;
        new MutationObserver(() => {
            if (box.querySelector('img')) window.previewSwaps += 1;
            else if (window.previewSwaps && !box.hidden) window.previewEmptied += 1;
        }).observe(box, {childList: true});""")
    _set(browser, "prompt", "a red circle")
    _click(browser, "advanced")
    _set(browser, "steps", "100")
    _click(browser, "generate")

    def decoded(b):
        # One script: the box swaps its <img> for each new preview, so an element found in one
        # call may be gone (stale) by the next.
        return b.execute_script(
            "const img = document.querySelector('#preview img'); return img && img.complete && img.naturalWidth")

    assert _wait(browser, decoded) == 64  # the model's own 64x64 picture, decoded in the box
    assert browser.find_element("id", "preview").is_displayed()
    newest = max(requests.get(f"{url}/api/jobs").json()["jobs"], key=lambda job: job["created"])
    assert (newest["prompt"], newest["status"]) == ("a red circle", "running")  # shown before the job ended
    _wait(browser, lambda b: b.execute_script("return window.previewSwaps") >= 2)  # it follows the steps
    _results(browser, 1)
    assert not browser.find_element("id", "preview").is_displayed()
    assert not browser.find_elements("css selector", "#preview img")  # the next job starts from an empty box
    assert browser.execute_script("return window.previewEmptied") == 0


def _png(tmp_path: Path, colour: str) -> Path:
    from PIL import Image

    path = tmp_path / f"{colour}.png"
    Image.new("RGB", (64, 64), colour).save(path)
    return path


@pytest.mark.browser
def test_edit_an_upload_or_a_dropped_picture_and_the_tools_of_the_view(api_server, browser, tmp_path):
    url = api_server()
    _open(browser, url)
    browser.find_element("id", "reference-files").send_keys(str(_png(tmp_path, "red")))
    assert "red.png" in browser.find_element("id", "reference-list").text
    _set(browser, "prompt", "a red circle on a blue background")
    _click(browser, "generate")
    _results(browser, 1)
    record = requests.get(f"{url}/api/outputs?limit=1").json()["images"][0]
    assert record["tool"] == "edit" and record["from_upload"]

    # A dropped picture counts like a chosen one (one: this model edits one picture at a time).
    browser.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        data.items.add(new File([bytes], 'second.png', {type: 'image/png'}));
        document.getElementById('generate-form').dispatchEvent(new DragEvent('drop', {dataTransfer: data}));
        """, __import__("base64").b64encode(_png(tmp_path, "blue").read_bytes()).decode())
    listed = browser.find_element("id", "reference-list").text
    assert "dropped.png" in listed and "second.png" not in listed
    assert "one picture" in browser.find_element("id", "generate-error").text

    # From the full-size view: upscale, enhance, and edit from this picture.
    _open_newest(browser)
    _click(browser, "upscale")
    _wait(browser, lambda b: b.find_element("id", "viewer-status").text.startswith("Done"))
    upscaled = requests.get(f"{url}/api/outputs?limit=1").json()["images"][0]
    assert upscaled["tool"] == "upscale" and upscaled["width"] == 128 and upscaled["from_image"] == record["id"]
    _wait(browser, lambda b: b.find_element("id", "viewer-image").get_attribute("src").endswith(upscaled["id"]))
    _click(browser, "enhance")
    _wait(browser, lambda b: b.find_element("id", "viewer-status").text.startswith("Done"))
    assert requests.get(f"{url}/api/outputs?limit=1").json()["images"][0]["tool"] == "enhance"
    _click(browser, "edit-from")
    assert "gallery:" in browser.find_element("id", "reference-list").text
    _click(browser, "generate")
    _results(browser, 1)
    edited = requests.get(f"{url}/api/outputs?limit=1").json()["images"][0]
    assert edited["tool"] == "edit" and edited["from_image"]


@pytest.mark.browser
def test_the_gallery_pages_and_the_style_batch(api_server, browser):
    url = api_server()
    for _ in range(2):
        assert requests.post(f"{url}/api/generate", json={"prompt": "a pink star", "n": 16, "wait": True}).ok
    total = len(requests.get(f"{url}/api/outputs?limit=500").json()["images"])
    _open(browser, url)
    _wait(browser, lambda b: len(b.find_elements("css selector", "#gallery .thumb")) == 24)
    for _ in range((total - 1) // 24):
        _click(browser, "more")
    _wait(browser, lambda b: len(b.find_elements("css selector", "#gallery .thumb")) == total)
    assert not browser.find_element("id", "more").is_displayed()

    boxes = browser.find_elements("css selector", "#style-choices input")
    assert len(boxes) >= 4 and sum(box.is_selected() for box in boxes) == 4
    for box in boxes[2:4]:
        box.click()  # two styles
    _set(browser, "batch-subject", "a yellow star")
    _click(browser, "batch-run")
    sheet = _wait(browser, lambda b: b.find_elements("css selector", "#batch-result img"))[0]
    _wait(browser, lambda b: b.execute_script("return arguments[0].naturalWidth", sheet) > 64)
    assert "2 style(s)" in browser.find_element("id", "batch-status").text


@pytest.mark.browser
def test_the_owner_revokes_a_device_and_a_revoked_page_says_what_to_do(api_server, browser):
    url, lan = api_server(lan=True)
    tablet = _pair(url, lan, "kitchen tablet")
    assert requests.get(f"{lan}/api/outputs", headers=tablet).status_code == 200
    _open(browser, url)
    revoke = _wait(browser, lambda b: b.find_elements(
        "css selector", "#devices button[aria-label='Revoke kitchen tablet']"))[0]
    revoke.click()
    assert requests.get(f"{lan}/api/outputs", headers=tablet).status_code == 200  # the first click only asks
    revoke.click()
    _wait(browser, lambda b: "kitchen tablet" not in b.find_element("id", "devices").text)
    assert requests.get(f"{lan}/api/outputs", headers=tablet).status_code == 401

    # A paired browser whose token is revoked while the page is open is told what to do.
    code = requests.post(f"{url}/api/pair/code").json()["code"]
    browser.get(f"{lan}/?pair={code}")
    _wait(browser, lambda b: b.find_element("id", "pair-section").is_displayed())
    browser.find_element("css selector", "#pair-form button").click()
    _wait(browser, lambda b: b.find_element("id", "generate-section").is_displayed())
    assert not browser.find_element("id", "devices-section").is_displayed()
    assert "sd-turbo" not in browser.page_source  # the catalog is the owner's
    token = next(t for t in requests.get(f"{url}/api/tokens").json()["tokens"] if t["name"].startswith("browser"))
    assert requests.delete(f"{url}/api/tokens/{token['id']}").status_code == 200
    _set(browser, "prompt", "a red circle")
    _click(browser, "generate")
    banner = _wait(browser, lambda b: b.find_element("id", "auth-banner").text)
    assert "pennello open" in banner and "pair this device" in banner
    assert browser.find_element("id", "pair-section").is_displayed()
    assert browser.find_element("id", "pair-name").get_attribute("value").startswith("browser")  # ready to pair again


@pytest.mark.browser
def test_the_owner_installs_a_model_after_its_plan_and_watches_it_arrive(api_server, browser, stand_in):
    url = api_server(offline=False)  # no-network mode off: this daemon may install
    for size in (PHONE, DESKTOP):
        name = stand_in.offer(f"stand-in-{'phone' if size is PHONE else 'desktop'}", pace_s=0.05)
        _open(browser, url, size)
        browser.execute_script("""
            window.installSeen = [];
            new MutationObserver(() => document.querySelectorAll('#catalog .install-status')
                .forEach((e) => window.installSeen.push(e.textContent)))
                .observe(document.getElementById('catalog'), {childList: true, subtree: true, characterData: true});""")
        _wait(browser, lambda b: b.find_elements("css selector", f"#catalog button[aria-label='Install {name}']"))[0].click()
        plan = _wait(browser, lambda b: b.find_element("css selector", f"#catalog-{name} .plan").text)
        assert "Licence: Apache-2.0" in plan and "2.0 MB" in plan and stand_in.mirror.url in plan, plan
        assert name not in {m["name"] for m in requests.get(f"{url}/api/models").json()["models"]}  # only asked
        assert browser.execute_script("return document.documentElement.scrollWidth") <= size[0]
        _by(browser, f"#catalog button[aria-label='Agree and install {name}']").click()
        _wait(browser, lambda b: b.find_element("css selector", f"#catalog-{name} progress").get_attribute("value")
              not in ("0", "1", None) and b.find_elements("css selector", f"#catalog-{name} .install-status"))
        if UPDATE_SCREENSHOTS and size is DESKTOP:
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", _by(browser, f"#catalog-{name}"))
            _save_screenshot(browser, "desktop-install.png")
        _wait(browser, lambda b: name in b.find_element("id", "models").text)  # listed as installed
        assert name not in browser.find_element("id", "catalog").text
        seen = browser.execute_script("return window.installSeen")
        assert any(text.startswith("Downloading:") and not text.startswith("Downloading: 0 B") for text in seen), seen
        assert requests.get(f"{url}/api/models/{name}/install").json()["state"] == "done"
        assert name in [option.get_attribute("value") for option in browser.find_elements("css selector", "#model option")]
