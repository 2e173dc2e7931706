from __future__ import annotations

import base64
import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from envcache.client.sync import Client
from tests.fixtures.browser import screenshot
from tests.fixtures.daemon import DaemonProcess, start_daemon_process
from tests.fixtures.engines import Dockerd
from tests.fixtures.testdata import CondaChannel

pytestmark = pytest.mark.engine

TEAM = 60  # registered environments beyond one page (the dashboard pages by 50)
FAILING = "ERROR: Could not find a version that satisfies the requirement nosuchpkg==9.9"


def busybox(base: str, marker: str, *, gpu: bool = False, extra: str = "") -> dict:
    definition: dict = {"docker": {"base_dockerfile": f"FROM {base}\nRUN echo {marker} > /marker{extra}\n"},
                        "environment_variables": {"MARKER": marker}}
    if gpu:
        definition["variants"] = {"gpu": {"base_dockerfile": f"FROM {base}\nRUN echo {marker}-gpu > /marker\n"}}
    return definition


@dataclass
class Seeded:
    url: str
    train_cpu: dict
    science: dict


def serve(tmp: Path, config: str) -> DaemonProcess:
    """``envcache serve`` as its own process (the browser waits on it; the test does not serve)."""
    (tmp / "envcache.toml").write_text(config)
    return start_daemon_process(tmp / "data", 0, "--config", str(tmp / "envcache.toml"))


@pytest.fixture(scope="module")
def seeded(dockerd: Dockerd, busybox_image: str, python_base_docker: dict[str, str], conda_channel: CondaChannel,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    daemon = serve(tmp_path_factory.mktemp("dashboard"),
                   f'[build]\nengine = "docker"\ndocker_host = "{dockerd.host}"\ncompression = "gzip"\n'
                   "concurrency = 3\n")
    try:
        with Client(daemon.url) as client:
            client.register_environment("train", busybox(busybox_image, "one", gpu=True))
            client.register_environment("train", busybox(busybox_image, "two", gpu=True))
            v3 = busybox(busybox_image, "two", gpu=True)
            v3["python"] = {"conda_dependencies": {"pip_packages": ["requests==2.31.0"]}}
            client.register_environment("train", v3)
            client.register_environment("science", {
                "docker": {"base_image": python_base_docker["cpu"]},
                "python": {"conda_dependencies": {"channels": [conda_channel.url], "conda_packages": ["envcache-tool"],
                                                  "pip_packages": ["six==1.16.0"]}}})
            client.register_environment("broken", busybox(
                busybox_image, "broken", extra=f"\nRUN echo fetching nosuchpkg && echo '{FAILING}' && exit 1"))
            for n in range(TEAM):
                client.register_environment(f"team-{n:03d}", busybox(busybox_image, f"team{n}"))
            started = [client.ensure(environment=env, variant=variant)["build"]["id"] for env, variant in
                       [(("train", 1), "cpu"), (("train", 1), "gpu"), (("science", 1), "cpu"), ("broken", "cpu")]]
            states = [client.follow_build(build)["state"] for build in started]
            assert states == ["succeeded", "succeeded", "succeeded", "failed"]
            train = client.resolve(environment=("train", 1), variant="cpu")["image"]
            for _ in range(2):
                assert client.resolve(environment=("train", 1), variant="cpu") is not None
            science = client.resolve(environment="science", variant="cpu")["image"]
        dockerd.docker("pull", "-q", train["image"])
        stray = b"a blob no manifest names " * 100   # an upload nothing references yet: "recent"
        digest = "sha256:" + hashlib.sha256(stray).hexdigest()
        urllib.request.urlopen(urllib.request.Request(
            f"{daemon.url}/v2/scratch/stray/blobs/uploads/?digest={digest}", data=stray, method="POST"))
        yield Seeded(daemon.url, train, science)
    finally:
        daemon.stop()


def wait_for(driver: object, condition: str, timeout: float = 30) -> object:
    """Wait until the JavaScript expression ``condition`` is truthy in the page; its value."""
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: d.execute_script(f"return ({condition})"))


