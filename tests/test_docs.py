"""The documentation site builds with ``mkdocs build --strict`` (a broken link, a page missing from the navigation or an
API reference that does not resolve fails), and a real browser shows it: the built site is served on localhost and
headless Chromium (Debian's ``chromium``; ``make chromium`` installs it) opens the home page, a guide and an API
page, each of which must have its title, the navigation and code blocks, and log no console error. A screenshot of
each goes under the test's ``tmp_path``.

Chromium is driven through its own DevTools protocol over ``--remote-debugging-pipe`` (JSON messages on file
descriptors 3 and 4), so the test needs no client library.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)
# The flags that make a headless Chromium work in a container and stay off the network.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def build_site(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = build_site(out)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_the_site_builds_strictly_with_every_page_and_the_api_reference(site: Path) -> None:
    for page in ("index", "getting-started/index", "findings/index", "your-own-project/index", "changelog/index"):
        assert (site / f"{page}.html").is_file(), page
    for guide in ("warmup", "early-stopping", "shuffle-audit", "cross-validation"):
        assert (site / "guides" / guide / "index.html").is_file(), guide
    # The API reference is made from the docstrings: a class's signature and an argument's description are there.
    audit = (site / "reference" / "audit" / "index.html").read_text()
    assert "ShuffleAudit" in audit and "sample_ids" in audit and "on_issue" in audit
    # The docstrings' Sphinx markup is rewritten (docs/_ext/griffe_docstrings.py): doctests and formulas as code.
    for page in (site / "reference").rglob("index.html"):
        html = page.read_text()
        assert ".. math::" not in html and ":func:`" not in html and ":class:`" not in html, page
    warmup = (site / "reference" / "warmup" / "index.html").read_text()
    assert '<span class="k">\\tfrac</span>' in warmup  # a formula, highlighted as LaTeX code
    assert '<span class="gp">&gt;&gt;&gt; </span>' in warmup  # a doctest's prompt, highlighted as a console session
    # The changelog page is CHANGELOG.md itself.
    assert "Unreleased" in (site / "changelog" / "index.html").read_text()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The strictness is real: the same site with one link to a missing page does not build."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copy(ROOT / "CHANGELOG.md", tmp_path / "CHANGELOG.md")
    findings = tmp_path / "docs" / "findings.md"
    findings.write_text(findings.read_text() + "\nSee [the missing page](missing.md).\n")
    config = (tmp_path / "mkdocs.yml").read_text().replace("paths: [src]", f"paths: [{ROOT / 'src'}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=tmp_path,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "missing.md" in proc.stdout + proc.stderr


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site on a free localhost port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class Browser:
    """Headless Chromium driven through the DevTools protocol on a pipe (fd 3: commands in, fd 4: events out)."""

    def __init__(self, profile: Path) -> None:
        assert CHROMIUM is not None
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def fds() -> None:  # in the child: the pipe ends at the descriptors Chromium reads and writes
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            close_fds=False,
            preexec_fn=fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=1280,
            height=900,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"Chromium closed its pipe: {stderr}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def call(self, method: str, session: bool = False, timeout: float = 30, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                assert "error" not in answer, f"{method}: {answer['error']}"
                return dict(answer.get("result", {}))
            self.events.append(answer)

    def wait_for(self, method: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        # The theme's scripts run after the load event: let them, and read what they logged.
        self.evaluate("new Promise(done => setTimeout(done, 500))")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        return result["result"].get("value")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and failed loads the page logged since it was opened."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif event.get("method") == "Runtime.exceptionThrown":
                found.append(str(params.get("exceptionDetails", {}).get("text")))
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"{entry.get('text')} {entry.get('url', '')}")
        return found

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))
        return path

    def close(self) -> None:
        with contextlib.suppress(TimeoutError, RuntimeError, OSError):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


# What each page must show: its path, its title (the <title> and the page's heading) and the code it must hold.
PAGES = {
    "home": ("", "epochkit", "make demo"),
    "guide": ("guides/shuffle-audit/", "Shuffle audit", "ShuffleAudit(labels=1)"),
    "api": ("reference/audit/", "ShuffleAudit and SetEpoch", "ShuffleAudit("),
}


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: `make chromium` installs Debian's (apt-get, root)")
def test_the_home_page_a_guide_and_an_api_page_render_in_chromium(served: str, tmp_path: Path) -> None:
    browser = Browser(tmp_path / "profile")
    try:
        for name, (path, title, code) in PAGES.items():
            browser.open(f"{served}/{path}")
            page = browser.evaluate(
                """({
                    title: document.title,
                    heading: document.querySelector("article h1")?.textContent ?? "",
                    nav: [...document.querySelectorAll("nav.md-nav--primary a.md-nav__link")]
                        .map(a => a.textContent.trim()),
                    code: [...document.querySelectorAll("article pre code")].map(c => c.textContent),
                    highlighted: document.querySelectorAll("article .highlight pre").length,
                    stylesheets: document.styleSheets.length,
                    width: document.querySelector(".md-content")?.getBoundingClientRect().width ?? 0,
                })"""
            )
            shot = browser.screenshot(tmp_path / f"{name}.png")
            print(f"{name}: {served}/{path} -> {shot}")
            assert title in page["title"] and page["title"].endswith("epochkit"), page["title"]
            assert title in page["heading"], page["heading"]
            # The navigation: every section of the site, the guides and the API reference among them.
            assert {"Getting started", "Findings", "Shuffle audit and streams", "ShuffleAudit and SetEpoch"} <= set(
                page["nav"]
            ), page["nav"]
            assert page["code"] and page["highlighted"], f"{name} shows no code block"
            assert any(code in c for c in page["code"]), (code, page["code"][:3])
            assert page["stylesheets"] >= 1 and page["width"] > 400, page  # the theme's styles loaded and laid out
            assert not browser.errors(), browser.errors()
            assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
    finally:
        browser.close()


def test_the_findings_page_names_every_finding_of_every_callback() -> None:
    """Every ShuffleAudit and InitAudit finding code and every stopping reason has its row on the Findings page."""
    from epochkit.audit import CATALOG
    from epochkit.stopping import StoppingReason

    text = (ROOT / "docs" / "findings.md").read_text()
    rows = {line.split("|")[1].strip().split(" ")[0].strip("`") for line in text.splitlines() if line.startswith("| `")}
    assert set(CATALOG) <= rows, sorted(set(CATALOG) - rows)
    assert {reason.name for reason in StoppingReason} <= rows, sorted({r.name for r in StoppingReason} - rows)
    from epochkit.init_audit.findings import CATALOG as INIT_CATALOG

    assert set(INIT_CATALOG) <= rows, sorted(set(INIT_CATALOG) - rows)
