"""The page in headless Chromium (playwright driving the system ``chromium``; no browser is
downloaded): pick two photos, see both listings, edit one field, download the CSV and read it."""

from __future__ import annotations

import csv
import io

import pytest
from eval_fixtures import LISTING
from serve_fixtures import COLORS, png_bytes

from browser import chromium
from vlmtune.data.prompts import parse_listing

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = chromium()


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a system Chromium (make browser)")
def test_two_photos_two_listings_and_the_csv(serve, tmp_path):
    server = serve()
    photos = []
    for name, color in (("scarf.png", COLORS[0]), ("tote.png", COLORS[1])):
        (tmp_path / name).write_bytes(png_bytes(color))
        photos.append(tmp_path / name)
    expected = parse_listing(LISTING)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(accept_downloads=True)
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.url + "/")
            page.set_input_files("#files", [str(p) for p in photos])
            playwright_api.expect(page.locator(".card.done")).to_have_count(2, timeout=60_000)
            cards = page.locator(".card")
            assert cards.locator(".name").all_inner_texts() == ["scarf.png", "tote.png"]
            assert (
                cards.locator(".title").evaluate_all("els => els.map(e => e.value)")
                == [expected.title] * 2
            )
            assert cards.nth(0).locator(".thumb").evaluate("img => img.naturalWidth") == 112
            assert page.locator("#status").inner_text() == "2 of 2 photo(s) done"
            cards.nth(1).locator(".title").fill("Leather Tote, brown")  # a person edits a field
            with page.expect_download() as download:
                page.click("#download")
            text = download.value.path().read_text(encoding="utf-8")
            assert errors == []
        finally:
            browser.close()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["image", "title", "category3_code", "full_price", "raw_text", "error"]
    price = f"{expected.price:.2f}"
    assert rows[1:] == [
        ["scarf.png", expected.title, expected.category, price, LISTING, ""],
        ["tote.png", "Leather Tote, brown", expected.category, price, LISTING, ""],
    ]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs a system Chromium (make browser)")
def test_the_page_sends_the_api_key_typed_into_it(serve, tmp_path):
    server = serve(api_key="page-key")
    photo = tmp_path / "scarf.png"
    photo.write_bytes(png_bytes(COLORS[2]))
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")  # the page itself loads without the key
            page.set_input_files("#files", [str(photo)])
            failed = page.locator(".card.failed .state")
            playwright_api.expect(failed).to_contain_text("API key", timeout=60_000)
            page.fill("#apikey", "page-key")
            page.set_input_files("#files", [str(photo)])
            playwright_api.expect(page.locator(".card.done")).to_have_count(1, timeout=60_000)
            assert page.locator(".card.done .title").input_value() == parse_listing(LISTING).title
        finally:
            browser.close()