def text(driver: object, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text  # type: ignore[attr-defined]


def test_overview_counts_charts_storage_and_slowest_builds(seeded: Seeded, page: object) -> None:
    page.get(seeded.url + "/")
    assert page.current_url == seeded.url + "/ui/"
    assert text(page, "#stat-environments") == str(2 + 3 + TEAM)  # curated + train, science, broken + team
    assert text(page, "#stat-images") == "3"
    assert text(page, "#stat-hit-rate").endswith("%")
    # The chart is drawn (uPlot made its canvas) from the counters the daemon kept.
    wait_for(page, "document.querySelector('#activity-chart canvas')")
    legend = text(page, "#activity-chart .u-legend")
    assert "cache hits" in legend and "image pulls" in legend and "failed builds" in legend
    chart = json.loads(page.execute_script("return document.getElementById('activity-data').textContent"))
    totals = {s["name"]: sum(s["values"]) for s in chart["series"]}
    assert totals["hit"] >= 3 and totals["pull"] >= 1 and totals["built"] == 3 and totals["failed"] == 1
    assert totals["miss"] >= 4
    # Storage: images and the stages they were built from, and the stray upload as "recent".
    for kind in ("images", "stages", "young"):
        assert not text(page, f"#storage-{kind} .legend-value").startswith("0 B"), kind
    assert text(page, "#storage-reclaimable .legend-value").startswith("0 B")
    # Slowest builds: the longest first; the conda + pip build is slower than the busybox ones.
    bars = page.find_elements(By.CSS_SELECTOR, "#slowest .bars li")
    assert len(bars) == 3 and bars[0].text.startswith("science")
    assert "failed" in text(page, "main").lower()
    # Everything the page loaded came from the daemon itself: no CDN, no other host.
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(seeded.url + "/ui/static/") for url in loaded), loaded
    screenshot(page, "overview")
    # The dark scheme follows the system setting, charts included.
    page.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    page.refresh()
    wait_for(page, "document.querySelector('#activity-chart canvas')")
    assert page.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(13, 17, 26)"
    screenshot(page, "overview-dark")
    for window in ("1h", "7d", "30d"):
        page.get(f"{seeded.url}/ui/?window={window}")
        wait_for(page, "document.querySelector('#activity-chart canvas')")
        assert text(page, ".tabs a.active") == window


def test_environments_page_pages_and_filters(seeded: Seeded, page: object) -> None:
    page.get(seeded.url + "/ui/environments")
    rows = page.find_elements(By.CSS_SELECTOR, "#environments tbody tr")
    names = [row.find_element(By.CSS_SELECTOR, "td a").text for row in rows]
    assert names[:2] == ["envcache-datascience", "envcache-minimal"]   # curated first
    assert names[2:5] == ["broken", "science", "team-000"] and len(names) == 2 + 50
    screenshot(page, "environments")
    page.find_element(By.CSS_SELECTOR, "a[rel=next]").click()
    rest = [a.text for a in page.find_elements(By.CSS_SELECTOR, "#environments tbody tr td:first-child a")]
    assert rest[0] == "team-048" and rest[-1] == "train" and len(rest) == 3 + TEAM - 50
    train_row = page.find_element(By.XPATH, "//tr[td/a[text()='train']]")
    assert "v3" in train_row.text
    # v3 has no image; its variants are shown as missing, not linked.
    assert not train_row.find_elements(By.CSS_SELECTOR, "a.badge.variant")
    page.find_element(By.CSS_SELECTOR, "a[rel=prev]").click()
    assert page.find_elements(By.CSS_SELECTOR, "#environments tbody tr td:first-child a")[0].text == "broken"
    # A filter is a literal substring: "_" is not a wildcard.
    page.get(seeded.url + "/ui/environments?q=team-05")
    assert [a.text for a in page.find_elements(By.CSS_SELECTOR, "#environments tbody td:first-child a")] == \
        [f"team-{n:03d}" for n in range(50, 60)]
    page.get(seeded.url + "/ui/environments?q=team_05")
    assert "No environment name contains" in text(page, "#environments")


def test_environment_versions_link_their_images_and_diff(seeded: Seeded, page: object) -> None:
    page.get(seeded.url + "/ui/environments/train?version=1")
    versions = page.find_elements(By.CSS_SELECTOR, "#versions tbody tr")
    assert [row.find_element(By.CSS_SELECTOR, "td a").text for row in versions] == ["v3", "v2", "v1"]
    v1 = versions[2]
    links = {a.text: a.get_attribute("href") for a in v1.find_elements(By.CSS_SELECTOR, "a.badge.variant")}
    assert set(links) == {"cpu", "gpu"} and links["cpu"].endswith("/ui/images/" + seeded.train_cpu["key"])
    shown = text(page, "#definition")
    assert "MARKER: one" in shown and "RUN echo one > /marker" in shown and "null" not in shown
    screenshot(page, "environment")
    page.get(seeded.url + "/ui/environments/train/diff?from=1&to=3")
    changes = [li.text.replace("\n", "") for li in page.find_elements(By.CSS_SELECTOR, "#changes li")]
    assert "~environment variable changed: MARKER" in changes
    assert "−Dockerfile step removed: RUN echo one > /marker" in changes
    assert "+pip package added: requests==2.31" in changes
    assert "+variant gpu: Dockerfile step added: RUN echo two-gpu > /marker" in changes
    assert page.find_elements(By.CSS_SELECTOR, ".diff .diff-added") and page.find_elements(By.CSS_SELECTOR, ".diff-removed")
    screenshot(page, "diff")
    page.get(seeded.url + "/ui/environments/train/diff?from=2&to=2")
    assert "Same content" in text(page, "#changes")


