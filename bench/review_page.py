"""Open the review page (the report stage's) in headless Chromium, as a person's browser would:
count the photos it drew, list the console errors, take a screenshot, and make the decisions a
person would (one confirmed match, one new individual) to check that what the page exports reads
back into ingest (photoid.data.sources.read_confirmed, photoid.data.ingest.apply_confirmed).

    python bench/review_page.py                       # reports/review.html -> reports/review.png
    python bench/review_page.py --page x.html --screenshot x.png --width 1280 --height 1600
    python bench/review_page.py --page answers.html --no-ingest-check     # a `photoid identify --html` page

Needs Debian's chromium (``apt-get install chromium``). Exits 1 when the page draws no photo, logs a
console error, or exports what ingest refuses.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from photoid import paths


def chromium(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        sys.exit("no chromium: install Debian's package (apt-get update && apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                               f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
                              capture_output=True, text=True, timeout=300)


def main(
    page: Path = typer.Option(paths.REVIEW_PAGE, help="The review page."),
    screenshot: Path = typer.Option(paths.REVIEW_PAGE.with_suffix(".png"), help="Where the screenshot goes."),
    width: int = typer.Option(1280, help="Window width (pixels)."),
    height: int = typer.Option(1400, help="Window height (pixels)."),
    ingest_check: bool = typer.Option(True, help="Check that ingest takes the exported decisions (the report stage's "
                                      "page; a `photoid identify --html` page names photos outside the data set)."),
    match_screenshot: Path = typer.Option(None, help="Also click the first candidate whose matches can be drawn and "
                                          "take a screenshot of them here."),
):
    import pandas as pd

    from photoid.data.ingest import apply_confirmed
    from photoid.data.sources import read_confirmed

    uri = page.resolve().as_uri()
    start = time.perf_counter()
    dom = chromium("--dump-dom", uri)
    seconds = time.perf_counter() - start
    errors = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    drawn = dom.stdout.count('class="q"')
    pages = re.search(r'id="pageinfo">([^<]*)<', dom.stdout)
    print(f"{page}: {page.stat().st_size / 1e6:.1f} MB; chromium drew {drawn} photos on the first page "
          f"({pages.group(1).strip() if pages else '?'}) in {seconds:.1f} s; console errors: {len(errors)}")
    for line in errors:
        print("  " + line)
    chromium(f"--screenshot={screenshot.resolve()}", f"--window-size={width},{height}", "--hide-scrollbars", uri)
    print(f"screenshot: {screenshot} ({screenshot.stat().st_size / 1e3:.0f} kB)" if screenshot.exists() else "no screenshot")
    # the decisions a person makes, exported as the page exports them, read back by ingest
    test = chromium("--dump-dom", uri + "#selftest")
    found = re.search(r'<pre id="export-preview">(.*?)</pre>', test.stdout, re.S)
    ok = drawn > 0 and not errors and found is not None
    if found is not None and not ingest_check:
        rows = html.unescape(found.group(1)).strip().splitlines()[1:]
        print(f"exported decisions: {len(rows)} rows: {'; '.join(rows)}")
        ok = ok and len(rows) > 0
    elif found is not None:
        with tempfile.TemporaryDirectory() as tmp:
            csv = Path(tmp) / "confirmed.csv"
            csv.write_text(html.unescape(found.group(1)))
            decisions = read_confirmed(csv)
            images = pd.read_parquet(paths.IMAGES_TABLE)
            rejected, truth = pd.read_parquet(paths.REJECTED_TABLE), pd.read_parquet(paths.TEST_TRUTH_TABLE)
            moved, _, stats = apply_confirmed(images, rejected, truth, decisions, str(csv))
            print(f"exported decisions: {len(decisions)} rows ({', '.join(decisions['individual'])}); ingest takes "
                  f"them: {stats['confirmed']} test photos become training photos, "
                  f"{stats['confirmed_new_individuals']} new individual(s)")
            ok = ok and stats["confirmed"] == len(decisions) > 0
    else:
        print("the page showed no export preview (#selftest)")
    # a click on a candidate: the two photos side by side, a line for each matched keypoint
    start = time.perf_counter()
    match = chromium("--dump-dom", uri + "#selftest-match")
    found = re.search(r'<pre id="match-check">(.*?)</pre>', match.stdout, re.S)
    check = html.unescape(found.group(1)) if found else "no answer"
    drew = check.startswith("{") and json.loads(check)["lines"] == json.loads(check)["stated"] > 0
    print(f"a click on a candidate: {'drew ' + str(json.loads(check)['lines']) + ' matched keypoints' if drew else check} "
          f"in {time.perf_counter() - start:.1f} s")
    ok = ok and drew
    if match_screenshot is not None:
        chromium(f"--screenshot={match_screenshot.resolve()}", f"--window-size={width},{height // 2}",
                 "--hide-scrollbars", uri + "#selftest-match")
        print(f"screenshot of a match: {match_screenshot}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    typer.run(main)
