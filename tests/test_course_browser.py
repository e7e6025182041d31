"""The course as a student sees it: JupyterLab in a real (headless) Chromium, driven from its menus.

For notebooks 00 and 05, in CI mode: open the notebook, run every cell from the Run menu, and check that no cell
failed, that the sliders render as widgets (not as their text description), and that moving a slider redraws the
picture it controls. Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); elsewhere the
test is skipped unless SMOLVLA_KIT_CI is set, where a missing browser is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smolvla_kit.course import ci_mode

COURSE = Path(__file__).resolve().parent.parent / "course"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

if not (CHROMIUM and CHROMEDRIVER) and not ci_mode():
    pytest.skip("needs chromium and chromium-driver (apt install chromium chromium-driver)", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "smolvla-kit-browser-test"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook in the tab that is showing


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server over a copy of the course folder (its outputs stay out of the repository)."""
    assert CHROMIUM and CHROMEDRIVER, "CI must install chromium and chromium-driver (see .ci/run)"
    root = tmp_path_factory.mktemp("course")
    for notebook in ("00_setup_and_sim_tour.ipynb", "05_evaluate_and_watch_denoising.ipynb"):
        shutil.copy(COURSE / notebook, root / notebook)
    # Render every cell: JupyterLab 4 otherwise leaves cells outside the viewport empty, prompts and widgets too.
    settings = root / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    port = _free_port()
    log = open(root / "jupyter.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--ServerApp.token={TOKEN}", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={root / 'settings'}", f"--LabApp.workspaces_dir={root / 'workspaces'}",
         "--LabApp.news_url=",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "SMOLVLA_KIT_CI": "1"},
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, (root / "jupyter.log").read_text()[-3000:]
            time.sleep(0.5)
    yield f"http://127.0.0.1:{port}", root
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _click_menu(driver, menu: str, item: str) -> None:
    """Open a menu of JupyterLab's menu bar and click one of its items, by their labels."""
    bar = WebDriverWait(driver, 60).until(
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if e.text.strip() == menu])
    bar[0].click()
    entry = WebDriverWait(driver, 30).until(
        lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, ".lm-Menu-item") if e.text.strip().startswith(item)])
    entry[0].click()


def _run_all(driver, url: str, notebook: str, timeout_s: float) -> None:
    """Open `notebook`, wait for its kernel, run every cell from the Run menu and wait until all have run."""
    driver.get(f"{url}/lab/tree/{notebook}?token={TOKEN}")
    WebDriverWait(driver, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-CodeCell"))
    WebDriverWait(driver, 120).until(lambda d: _kernel_status(d) == "idle")
    # Make this notebook's tab the current one, so that the menu acts on it.
    tab = WebDriverWait(driver, 60).until(
        lambda d: [t for t in d.find_elements(By.CSS_SELECTOR, ".lm-DockPanel-tabBar .lm-TabBar-tab")
                   if notebook in (t.get_attribute("title") or t.text)])
    tab[0].click()
    WebDriverWait(driver, 30).until(lambda d: "lm-mod-current" in tab[0].get_attribute("class"))
    _click_menu(driver, "Run", "Run All Cells")

    def finished(d) -> bool:
        prompts = [p.text for p in d.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-CodeCell .jp-InputPrompt")]
        return bool(prompts) and all(p.strip() not in ("[ ]:", "[*]:", "") for p in prompts) and \
            _kernel_status(d) == "idle"

    try:
        WebDriverWait(driver, timeout_s, poll_frequency=2).until(finished)
    except Exception:
        driver.save_screenshot(str(Path(os.environ.get("TMPDIR", "/tmp")) / f"{notebook}.png"))
        raise


def _kernel_status(driver) -> str:
    """The showing notebook's kernel: "idle", "busy", "starting", ... (its toolbar's indicator)."""
    items = driver.find_elements(By.CSS_SELECTOR, f"{PANEL} [data-status]")
    return items[0].get_attribute("data-status") if items else "unknown"


def _errors(driver) -> list[str]:
    return [e.text[:500] for e in driver.find_elements(
        By.CSS_SELECTOR, f"{PANEL} .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error'], "
                         f"{PANEL} .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")]


def _widget_texts(driver) -> list[str]:
    """Outputs that show a widget's text description or a failure instead of the widget itself."""
    texts = [e.text for e in driver.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-OutputArea-output")]
    return [t[:200] for t in texts if "Slider(" in t or "VBox(" in t or "Loading widget" in t
            or "Error displaying widget" in t]


def _image_bytes(element) -> str:
    """A fingerprint of what the element shows on screen."""
    return hashlib.sha1(element.screenshot_as_png).hexdigest()


def _move_slider_and_watch(driver, slider, image, presses: int = 8) -> tuple[str, str]:
    """Drag-free: focus the slider's handle and press the arrow key; returns the image before and after."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", image)
    before = _image_bytes(image)
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle, [role='slider']")
    handle.click()
    for _ in range(presses):
        handle.send_keys(Keys.ARROW_LEFT)
    deadline = time.time() + 30
    after = before
    while time.time() < deadline and after == before:
        time.sleep(0.5)
        after = _image_bytes(image)
    return before, after


def test_notebook_00_joint_sliders_render_and_move_the_arm(lab, browser):
    url, root = lab
    _run_all(browser, url, "00_setup_and_sim_tour.ipynb", timeout_s=300)
    assert not _errors(browser), _errors(browser)
    assert not _widget_texts(browser), _widget_texts(browser)
    panel = browser.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-OutputArea-output .widget-vbox")
    assert panel, "the joint-slider panel did not render as a widget"
    sliders = panel[0].find_elements(By.CSS_SELECTOR, ".widget-slider")
    images = panel[0].find_elements(By.CSS_SELECTOR, "img")
    assert len(sliders) == 6 and len(images) == 2, (len(sliders), len(images))
    before, after = _move_slider_and_watch(browser, sliders[0], images[0])
    assert after != before, "moving the shoulder_pan slider did not redraw the front camera"


def test_notebook_05_denoising_slider_renders_and_redraws_the_paths(lab, browser):
    url, root = lab
    _run_all(browser, url, "05_evaluate_and_watch_denoising.ipynb", timeout_s=600)
    assert not _errors(browser), _errors(browser)
    assert not _widget_texts(browser), _widget_texts(browser)
    sliders = [s for s in browser.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-OutputArea-output .widget-slider")
               if "Euler step" in s.text]
    assert sliders, "the denoising slider did not render as a widget"
    box = sliders[0].find_element(By.XPATH, "./ancestor::div[contains(@class, 'widget-vbox')][1]")
    image = box.find_element(By.CSS_SELECTOR, "img")
    before, after = _move_slider_and_watch(browser, sliders[0], image)
    assert after != before, "moving the Euler-step slider did not redraw the fingertip paths"