def test_image_page_layers_lock_and_upstream(seeded: Seeded, page: object) -> None:
    page.get(seeded.url + "/ui/images")
    rows = page.find_elements(By.CSS_SELECTOR, "#images tbody tr")
    assert len(rows) == 3 and all("gzip" in row.text for row in rows)
    assert any("science" in row.text for row in rows)
    screenshot(page, "images")
    page.get(f"{seeded.url}/ui/images/{seeded.science['key']}")
    assert text(page, "#reference") == f"docker pull {seeded.science['image']}"
    layers = page.find_elements(By.CSS_SELECTOR, "#layers tbody tr")
    assert len(layers) >= 3 and text(page, "#image-layers").startswith(f"{len(layers)} · gzip")
    lock = text(page, "#lock")
    assert "conda 3 packages · 1 requested, 2 transitive" in lock
    assert "envcache-tool" in lock and "envcache-hello" in lock and "envcache-data" in lock
    requested = [li.text for li in page.find_elements(By.CSS_SELECTOR, "#lock li.requested")]
    assert any(r.startswith("six 1.16.0") for r in requested) and any(r.startswith("envcache-tool") for r in requested)
    assert "conda:envcache-tool" in lock   # unpinned, so a rebuild may resolve differently
    assert "No upstream registries configured" in text(page, "#upstream")
    assert "succeeded" in text(page, "#image-builds")
    screenshot(page, "image")


def test_failed_build_highlights_the_failing_line(seeded: Seeded, page: object) -> None:
    page.get(seeded.url + "/ui/builds?state=failed")
    rows = page.find_elements(By.CSS_SELECTOR, "#builds tbody tr")
    assert len(rows) == 1 and "broken" in rows[0].text and "failed" in rows[0].text
    assert text(page, ".tabs a.active") == "Failed 1"
    screenshot(page, "builds")
    rows[0].find_element(By.CSS_SELECTOR, "td a").click()
    failing = page.find_element(By.ID, "failing")
    assert FAILING in failing.text and "failing" in failing.get_attribute("class")
    assert "build failed in step base" in text(page, "#failure")
    # The page opens with the failing line in view inside the log.
    assert page.execute_script(
        "const log = document.getElementById('log'), line = document.getElementById('failing');"
        "return line.offsetTop >= log.scrollTop && line.offsetTop < log.scrollTop + log.clientHeight")
    screenshot(page, "build-failed")


def test_running_build_log_streams_into_the_page(seeded: Seeded, busybox_image: str, page: object) -> None:
    slow = busybox(busybox_image, "slow", extra="\nRUN for i in $(seq 1 24); do echo tick $i; sleep 0.5; done")
    with Client(seeded.url) as client:
        started = client.ensure(slow, "cpu")
    build = started["build"]["id"]
    page.get(f"{seeded.url}/ui/builds/{build}")
    assert page.find_element(By.ID, "log").get_attribute("data-live") == "true"
    first = wait_for(page, "[...document.querySelectorAll('#log .line')].some(l => l.textContent.startsWith('tick 3'))"
                           " && document.querySelectorAll('#log .line').length")
    assert "running" in text(page, "#build-state") or "queued" in text(page, "#build-state")
    screenshot(page, "build-running")
    later = wait_for(page, f"document.querySelectorAll('#log .line').length > {first} + 8 "
                           "&& document.querySelectorAll('#log .line').length")
    assert later > first
    ticks = page.execute_script("return [...document.querySelectorAll('#log .line')].map(l => l.textContent)"
                                ".filter(t => t.startsWith('tick ')).length")
    assert ticks >= 8   # streamed in while the page was open, never duplicated
    # When the build ends the page shows its final state (one reload, no following any more).
    wait_for(page, "document.getElementById('log').dataset.live === 'false'", timeout=120)
    assert "succeeded" in text(page, "#build-state")
    lines = page.execute_script("return [...document.querySelectorAll('#log .line')].map(l => l.textContent)")
    assert [t for t in lines if t.startswith("tick ")] == [f"tick {i}" for i in range(1, 25)]


