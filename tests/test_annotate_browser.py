"""`cm-unet annotate` in a real browser: headless Chromium (Debian's
`chromium`, which `make test` and CI install) driven by Playwright opens the
page on two real angiograms pre-filled by the general preset, paints,
erases, undoes, saves and moves on; the mask on disk is checked pixel by
pixel against the strokes, and the pre-fill against `cm-unet predict`."""

import csv
import shutil

import cv2
import numpy as np
import pytest

from cm_unet_keras.annotate.server import start
from cm_unet_keras.cli import main

MODEL = "cmunet_small_general"
BRUSH = 6  # px across; even, so that no pixel centre lies exactly on a stroke's edge


def chromium_path():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise FileNotFoundError("no `chromium` on PATH: the browser test needs it; `make test` installs it "
                                "(apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shared_data):
    folder = tmp_path_factory.mktemp("annotate") / "frames"
    folder.mkdir()
    for stem in ("1", "2"):
        shutil.copy(shared_data / "xca_vessels" / "train" / f"{stem}.png", folder)
    return folder


@pytest.fixture(scope="module")
def predicted(folder, tmp_path_factory):
    """The masks `cm-unet predict` writes for the folder, as 0/1 arrays."""
    out = tmp_path_factory.mktemp("predicted")
    assert main(["predict", str(folder), "--model", MODEL, "--out", str(out), "--quiet"]) == 0
    return {stem: (cv2.imread(str(out / f"{stem}_mask.png"), cv2.IMREAD_GRAYSCALE) > 0).astype(np.uint8)
            for stem in ("1", "2")}


@pytest.fixture(scope="module")
def page(folder):
    from playwright.sync_api import sync_playwright

    server = start(folder, MODEL, port=0, log=lambda message: None)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path())
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(server.url)
        yield page
        browser.close()
    server.shutdown()
    server.server_close()
    assert errors == []


def capsule(start, end, side, diameter=BRUSH):
    """Pixels whose centre lies within diameter / 2 of the segment start-end:
    what a brush stroke covers."""
    y, x = np.mgrid[:side, :side] + 0.5
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((x - x0) * dx + (y - y0) * dy) / max(dx * dx + dy * dy, 1e-12), 0, 1)
    return (x - (x0 + t * dx)) ** 2 + (y - (y0 + t * dy)) ** 2 <= (diameter / 2) ** 2


def stroke(page, origin, start, end, steps):
    """Drag the mouse from `start` to `end` (angiogram pixels) in `steps` moves."""
    page.mouse.move(origin[0] + start[0], origin[1] + start[1])
    page.mouse.down()
    page.mouse.move(origin[0] + end[0], origin[1] + end[1], steps=steps)
    page.mouse.up()


def test_paint_erase_undo_save_and_next_in_a_browser(page, folder, predicted):
    page.wait_for_function("document.getElementById('mask-source').textContent === 'pre-filled by the model'",
                           timeout=120_000)
    assert page.locator("#frame-title").inner_text().startswith("1")
    page.keyboard.press("1")  # one screen pixel per angiogram pixel
    page.fill("#size-value", str(BRUSH))
    page.keyboard.press("Enter")
    box = page.locator("#stage").bounding_box()
    origin = (box["x"], box["y"])
    assert origin == (round(origin[0]), round(origin[1])) and box["width"] == 300

    stroke(page, origin, (60, 100), (200, 100), steps=14)       # brush
    page.keyboard.press("e")
    stroke(page, origin, (130, 80), (130, 120), steps=4)        # eraser across it
    page.keyboard.press("b")
    stroke(page, origin, (60, 200), (200, 200), steps=7)        # a slip...
    page.keyboard.press("Control+z")                            # ...undone
    page.keyboard.press("s")
    page.wait_for_function("document.getElementById('save-state').textContent === 'saved'")

    expected = predicted["1"].astype(bool) | capsule((60, 100), (200, 100), 300)
    expected &= ~capsule((130, 80), (130, 120), 300)
    saved = cv2.imread(str(folder / "1_gt.png"), cv2.IMREAD_UNCHANGED)
    assert saved.shape == (300, 300) and set(np.unique(saved)) <= {0, 255}
    assert np.array_equal(saved > 0, expected)
    with open(folder / "annotations.csv", newline="") as log:
        (row,) = csv.DictReader(log)
    assert row["frame"] == "1" and row["started_from"] == "model"
    assert int(row["pixels_changed"]) == int((expected != predicted["1"].astype(bool)).sum())

    page.keyboard.press("ArrowRight")
    page.wait_for_function("document.getElementById('frame-title').textContent.startsWith('2')")
    page.wait_for_function("document.getElementById('mask-source').textContent === 'pre-filled by the model'")
    assert page.locator("#frames li.saved").evaluate_all("items => items.map(item => item.dataset.name)") == ["1"]
    assert page.locator("#progress").inner_text() == "1 of 2 saved"


def test_the_prefill_is_predicts_mask(page, folder, predicted):
    base = page.url.split("#")[0]
    response = page.request.get(f"{base}api/frames/2/mask")
    assert response.headers["x-mask-source"] == "model"
    served = cv2.imdecode(np.frombuffer(response.body(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert predicted["2"].any() and np.array_equal(served > 0, predicted["2"].astype(bool))
    (cached,) = (folder / ".annotate" / "prefill").glob("*/2.png")  # computed once, kept
    assert np.array_equal(cv2.imread(str(cached), cv2.IMREAD_GRAYSCALE) > 0, predicted["2"].astype(bool))


def test_unsaved_edits_warn_before_leaving_the_frame(page):
    page.wait_for_function("document.getElementById('frame-title').textContent.startsWith('2')")
    box = page.locator("#stage").bounding_box()
    stroke(page, (box["x"], box["y"]), (40, 40), (60, 40), steps=2)
    assert page.locator("#save-state").inner_text() == "unsaved edits"
    asked = []

    def dismiss(dialog):
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(300)
    assert asked == ["2 has unsaved edits. Leave it without saving?"]
    assert page.locator("#frame-title").inner_text().startswith("2")  # stayed
