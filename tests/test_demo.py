import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from sigma_fast.cli import main
from sigma_fast.demo import DEMO_PAIRS
from sigma_fast.report import write_report

IMAGE_CHECK = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter(img => img.complete && img.naturalWidth > 0).length;
  document.body.setAttribute("data-images", loaded + "/" + images.length);
});
</script>
"""


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def images_loaded_in_chromium(page):
    """Opens a copy of `page` with an image check appended in headless Chromium -> (loaded, total)."""
    checked = page.replace(".html", "_check.html")
    with open(page) as source, open(checked, "w") as target:
        target.write(source.read().replace("</body>", IMAGE_CHECK + "</body>"))
    browser = chromium()
    if browser is None:
        pytest.fail("headless Chromium is needed for this test (Debian package `chromium`; .ci/run installs it)")
    completed = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--allow-file-access-from-files",
         "--virtual-time-budget=5000", f"--user-data-dir={os.path.dirname(page)}/chromium_profile",
         "--dump-dom", "file://" + checked],
        capture_output=True, text=True, timeout=120)
    marker = 'data-images="'
    assert marker in completed.stdout, completed.stderr[-2000:]
    loaded, total = completed.stdout.split(marker)[1].split('"')[0].split("/")
    return int(loaded), int(total)


def screenshot_is_not_blank(page):
    """Headless Chromium screenshot of `page`: not one flat colour (the page rendered something)."""
    shot = os.path.join(os.path.dirname(page), "screenshot.png")
    subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--allow-file-access-from-files", "--window-size=1000,1400", "--virtual-time-budget=5000",
                    f"--user-data-dir={os.path.dirname(page)}/chromium_profile", f"--screenshot={shot}",
                    "file://" + page], capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)
    return pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50


def test_report_images_load_in_chromium(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 10:20] = 255
    items = [{"key": "a", "instruction": "add <b>", "edit": {"action": "add", "source": None, "target": "b"},
              "score": 0.9, "original": image, "edited": image, "mask": mask, "prior": rng.random((4, 4))},
             {"key": "b", "instruction": "make it snowy", "edit": {"action": "global"}, "score": 0.5,
              "original": image, "edited": image, "mask": mask, "prior": None, "gt": mask > 0, "f1": 0.25}]
    page = write_report(str(tmp_path), items)
    text = open(page).read()
    assert "add &lt;b&gt;" in text and "F1 0.250" in text and text.count("F1 ") == 1
    assert text.count(">ground truth<") == 1 and text.count(">prior<") == 1  # no column for a flat prior
    assert images_loaded_in_chromium(page) == (8, 8)
    assert screenshot_is_not_blank(page)


def test_demo_end_to_end(tmp_path, capsys):
    assert os.path.isfile(os.path.join(DEMO_PAIRS, "pairs.jsonl")), "the demo's sample pairs must ship in the package"
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "dataset.json") in printed and str(out / "report.html") in printed
    dataset = json.loads((out / "dataset.json").read_text())
    pairs = sum(1 for line in open(os.path.join(DEMO_PAIRS, "pairs.jsonl")) if line.strip())
    assert len(dataset) == 2 * pairs
    for image_path, mask_path in dataset:
        assert os.path.isfile(image_path)
        if mask_path != "Negative":
            mask = Image.open(mask_path)
            assert mask.mode == "L" and mask.size == Image.open(image_path).size
            assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert not (out / "failures.jsonl").read_text().strip()
    text = (out / "report.html").read_text()
    assert text.count(">ground truth<") == pairs and text.count(" &middot; F1 ") == pairs  # every sample has a mask
    assert ">prior<" not in text  # the demo's prior is flat
    loaded, total = images_loaded_in_chromium(str(out / "report.html"))
    assert total == 4 * pairs and loaded == total
