"""The review page in a real browser (headless Chromium, as bench/review_page.py opens it): a click on a
candidate draws the two photos side by side with a line for each matched keypoint, where the
matches are. Skipped where no Chromium is installed (Debian: apt-get install chromium)."""

import html
import json
import re
import shutil
import subprocess

import pandas as pd
import pytest
from PIL import Image

from photoid.review import review_rows, write_review_page


def chromium_dom(url: str, profile) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no Chromium to open the page in")
    done = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                           "--virtual-time-budget=10000", "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def drawn_match(page, profile) -> dict:
    dom = chromium_dom(page.as_uri() + "#selftest-match", profile)
    found = re.search(r'<pre id="match-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_a_click_on_a_candidate_draws_a_line_for_each_matched_keypoint_where_they_are(tmp_path):
    Image.new("RGB", (400, 300), (90, 110, 140)).save(tmp_path / "query.jpg")
    Image.new("RGB", (400, 300), (140, 110, 90)).save(tmp_path / "gallery.jpg")
    predictions = pd.DataFrame({"image_id": ["q1"], "predictions": ["ind1 new_individual"], "scores": ["0.9 0.5"],
                                "species": ["dolphin"], "threshold": [0.5], "margin": [0.7], "top_score": [0.9]})
    q_xy, g_xy = [40.0, 30.0, 200.0, 100.0, 300.0, 150.0], [50.0, 35.0, 210.0, 90.0, 280.0, 170.0]
    matches = pd.DataFrame([{"image_id": "q1", "individual": "ind1", "gallery_id": "g1", "flipped": False, "inliers": 3,
                             "query_side": 384.0, "gallery_side": 384.0, "query_xy": q_xy, "gallery_xy": g_xy}])
    rows = review_rows(predictions, [["g0", None]], None, {"ind1"}, matches)
    views = {"q1": (str(tmp_path / "query.jpg"), (400, 300), (0.0, 0.0, 400.0, 200.0)),
             "g1": (str(tmp_path / "gallery.jpg"), (400, 300), (0.0, 0.0, 400.0, 200.0))}
    write_review_page(tmp_path / "page.html", rows, {"q1": str(tmp_path / "query.jpg"), "g1": str(tmp_path / "gallery.jpg")},
                      views=views, view_side=480)
    drawn = drawn_match(tmp_path / "page.html", tmp_path / "profile")
    assert drawn["lines"] == drawn["stated"] == 3
    scale, gap = 480 / 384, 24  # the views are the regions at 480 px; keypoints were found at 384
    assert drawn["width"] == 480 + gap + 480 and drawn["height"] == 240
    for (a, b), (qx, qy, gx, gy) in zip(drawn["points"], zip(q_xy[::2], q_xy[1::2], g_xy[::2], g_xy[1::2])):
        assert a == pytest.approx([qx * scale, qy * scale]) and b == pytest.approx([480 + gap + gx * scale, gy * scale])
