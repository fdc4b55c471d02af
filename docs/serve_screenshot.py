"""How docs/serve.png was made: the page of a running `visionfit serve`, in headless Chromium, with
a few pictures picked through its file input (and one file it refuses).

    visionfit serve runs/demo &
    python docs/serve_screenshot.py http://127.0.0.1:8000 photos/*.jpg photos/notes.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def main() -> None:
    url, files = sys.argv[1], sys.argv[2:]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(url)
        expect(page.locator("#model-name")).not_to_be_empty()
        page.locator("#file-input").set_input_files(files)
        expect(page.locator('.card:not([data-state="pending"])')).to_have_count(len(files))
        page.locator("#classes-box summary").click()
        page.mouse.move(0, 0)
        output = Path(__file__).with_name("serve.png")
        page.screenshot(path=str(output), full_page=True)
        browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
