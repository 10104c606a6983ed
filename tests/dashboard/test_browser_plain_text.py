"""Browser tests of what cameras and producers send: shown as plain text in Chromium, never rendered
as Markdown or links, and exported to CSV as text a spreadsheet will not run as a formula.
Same harness as ``test_browser.py`` (real server, Debian's Chromium)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone

import pytest

from dashboard.common import WORD_JOINER
from storage.results import store_results
from tests.storage.helpers import make_result

from .test_browser import browser, login, new_page, open_page, page, server, shot  # noqa: F401

pytestmark = pytest.mark.browser

# a model version as a hostile producer could send it: a formula, a Markdown link, emphasis, a bare URL
EVIL = "=1+1 [phish](http://evil.example) **b** www.evil.example ops@evil.example"


@pytest.fixture
def server_env() -> dict[str, str]:
    return {"LINEWATCH_DASHBOARD_REFRESH_S": "600"}  # no Live refresh between clicks


def _store_evil(db) -> str:
    r = make_result(1, camera="cam__x__", anomalous=True, model_version=EVIL, prefix="plain",
                    captured_at=datetime.now(timezone.utc) + timedelta(minutes=1))  # newest: first in review
    store_results(db.engine, db.blobs, [r])
    return r.frame_id


def test_producer_text_is_shown_literally_and_links_nowhere(server, page, request):
    base, db, _sd = server
    frame_id = _store_evil(db)
    login(page, base, "olga")
    open_page(page, "Review")
    page.get_by_text(frame_id).first.wait_for()
    page.get_by_text("[phish]", exact=False).first.wait_for()
    shot(page, request, "plain-text")
    main = page.locator('[data-testid="stMain"]')
    shown = main.inner_text().replace(WORD_JOINER, "")  # the joiners are invisible
    assert EVIL in shown  # every character as sent, nothing rendered
    assert "cam__x__" in shown  # underscores shown, not eaten as emphasis
    # no link made of the link, the URL or the address (a link's href may be percent-encoded: match its text too)
    assert page.locator('a[href*="evil"]').count() == 0 and main.locator("a", has_text="evil").count() == 0
    bold_b = "m => [...m.querySelectorAll('strong, b')].filter(e => e.textContent.trim() === 'b').length"
    assert main.evaluate(bold_b) == 0  # '**b**' did not become bold


def test_csv_export_keeps_formulas_as_text(server, page, request):
    base, db, _sd = server
    _store_evil(db)
    login(page, base, "olga")
    open_page(page, "History")
    button = page.get_by_role("button", name="Export CSV")
    button.wait_for()
    with page.expect_download() as dl:
        button.click()
    text = open(dl.value.path(), encoding="utf-8").read()
    rows = list(csv.DictReader(io.StringIO(text)))
    cells = [v for row in rows for v in row.values() if v and EVIL[1:] in v]
    assert cells, "the hostile row is in the export"
    assert all(v == "'" + EVIL for v in cells)  # a leading apostrophe: a spreadsheet shows it as text
    assert not any(v.startswith("=") for row in rows for v in row.values() if v)
