"""The operator console, as a person would use it: a stream worker and an index replica on the
real broker, traffic with a rating shift, the page opened in headless Chromium (Debian's
``/usr/bin/chromium`` driven by Playwright; no browser download): its plots draw data points,
the drift panel shows the alert, the page keeps updating, and a screenshot is kept. Every
endpoint answers 401 without the bearer token."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecrec_stream.contracts.events import utc_now
from streams.broker import free_port
from streams.kafka import all_topics, ensure_topics
from tests.helpers import isolated_env, produce, souring_reviews, unique, wait_until
from workers.processes import indexer_process, worker_process

CHROMIUM = "/usr/bin/chromium"
TOKEN = "console-test-token"
ARTIFACTS = Path(__file__).parent / "artifacts"
# As the machine probe found: without the networking flags Chromium keeps dialling Google's
# hosts, which this closed network refuses.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _items(n: int) -> list[tuple[str, str, bytes]]:
    now = utc_now().isoformat()
    titles = ["wool scarf", "silk scarf", "leather gloves", "wool socks", "rain jacket"]
    return [
        (
            "items",
            f"item-{k}",
            json.dumps(
                {
                    "event_id": f"console-item-{k}",
                    "ts": now,
                    "op": "upsert",
                    "item_id": f"item-{k}",
                    "title": f"{titles[k % 5]} {k}",
                    "category_path": ["apparel", titles[k % 5].split()[1]],
                }
            ).encode(),
        )
        for k in range(n)
    ]


def test_console_plots_the_loop_in_a_real_browser_behind_a_token(
    broker: Any, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    tag = unique("console")
    names, env = isolated_env(tag)
    ensure_topics(broker.bootstrap, all_topics(names), 4)
    worker_port, index_port = free_port(), free_port()
    worker_url, index_url = f"http://127.0.0.1:{worker_port}", f"http://127.0.0.1:{index_port}"
    env |= {
        "ECREC_API__TOKEN": TOKEN,
        "ECREC_LABELS__ENABLED": "false",  # ingest and drift: the alert comes within seconds
        "ECREC_DRIFT__DETECTORS": '["rating"]',
        "ECREC_DRIFT__WINDOW_EVENTS": "40",
        "ECREC_DRIFT__REFERENCE_SIZE": "160",
        "ECREC_DRIFT__MAX_LAG_S": "100000",
        "ECREC_CONSOLE__WORKER_URLS": json.dumps([worker_url]),
        "ECREC_CONSOLE__SAMPLE_INTERVAL_S": "0.5",
    }
    procs = [
        worker_process(broker.url, tmp_path / "w", worker_port, extra_env=env).start(),
        indexer_process(broker.url, tmp_path, index_port, extra_env=env).start(),
    ]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        procs[0].wait_http(f"{worker_url}/ecrec/stats?token={TOKEN}", timeout_s=180)
        procs[1].wait_http(f"{index_url}/healthz?token={TOKEN}", timeout_s=180)
        # every endpoint of both processes refuses a request without the token
        wrong = {"Authorization": "Bearer not-the-token"}
        for url in (f"{index_url}/stats", f"{index_url}/console", f"{index_url}/console/data",
                    f"{index_url}/console/static/console.js", f"{index_url}/search?q=scarf",
                    f"{index_url}/metrics/", f"{index_url}/healthz",
                    f"{worker_url}/ecrec/stats", f"{worker_url}/ecrec/drift",
                    f"{worker_url}/metrics"):  # fmt: skip
            assert httpx.get(url, timeout=10).status_code == 401, url
            assert httpx.get(url, timeout=10, headers=wrong).status_code == 401, url
        assert httpx.get(f"{index_url}/stats", headers=auth, timeout=10).status_code == 200

        topics = {"items": names.items, "reviews": names.reviews}
        produce(broker.bootstrap, [(topics[k], key, v) for k, key, v in _items(60)])
        wait_until(
            lambda: httpx.get(f"{index_url}/stats", headers=auth, timeout=10).json()["items"] == 60,
            timeout_s=120,
        )
        produce(broker.bootstrap, souring_reviews(names.reviews, tag, 600))
        for q in ("wool scarf", "rain jacket", "gloves"):  # latency points
            httpx.get(f"{index_url}/search", params={"q": q}, headers=auth, timeout=30)

        ARTIFACTS.mkdir(exist_ok=True)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2200})
            page.goto(f"{index_url}/console?token={TOKEN}")

            def points(selector: str) -> int:
                return int(page.eval_on_selector(selector, "e => Number(e.dataset.points || 0)"))

            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if (
                    points("#chart-items") > 0
                    and points("#chart-events") > 0
                    and page.locator(".drift-chart[data-alerts]:not([data-alerts='0'])").count()
                ):
                    break
                page.wait_for_timeout(500)
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
            data = httpx.get(f"{index_url}/console/data", headers=auth, timeout=10).json()
            (ARTIFACTS / "console-data.json").write_text(json.dumps(data, indent=1))
            shutil.copy(ARTIFACTS / "console.png", tmp_path / "console.png")
            # the plots are drawn (uPlot canvases) from data points
            assert points("#chart-items") > 0 and points("#chart-events") > 0
            assert points("#chart-latency") > 0 and points("#chart-freshness") > 0
            assert page.locator("#chart-items canvas").count() >= 1
            # the drift panel plots the rating detector with its alert marked, and lists it
            assert page.locator("#drift-rating canvas").count() >= 1
            assert int(page.get_attribute("#drift-rating", "data-alerts") or 0) >= 1
            assert int(page.get_attribute("#drift-rating", "data-marked") or 0) >= 1
            assert "rating" in page.inner_text("#alerts")
            # and the page keeps updating
            before = page.evaluate("window.consoleUpdates")
            page.wait_for_timeout(5000)
            assert page.evaluate("window.consoleUpdates") >= before + 2
            assert "ok" in page.inner_text("#sources")
            browser.close()
    finally:
        for proc in procs:
            proc.stop()