def test_bad_requests_are_pages_not_tracebacks(seeded: Seeded, page: object) -> None:
    for path, status, words in [("/ui/builds/nope", "404", "no build with id"),
                                ("/ui/images?after=yesterday", "400", "after must be a page cursor"),
                                ("/ui/?window=2y", "400", "window must be one of"),
                                ("/ui/environments/train/diff?from=9", "400", "has no version 9"),
                                ("/ui/no-such-page", "404", "no such page")]:
        page.get(seeded.url + path)
        assert text(page, ".eyebrow") == status and words in text(page, "h1"), path
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(seeded.url + "/ui/builds/nope")
    assert missing.value.code == 404 and missing.value.headers.get_content_type() == "text/html"
    assert "default-src 'self'" in missing.value.headers["Content-Security-Policy"]


# -- signing in ------------------------------------------------------------------------------------
READ_TOKEN, WRITE_ONLY = "dashboard-read-token-0123456789abcdef", "ci-write-only-token-0123456789abcdef"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[str]:
    daemon = serve(tmp_path, f'[build]\nengine = "none"\n[auth]\ntokens = [{{token = "{READ_TOKEN}", '
                             f'scopes = ["read"]}}, {{token = "{WRITE_ONLY}", scopes = ["write"]}}]\n')
    yield daemon.url
    daemon.stop()


def sign_in(driver: object, token: str) -> None:
    field = driver.find_element(By.ID, "token")  # type: ignore[attr-defined]
    field.clear()
    field.send_keys(token)
    field.submit()


def test_a_browser_signs_in_with_a_read_token_into_an_http_only_cookie(guarded: str, page: object) -> None:
    page.get(guarded + "/ui/environments?q=x")
    assert page.current_url == guarded + "/ui/login?next=/ui/environments?q%3Dx"
    screenshot(page, "login")
    sign_in(page, "not-a-token")
    assert "not valid" in text(page, "[role=alert]")
    sign_in(page, WRITE_ONLY)
    assert "lacks the read scope" in text(page, "[role=alert]")
    sign_in(page, READ_TOKEN)
    assert page.current_url == guarded + "/ui/environments?q=x" and text(page, "h1") == "Environments"
    assert page.execute_script("return document.cookie") == ""   # HttpOnly: scripts cannot read it
    # The cookie lets the page read the JSON API (the live log does) but never write.
    read = page.execute_script("return fetch('/api/v1/environments').then(r => r.status)")
    write = page.execute_script(
        "return fetch('/api/v1/environments', {method: 'POST', headers: {'Content-Type': 'application/json'},"
        " body: JSON.stringify({name: 'x', definition: {}})}).then(r => r.status)")
    assert (read, write) == (200, 401)
    page.find_element(By.CSS_SELECTOR, ".topbar-end button").click()
    assert page.current_url.startswith(guarded + "/ui/login")
    page.get(guarded + "/ui/")
    assert "/ui/login" in page.current_url


async def test_scripts_reach_the_pages_with_the_header_and_nobody_without(guarded: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(guarded + "/ui/", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui/login?next=/ui/"
        async with http.get(guarded + "/ui/", headers={"Authorization": f"Bearer {READ_TOKEN}"}) as resp:
            assert resp.status == 200 and "Overview" in await resp.text()
        basic = "Basic " + base64.b64encode(f"me:{READ_TOKEN}".encode()).decode()
        async with http.get(guarded + "/ui/", headers={"Authorization": basic}) as resp:
            assert resp.status == 200
        async with http.get(guarded + "/api/v1/environments") as resp:  # the JSON API still answers JSON
            assert resp.status == 401 and (await resp.json())["error"]["status"] == 401
        async with http.get(guarded + "/ui/static/dashboard.css") as resp:  # no data: public
            assert resp.status == 200
        async with http.post(guarded + "/ui/login", data={"token": READ_TOKEN, "next": "//evil.example/"},
                             allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/ui/"   # never off-site
            cookie = resp.cookies["envcache_token"]
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"


def test_screenshots_directory_is_the_one_the_readme_names() -> None:
    from tests.fixtures.browser import SCREENSHOTS, WIDTH

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "tests/artifacts/screenshots/" in readme and "(docs/dashboard-overview.png)" in readme
    # The README's picture is one of these screenshots: a PNG as wide as the test browser.
    header = (root / "docs" / "dashboard-overview.png").read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(header[16:20], "big") == WIDTH
    if "ENVCACHE_SCREENSHOTS" not in os.environ:
        assert SCREENSHOTS == Path(__file__).resolve().parent / "artifacts" / "screenshots"
