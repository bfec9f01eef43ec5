"""Headless Chromium for the report's browser tests: where it is, a skip marker for where
it is not, and `probe`, which opens a page at a given width and returns what a script run in
it reported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="chromium not installed (./run tests installs it as root "
                                  "where apt-get exists: apt-get install chromium)")


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180)


def probe(page: Path, script: str, tmp_path: Path, *, width: int = 1280, height: int = 900,
          query: str = "", fragment: str = "") -> dict:
    """Open `page` (with `query` and `fragment` in its URL) in headless Chromium in a
    width x height frame, run `script` after the page's own, and return what the script
    reported (`report(value)`) as JSON.

    The page is framed because headless Chromium's window is at least 500 px wide; the
    frame is exactly the width asked for (media queries and all)."""
    stem = f"{page.stem}-probe-{width}-{abs(hash(query + fragment)) % 10**6}"
    probed = page.with_name(stem + ".html")
    probed.write_text(page.read_text().replace("</body>", REPORT_BACK + script + "</body>"))
    frame = page.with_name(stem + "-frame.html")
    frame.write_text(f'<!doctype html><body style="margin:0"><iframe src="{probed.name}'
                     f'{query}{fragment}" style="border:0;width:{width}px;height:{height}px">'
                     f'</iframe></body>')
    proc = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                    "--allow-file-access-from-files", f"--window-size={max(width, 800)},"
                    f"{height + 100}", "--hide-scrollbars", "--dump-dom",
                    frame.resolve().as_uri(), profile=tmp_path / f"profile-{stem}")
    assert "Uncaught" not in proc.stderr, proc.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, proc.stderr[-2000:]
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


# A probe's way back: onto the frame's parent, whose DOM --dump-dom prints.
REPORT_BACK = """<script>
function report(value) {
  var host = window.parent !== window ? window.parent.document.body : document.body;
  host.setAttribute("data-probe", JSON.stringify(value));
}
</script>"""
