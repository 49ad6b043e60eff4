"""The console in a real headless Chromium (Debian's chromium + chromedriver, driven by Selenium) against a real
`vectorstore serve` process with data: log in, see the stores, open a failing file's error, search in each mode,
compare two modes; a wrong key is refused, a read key sees no write action, the CSP holds and nothing comes from
another origin. One browser and one server for the module.

Screenshots go to the test's temp directory; with VECTORSTORE_SCREENSHOTS=<dir> they are copied there too
(docs/console.png is one, taken this way).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakeembed import FakeEmbedder
from pgdb import new_database
from robustness.harness import (
    EMBEDDING_KEY,
    KEYS,
    ServerProcess,
    attach,
    declared_store_ids,
    run_upstream,
    upload,
    wait_file,
    write_spec,
)
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver as Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait
from server import conftest as server_conftest

from vectorstore.console import CSP

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DOCS = {
    "pricing.txt": ("Our pricing has three plans. The basic plan costs ten euros per month.", {"team": "sales"}),
    "security.txt": ("Passwords are hashed with argon2. Security reviews happen every quarter.", {"team": "infra"}),
    "onboarding.txt": ("New engineers get a laptop and a mentor during onboarding week.", {"team": "people"}),
}
BROKEN = "broken.pdf"
WAIT = 15.0


class Console:
    """The server process, its base URL, the store with data, and where screenshots go."""

    def __init__(self, server: ServerProcess, store_id: str, shots: Path) -> None:
        self.server = server
        self.base_url = server.base_url
        self.store_id = store_id
        self.shots = shots

    def screenshot(self, driver: WebDriver, name: str) -> Path:
        path = self.shots / f"{name}.png"
        driver.save_screenshot(str(path))
        assert path.stat().st_size > 1000
        copy_to = os.environ.get("VECTORSTORE_SCREENSHOTS")
        if copy_to:
            shutil.copy(path, Path(copy_to) / path.name)
        return path


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: str) -> None:
        self.status, self.headers, self.body = status, headers, body


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def get(url: str) -> Answer:
    """A plain GET with no key and no redirect following: status, lower-cased headers, body."""
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as response:
            headers = {key.lower(): value for key, value in response.headers.items()}
            return Answer(response.status, headers, response.read().decode())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, {key.lower(): value for key, value in exc.headers.items()}, exc.read().decode())


async def _seed(server: ServerProcess, store_id: str) -> None:
    """Three text files with attributes and one broken PDF in the store, through the API; wait for ingestion."""
    files = {name: (text.encode(), attributes) for name, (text, attributes) in DOCS.items()}
    files[BROKEN] = (b"%PDF-1.7\nthis is no PDF at all\n", {"team": "sales"})
    async with server.session("writer", timeout=30) as http:
        ids = {}
        for name, (content, attributes) in files.items():
            ids[name] = await upload(http, name, content)
            await attach(http, store_id, ids[name], attributes)
        for name, file_id in ids.items():
            done = await wait_file(http, store_id, file_id, {"completed", "failed", "cancelled"}, within=60)
            assert done["status"] == ("failed" if name == BROKEN else "completed"), (name, done)


@pytest.fixture(scope="module")
def console(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    directory = tmp_path_factory.mktemp("console")
    with run_upstream() as upstream:
        spec = write_spec(directory / "spec.yaml", upstream.base_url)
        handbook = directory / "handbook"
        handbook.mkdir()
        (handbook / "welcome.md").write_text("# Welcome\n\nThe handbook says hello.\n", encoding="utf-8")
        # beta's documents come from two declared sources: one readable, one whose directory does not exist.
        sources = (
            "    description: robustness store beta\n    sources:\n"
            f"      - {{name: handbook, path: {handbook}}}\n      - {{name: missing, path: {directory / 'nowhere'}}}\n"
        )
        text = spec.read_text().replace("server:\n", "server:\n  console: true\n")
        spec.write_text(text.replace("    description: robustness store beta\n", sources), encoding="utf-8")
        for dsn in new_database(pg_dsn, "console"):
            server = ServerProcess(spec, dsn, directory / "server.log").start()
            try:
                server.wait_ready()
                store_id = declared_store_ids(spec)["alpha"]
                asyncio.run(_seed(server, store_id))
                yield Console(server, store_id, directory)
            finally:
                server.stop(grace=10.0)


@pytest.fixture(scope="module")
def driver(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chrome]:
    """The browser quits before the server stops (it depends on it): its open connections would hold the
    server's graceful shutdown."""
    assert Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists(), "apt-get install chromium chromium-driver"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit chromedriver: Selenium Manager never runs, so nothing is downloaded.
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield browser
    finally:
        browser.quit()


