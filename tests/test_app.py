"""app.py in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): a photo, a file that is
no photo, a photo with no face, and the webcam tab fed by Chromium's fake camera with a clip of the astronaut.
Set APP_SCREENSHOTS=docs to refresh docs/app-photo.png and docs/app-webcam.png."""
import json
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, assert_user_error, run_script

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 120_000

pytestmark = pytest.mark.slow


def drawn(page, image, original):
    """Where the picture in an <img> differs from `original` (RGB) by more than compression does: the box and
    label drawn on it. Returns the (x, y) of those pixels."""
    import cv2

    body = page.request.get(image.get_attribute("src")).body()
    shown = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    assert shown.shape == original.shape
    ys, xs = np.nonzero(np.abs(shown.astype(int) - original).max(axis=2) > 80)
    return xs, ys


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py with the shipped model on a port it picks itself; yields its address (read from what it prints)."""
    pytest.importorskip("gradio")
    process = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", "0"], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    printed, address = [], []

    def read():
        for line in process.stdout:
            printed.append(line)
            found = re.search(r"Running on local URL:\s*(http://\S+)", line)
            if found and not address:
                address.append(found.group(1))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not address and process.poll() is None:
            reader.join(0.5)  # the reader ends only with the process; the test's time limit ends a hang
        assert address, "".join(printed)[-3000:]
        yield address[0]
    finally:
        process.terminate()
        process.wait(30)


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with playwright.sync_playwright() as driver:
        yield driver, CHROMIUM


def open_page(browser, server, *flags, **context):
    driver, chromium = browser
    instance = driver.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS + list(flags))
    page = instance.new_context(viewport={"width": 1280, "height": 720}, **context).new_page()
    page.goto(server)
    return instance, page


def screenshot(page, name, tmp_path):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("APP_SCREENSHOTS"):  # 256 colours: a third of the bytes, for the README
        from PIL import Image

        Image.open(path).convert("RGB").quantize(256).save(ROOT / os.environ["APP_SCREENSHOTS"] / name, optimize=True)


def upload(page, *paths, expect):
    """Put these files alone in the Photos box (each upload adds to it), and wait until the summary says `expect`."""
    clear = page.locator("#photos").get_by_role("button", name="Clear")
    if clear.count():
        clear.click()
        page.locator("#photo-summary strong").first.wait_for(state="detached", timeout=WAIT_MS)
    page.locator("#photos input[type=file]").set_input_files([str(path) for path in paths])
    page.locator("#photo-summary").get_by_text(expect).first.wait_for(timeout=WAIT_MS)
    return page.locator("#photo-summary").inner_text()


def test_photo_tab_boxes_the_astronaut_happy_and_keeps_serving_after_bad_files(server, browser, tmp_path):
    import cv2
    from skimage import data as skimage_data

    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a photo\n")
    no_face = tmp_path / "coffee.jpg"  # a real photo of a cup of coffee
    cv2.imwrite(str(no_face), cv2.cvtColor(skimage_data.coffee(), cv2.COLOR_RGB2BGR))
    instance, page = open_page(browser, server)
    try:
        summary = upload(page, ROOT / "docs" / "astronaut.jpg", expect="Happy")
        assert re.search(r"astronaut\.jpg\W+1 face: Happy \(0\.\d\d\)", summary), summary
        page.locator("#photo-chart img").first.wait_for(timeout=WAIT_MS)  # the bar chart, drawn by matplotlib
        page.locator("#photo-why img").first.wait_for(timeout=WAIT_MS)  # the face's occlusion map (explain.py)
        assert "predictions.jsonl" in page.locator("#photo-jsonl").inner_text()
        jsonl = page.locator("#photo-jsonl a").first
        with page.expect_download() as download:
            jsonl.click()
        records = [json.loads(line) for line in open(download.value.path(), encoding="utf-8")]
        assert [(record["source"], record["emotion"]) for record in records] == [("astronaut.jpg", "Happy")]
        # The box and its label are drawn on the photo shown, around the face the JSON lines name.
        xs, ys = drawn(page, page.locator("#photo-gallery img").first,
                       cv2.imread(str(ROOT / "docs" / "astronaut.jpg"))[:, :, ::-1])
        x, y, w, h = records[0]["box"]
        around = (xs >= x - 3) & (xs <= x + w + 3) & (ys >= y - 30) & (ys <= y + h + 3)
        assert len(xs) > 200 and np.mean(around) > 0.9, (len(xs), np.mean(around))
        screenshot(page, "app-photo.png", tmp_path)

        summary = upload(page, text_file, expect="not a readable image")
        assert "notes.txt" in summary and "Happy" not in summary
        summary = upload(page, no_face, expect="no face found")
        assert "coffee.jpg" in summary
        summary = upload(page, ROOT / "docs" / "astronaut.jpg", text_file, expect="Happy")  # it still serves
        assert "not a readable image" in summary
    finally:
        instance.close()


def test_webcam_tab_streams_the_fake_camera_back_annotated(server, browser, tmp_path, record_property):
    import cv2

    clip = tmp_path / "astronaut.y4m"  # Chromium's fake camera plays this 640x480 clip in a loop
    frame = np.full((480, 640, 3), 128, np.uint8)
    frame[:, 80:560] = cv2.resize(cv2.imread(str(ROOT / "docs" / "astronaut.jpg")), (480, 480))
    with open(clip, "wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(2):
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420).tobytes())
    instance, page = open_page(browser, server, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                               f"--use-file-for-fake-video-capture={clip}", permissions=["camera"])
    try:
        page.get_by_role("tab", name="Webcam").click()
        page.get_by_text("Click to Access Webcam").click()
        page.locator("#webcam-in").get_by_role("button", name="capture photo").click()
        rate = page.locator("#webcam-rate")
        rate.get_by_text("Happy").wait_for(timeout=WAIT_MS)
        # The rate is counted over the last 30 frames: wait for 60, so that it counts none of the first ones.
        page.wait_for_function("() => +(/frame (\\d+)/.exec(document.querySelector('#webcam-rate').innerText)"
                               " || [0, 0])[1] >= 61", timeout=WAIT_MS)
        line = rate.inner_text()
        found = re.search(r"Happy 0\.\d\d · ([\d.]+) frames/s · (\d+) ms a frame · frame (\d+)", line)
        assert found, line
        # The frame comes back mirrored, as the preview shows it, with a box and label drawn around the face only.
        xs, ys = drawn(page, page.locator("#webcam-out img").first, frame[:, ::-1, ::-1])
        assert len(xs) > 200 and (xs.max() - xs.min()) * (ys.max() - ys.min()) < frame.size / 3 / 4, (len(xs),)
        screenshot(page, "app-webcam.png", tmp_path)
        record_property("webcam_frames_per_second", float(found.group(1)))
        print(f"webcam: {line}")
    finally:
        instance.close()


def test_a_checkpoint_that_cannot_be_loaded_stops_the_app_at_start(tmp_path):
    pytest.importorskip("gradio")
    assert_user_error(run_script("app.py", "--checkpoint", tmp_path / "missing.keras"), "missing.keras", "not found")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    assert_user_error(run_script("app.py", "--checkpoint", broken), "broken.keras")
