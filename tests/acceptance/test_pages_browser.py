"""The upload page in a real headless Chromium (Debian's), driven by Playwright: log in,
upload, watch the bar move, press Stop, see the task STOPPED with its rows rolled back."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import httpx

from tests.acceptance.conftest import ROOT, Deployment, wait_until
from tests.acceptance.test_tasks_http import big_teams_csv, task
from tests.conftest import need

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOT = ROOT / "test-output" / "import_teams.png"


def test_upload_page_progress_and_stop(deployment: Deployment, tmp_path: Path) -> None:
    need("chromium", shutil.which(CHROMIUM) is not None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from playwright.sync_api import sync_playwright
    # one row a transaction: 80,000 commits keep the import running for seconds, longer than
    # the page's poll, the screenshot and the click (20-row batches could finish first on a
    # fast machine, as they did in tests/acceptance/test_tasks_http.py)
    base = deployment.serve(EXHAUST_IMPORT_BATCH_ROWS="1")
    key = deployment.create_key("ops", "admin")
    upload = tmp_path / "inputs" / "teams.csv"
    upload.parent.mkdir()
    upload.write_bytes(big_teams_csv(80_000))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/import_teams/")
            page.fill("input[name=key]", key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{base}/import_teams/")
            page.set_input_files("input[name=file]", str(upload))
            page.click("form[enctype] button[type=submit]")
            page.wait_for_selector("#started")
            row = page.locator("tr.task").first
            task_id = row.get_attribute("data-task")
            assert task_id
            page.wait_for_function(
                "() => document.querySelector('tr.task progress').value > 0", timeout=60_000
            )
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            row.locator("button.stop").click()
            page.wait_for_function(
                "() => document.querySelector('tr.task .status').textContent === 'STOPPED'",
                timeout=30_000,
            )
        finally:
            browser.close()
    headers = {"Authorization": f"Bearer {key}"}
    wait_until(lambda: task(base, headers, task_id)["counts"]["rolledBack"] > 0)
    final = task(base, headers, task_id)
    assert final["status"] == "STOPPED"
    assert final["counts"]["rolledBack"] == final["counts"]["inserted"]
    assert httpx.get(f"{base}/tasks?limit=1", headers=headers).status_code == 200