def wait(driver: WebDriver, condition: object, message: str) -> object:
    return WebDriverWait(driver, WAIT).until(lambda d: condition(d), message)  # type: ignore[operator]


def login(driver: WebDriver, console: Console, key: str) -> None:
    driver.get(console.base_url + "/console")
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    driver.find_element(By.ID, "login-button").click()


def logged_in(driver: WebDriver, console: Console, key: str) -> None:
    login(driver, console, key)
    wait(driver, lambda d: d.find_element(By.ID, "app").is_displayed(), "the console did not open")


def text(driver: WebDriver, element_id: str) -> str:
    value: str = driver.find_element(By.ID, element_id).text
    return value


def select_store(driver: WebDriver, console: Console) -> None:
    row = driver.find_element(By.CSS_SELECTOR, f'#stores tr[data-store-id="{console.store_id}"]')
    row.click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#files tbody tr[data-file-id]")) == 4, "no files")


def results(driver: WebDriver, list_id: str) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f"#{list_id} li[data-file-id]")


def test_the_page_is_served_with_a_strict_csp(console: Console) -> None:
    redirect = get(console.base_url + "/console")
    assert redirect.status == 302 and redirect.headers["location"] == "/console/"
    for path, kind in (("/console/", "text/html"), ("/console/console.js", "text/javascript"),
                       ("/console/console.css", "text/css"), ("/console/favicon.svg", "image/svg+xml")):  # fmt: skip
        answer = get(console.base_url + path)
        assert answer.status == 200, path
        assert answer.headers["content-type"].startswith(kind)
        assert answer.headers["content-security-policy"] == CSP
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert "unsafe-inline" not in CSP and "script-src 'self'" in CSP and "default-src 'none'" in CSP
    page = get(console.base_url + "/console/").body
    assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page
    assert "http://" not in page and "https://" not in page
    # The page is no door around the API: its files carry no data, and the API still wants a key.
    assert get(console.base_url + "/v1/vector_stores").status == 401


def test_a_wrong_key_is_refused_with_a_message(driver: WebDriver, console: Console) -> None:
    login(driver, console, "not-a-key")
    wait(driver, lambda d: "refused" in text(d, "login-error"), "no refusal message")
    assert "Incorrect API key" in text(driver, "login-error")
    assert not driver.find_element(By.ID, "app").is_displayed()
    console.screenshot(driver, "console-wrong-key")


def test_log_in_and_see_the_stores(driver: WebDriver, console: Console) -> None:
    logged_in(driver, console, KEYS["writer"])
    assert "write" in text(driver, "who")
    rows = driver.find_elements(By.CSS_SELECTOR, "#stores tbody tr")
    names = {row.find_elements(By.TAG_NAME, "td")[0].text for row in rows}
    assert names == {"alpha", "beta"}
    alpha = driver.find_element(By.CSS_SELECTOR, f'#stores tr[data-store-id="{console.store_id}"]')
    cells = [cell.text for cell in alpha.find_elements(By.TAG_NAME, "td")]
    assert cells[3:7] == ["3", "0", "1", "4"]  # completed, in progress, failed, total
    wait(driver, lambda d: alpha.find_elements(By.TAG_NAME, "td")[9].text != "", "no store settings")
    cells = [cell.text for cell in alpha.find_elements(By.TAG_NAME, "td")]
    assert cells[9] == "declared" and cells[10] == "fake-embed · 8 dims"
    assert "hnsw" not in cells[11] and "vector cosine · none" in cells[11] and "m 16" in cells[11]
    assert cells[12].startswith("hybrid · ")
    # The key is in the page's memory only.
    stored = driver.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert KEYS["writer"] not in driver.current_url and KEYS["writer"] not in driver.page_source


def test_a_failing_files_error_and_the_chunks_of_a_file(driver: WebDriver, console: Console) -> None:
    select_store(driver, console)
    # A write key sees the write action.
    assert driver.find_elements(By.CSS_SELECTOR, "#files .write-action")
    Select(driver.find_element(By.ID, "file-filter")).select_by_value("failed")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#files tbody tr[data-file-id]")) == 1, "filter")
    failed = driver.find_element(By.CSS_SELECTOR, "#files tbody tr[data-file-id]")
    assert "failed" in failed.text
    failed.find_element(By.XPATH, ".//button[text()='Chunks']").click()
    wait(driver, lambda d: "last_error" in text(d, "file-error"), "the failing file's error is not shown")
    assert len(text(driver, "file-error")) > len("last_error: ")
    console.screenshot(driver, "console-failed-file")
    Select(driver.find_element(By.ID, "file-filter")).select_by_value("completed")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#files tbody tr[data-file-id]")) == 3, "completed")
    row = driver.find_element(By.CSS_SELECTOR, "#files tbody tr[data-file-id]")
    wait(driver, lambda d: row.find_elements(By.TAG_NAME, "td")[4].text == "1", "no chunk count")
    assert '"team"' in row.find_elements(By.TAG_NAME, "td")[3].text
    row.find_element(By.XPATH, ".//button[text()='Chunks']").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chunks li")) == 1, "no chunks")
    assert driver.find_element(By.CSS_SELECTOR, "#chunks li").text in {text for text, _ in DOCS.values()}


def _search(driver: WebDriver, query: str, mode: str, *, compare_with: str | None = None, filters: str = "") -> None:
    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="search"]').click()
    field = driver.find_element(By.ID, "query")
    field.clear()
    field.send_keys(query)
    Select(driver.find_element(By.ID, "mode-a")).select_by_value(mode)
    compare = driver.find_element(By.ID, "compare")
    if compare.is_selected() != (compare_with is not None):
        compare.click()
    if compare_with is not None:
        Select(driver.find_element(By.ID, "mode-b")).select_by_value(compare_with)
    box = driver.find_element(By.ID, "filters")
    box.clear()
    if filters:
        box.send_keys(filters)
    driver.find_element(By.ID, "search-button").click()


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_search_in_each_mode(driver: WebDriver, console: Console, mode: str) -> None:
    _search(driver, "pricing plan", mode)
    title = f"{mode}: "
    wait(
        driver, lambda d: text(d, "results-a-title").startswith(title) and "results" in text(d, "results-a-title"), "-"
    )
    hits = results(driver, "results-a")
    assert hits, text(driver, "search-error")
    assert text(driver, "search-error") == ""
    if mode != "vector":
        # Keyword matching ranks the one file with the words first, and the words are highlighted.
        assert "pricing.txt" in hits[0].text
        marks = {mark.text.lower() for mark in hits[0].find_elements(By.TAG_NAME, "mark")}
        assert {"pricing", "plan"} <= marks
    assert "score " in hits[0].find_element(By.CLASS_NAME, "meta").text


def test_compare_two_modes_side_by_side(driver: WebDriver, console: Console) -> None:
    _search(driver, "security reviews", "vector", compare_with="keyword")
    wait(driver, lambda d: "results" in text(d, "results-b-title"), "no second column")
    assert driver.find_element(By.ID, "column-b").is_displayed()
    assert text(driver, "results-a-title").startswith("vector: ")
    assert text(driver, "results-b-title").startswith("keyword: ")
    assert results(driver, "results-a") and results(driver, "results-b")
    assert "security.txt" in results(driver, "results-b")[0].text
    console.screenshot(driver, "console")


def test_filters_and_their_errors(driver: WebDriver, console: Console) -> None:
    _search(driver, "plan", "keyword", filters='{"type": "eq", "key": "team", "value": "infra"}')
    wait(driver, lambda d: "results" in text(d, "results-a-title"), "no answer")
    assert all('"infra"' in hit.text for hit in results(driver, "results-a"))
    _search(driver, "plan", "keyword", filters="{not json")
    wait(driver, lambda d: "not valid JSON" in text(d, "search-error"), "bad JSON accepted")
    _search(driver, "plan", "keyword", filters='{"type": "and", "filters": []}')
    wait(driver, lambda d: "non-empty array" in text(d, "search-error"), "the server's refusal is not shown")


def test_nothing_comes_from_another_origin_and_the_csp_held(driver: Chrome, console: Console) -> None:
    loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded, "no resource entries"
    assert all(url.startswith(console.base_url + "/") for url in loaded), loaded
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    assert not [entry for entry in logs if "Content Security Policy" in entry["message"]], logs
    # No secret of the server reaches the page: the upstream's key, the database's address.
    source = driver.page_source
    assert EMBEDDING_KEY not in source and console.server.dsn not in source and "postgres" not in source.lower()
    # The only failed loads are the API's deliberate refusals (the wrong key, the read key's scope probe).
    failed = [entry["message"] for entry in logs if "Failed to load resource" in entry["message"]]
    assert all("/v1/" in message for message in failed), failed


def test_sources_show_their_last_sync_and_failures(driver: WebDriver, console: Console) -> None:
    driver.find_element(By.CSS_SELECTOR, '#stores tbody tr:not([data-store-id="' + console.store_id + '"])').click()
    driver.find_element(By.CSS_SELECTOR, '.tabs button[data-tab="sources"]').click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#sources tbody tr")) == 2, "no sources")
    rows = {
        row.find_elements(By.TAG_NAME, "td")[0].text: row
        for row in driver.find_elements(By.CSS_SELECTOR, "#sources tbody tr")
    }
    assert set(rows) == {"handbook", "missing"}
    assert "ok" in rows["handbook"].text and "never" not in rows["handbook"].find_elements(By.TAG_NAME, "td")[5].text
    missing = rows["missing"].find_elements(By.TAG_NAME, "td")
    assert missing[3].text == "failed" and missing[8].text  # the error of the last sync
    console.screenshot(driver, "console-sources")


def test_a_read_key_sees_no_write_action(driver: WebDriver, console: Console) -> None:
    logged_in(driver, console, KEYS["reader"])
    assert "read" in text(driver, "who")
    select_store(driver, console)
    assert driver.find_elements(By.CSS_SELECTOR, "#files button")  # the read actions are there
    assert driver.find_elements(By.CSS_SELECTOR, "#files .write-action") == []
    _search(driver, "onboarding laptop", "hybrid")
    wait(driver, lambda d: "results" in text(d, "results-a-title"), "a read key can't search")
    assert "onboarding.txt" in results(driver, "results-a")[0].text
    console.screenshot(driver, "console-read-key")


async def test_the_console_is_off_unless_the_spec_turns_it_on(
    fresh_dsn: str, fake_embedder: FakeEmbedder, tmp_path: Path
) -> None:
    spec = server_conftest.write_spec(tmp_path / "spec.yaml", server_conftest.spec_data(fake_embedder.base_url))
    assert spec.server.console is False
    server = await server_conftest.start_server(spec, fresh_dsn)
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/console", "/console/", "/console/console.js"):
                async with session.get(server.url(path), allow_redirects=False) as response:
                    assert response.status == 404, path
    finally:
        await server.stop()


def test_the_wheel_ships_every_console_file() -> None:
    """The page's files are package data: every file in static/ matches a glob of pyproject's package-data."""
    import fnmatch
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    globs = pyproject["tool"]["setuptools"]["package-data"]["vectorstore.console"]
    static = repo / "vectorstore" / "console" / "static"
    files = sorted(path.relative_to(static.parent).as_posix() for path in static.iterdir())
    assert len(files) >= 4
    assert [name for name in files if not any(fnmatch.fnmatch(name, pattern) for pattern in globs)] == []
