#!/usr/bin/env python
r"""Browser check of the built book (issues 8 and 15).

Loads every page of the built HTML book in headless Chromium, saves one PNG screenshot per page
and fails (exit 1, with a report listing page and problem) when a page has

* an ``<img>`` that is missing or broken (src file missing on disk, or ``naturalWidth == 0``
  after load in the browser);
* an internal link to a local file that does not exist, or to an ``#anchor`` that is not an id
  on the target page (links to ``.html`` pages, with or without an anchor, and same-page anchors);
* raw MyST left unrendered in its visible text (``{glue:text}`...``, ``{glue:figure}``,
  ``{cite}`...``, ``{code-cell}``, fenced or colon directives such as ````` ```{note} ````` or
  ``:::{figure}``, other ``{role}`...`` roles);
* a notebook error output (``.output.error``, ``.traceback``, ``highlight-ipythontb`` elements,
  or ``Traceback (most recent call last)`` in the text);
* a page listed in the book's ``_toc.yml`` that was not built;
* (in the browser) math left untypeset (``\(`` or ``\[`` in the visible text: MathJax did not
  run), a JavaScript exception, or a request to the network (the page must not depend on one).

Pages checked: every page reachable from ``index.html`` (following its meta refresh) through
internal links to ``.html`` files, plus every page listed in the ``_toc.yml`` found next to the
build (``<html>/../../_toc.yml``, or ``--toc``).

The browser is driven through the Chrome DevTools Protocol over ``--remote-debugging-pipe``
(standard library only: no Selenium, no chromedriver, no websocket package). It runs without
network access whatever the machine has: every request goes to a proxy that does not exist
(``--proxy-server``, loopback excepted) and requests to http(s) and ws(s) URLs are blocked, so a
page that loads anything from a CDN fails the check (``remote`` problem), and so does whatever
that script would have done (untypeset math, say).

``--no-browser`` runs only the HTML checks (BeautifulSoup), which need no Chromium; the tests use
:func:`check_site` / :func:`check_page_static` this way.

Usage::

    .venv/bin/python scripts/browser_check.py [HTML_DIR] [--out DIR] [--no-browser]

Exit status: 0 no problems, 1 problems found, 2 the check itself could not run.
"""
from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bs4 import BeautifulSoup

# --------------------------------------------------------------------------------------------
# What counts as a problem
# --------------------------------------------------------------------------------------------

#: Raw MyST that should never be visible in a rendered page: (regex, description).
MYST_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\{glue(?::[\w-]+)?\}`?"), "glue role/directive"),
    (re.compile(r"\{cite(?::[\w-]+)?\}`"), "cite role"),
    (re.compile(r"\{code-cell\}"), "code-cell directive"),
    (re.compile(r"```\{"), "fenced directive"),
    (re.compile(r":::+\{"), "colon directive"),
    (re.compile(r"\{(?:ref|doc|numref|eq|math|term|download|abbr|index|sub-ref|bibliography)\}`"),
     "role"),
]
#: Elements that hold a notebook error output (CSS selectors, also used in the browser).
ERROR_SELECTORS = [".output.error", ".output.traceback", ".traceback", ".highlight-ipythontb"]
#: Text that betrays a notebook error output.
ERROR_TEXT = [re.compile(r"Traceback \(most recent call last\)")]

SKIP_SCHEMES = ("http:", "https:", "mailto:", "javascript:", "data:", "tel:", "ftp:")
HIDDEN_TAGS = ("script", "style", "noscript", "template", "head", "title", "meta", "link")


@dataclass
class Problem:
    page: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.page}: [{self.kind}] {self.detail}"


@dataclass
class Report:
    pages: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[Problem] = field(default_factory=list)
    screenshots: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, problem: Problem) -> None:
        key = (problem.page, problem.kind, problem.detail)
        if key not in {(p.page, p.kind, p.detail) for p in self.problems}:
            self.problems.append(problem)

    def format(self) -> str:
        lines = [f"[browser-check] {len(self.pages)} page(s) checked in {self.seconds:.1f} s"]
        for p in self.pages:
            lines.append(f"  page {p}")
        if self.screenshots:
            lines.append(f"[browser-check] {len(self.screenshots)} screenshot(s):")
            lines += [f"  {s}" for s in self.screenshots]
        if self.notes:
            lines.append(f"[browser-check] {len(self.notes)} note(s) (not failures):")
            lines += [f"  {n}" for n in self.notes]
        if self.problems:
            lines.append(f"[browser-check] FAILED: {len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
        else:
            lines.append("[browser-check] OK: no problems found")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# HTML-only checks (no browser)
# --------------------------------------------------------------------------------------------

def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _parse(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8", errors="replace"), "html.parser")


_IDS_CACHE: dict[int, tuple[BeautifulSoup, set[str]]] = {}


def _ids(soup: BeautifulSoup) -> set[str]:
    hit = _IDS_CACHE.get(id(soup))
    if hit is not None and hit[0] is soup:
        return hit[1]
    ids = {t["id"] for t in soup.find_all(attrs={"id": True})}
    ids |= {t["name"] for t in soup.find_all("a", attrs={"name": True})}
    _IDS_CACHE[id(soup)] = (soup, ids)
    return ids


def _local_target(page: Path, ref: str) -> tuple[Path | None, str]:
    """(file, fragment) for a local reference from ``page``; file None for a same-page anchor.
    Returns (Path(""), "") for references that are not local files (other schemes)."""
    ref = ref.strip()
    if not ref or ref.lower().startswith(SKIP_SCHEMES) or ref.startswith("//"):
        return Path(""), ""
    parts = urlsplit(ref)
    if parts.scheme and parts.scheme != "file":
        return Path(""), ""
    path = unquote(parts.path)
    if not path:
        return None, unquote(parts.fragment)
    target = Path(path) if parts.scheme == "file" else page.parent / path
    if path.endswith("/") or target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def visible_text(soup: BeautifulSoup) -> str:
    """Text a reader could see (without scripts, styles, hidden templates)."""
    body = soup.body or soup
    clone = BeautifulSoup(str(body), "html.parser")
    for tag in clone.find_all(HIDDEN_TAGS):
        tag.decompose()
    for tag in clone.find_all(attrs={"hidden": True}):
        tag.decompose()
    return clone.get_text(" ")


def text_problems(page: str, text: str) -> list[Problem]:
    """Raw MyST and error tracebacks in a page's visible text."""
    out = []
    for rx, what in MYST_PATTERNS:
        for m in rx.finditer(text):
            ctx = " ".join(text[max(0, m.start() - 40): m.end() + 40].split())
            out.append(Problem(page, "raw-myst", f"unrendered {what} {m.group(0)!r} in: ...{ctx}..."))
    for rx in ERROR_TEXT:
        for m in rx.finditer(text):
            ctx = " ".join(text[m.start(): m.end() + 160].split())
            out.append(Problem(page, "error-output", f"traceback text: {ctx}"))
    return out


def check_page_static(root: Path, page_path: Path, soups: dict[Path, BeautifulSoup] | None = None,
                      text: bool = True) -> list[Problem]:
    """HTML-only checks of one page: image files, internal links and anchors, raw MyST, errors.

    ``text=False`` skips the visible-text and error-element checks (the browser does those)."""
    root = Path(root)
    page_path = Path(page_path)
    soups = {} if soups is None else soups
    page = _rel(page_path, root)

    def soup_of(p: Path) -> BeautifulSoup:
        key = p.resolve()
        if key not in soups:
            soups[key] = _parse(p)
        return soups[key]

    soup = soup_of(page_path)
    problems: list[Problem] = []

    refresh = _meta_refresh(soup)
    if refresh:
        target, _ = _local_target(page_path, refresh)
        if target and target != Path("") and not target.exists():
            problems.append(Problem(page, "link", f"meta refresh to missing file: {refresh}"))

    for img in soup.find_all("img"):
        src = img.get("src")
        if not src or not src.strip():
            problems.append(Problem(page, "image", f"<img> without src (alt={img.get('alt')!r})"))
            continue
        target, _ = _local_target(page_path, src)
        if target is None or target == Path(""):
            continue
        if not target.is_file():
            problems.append(Problem(page, "image", f"image file missing: {src} -> {_rel(target, root)}"))

    for a in soup.find_all("a", href=True):
        href = a["href"]
        target, frag = _local_target(page_path, href)
        if target == Path(""):
            continue
        if target is None:
            if frag and frag not in _ids(soup):
                problems.append(Problem(page, "link", f"anchor not found on this page: {href}"))
            continue
        if not target.exists():
            problems.append(Problem(page, "link", f"link to missing file: {href} -> {_rel(target, root)}"))
            continue
        if frag and target.suffix.lower() in (".html", ".htm"):
            if frag not in _ids(soup_of(target)):
                problems.append(Problem(page, "link", f"anchor #{frag} not found in {_rel(target, root)}: {href}"))

    if text:
        for sel in ERROR_SELECTORS:
            for el in soup.select(sel):
                snippet = " ".join(el.get_text(" ").split())[:200]
                problems.append(Problem(page, "error-output", f"{sel} element: {snippet}"))
        problems += text_problems(page, visible_text(soup))
    return _dedupe(problems)


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.page, p.kind, p.detail)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _meta_refresh(soup: BeautifulSoup) -> str | None:
    meta = soup.find("meta", attrs={"http-equiv": re.compile("^refresh$", re.I)})
    if meta and meta.get("content"):
        m = re.search(r"url\s*=\s*['\"]?([^'\";]+)", meta["content"], re.I)
        if m:
            return m.group(1).strip()
    return None


def discover_pages(root: Path, soups: dict[Path, BeautifulSoup] | None = None) -> list[Path]:
    """Every local .html page reachable from index.html (<a>/<link> hrefs, meta refresh), BFS order."""
    root = Path(root).resolve()
    soups = {} if soups is None else soups
    start = root / "index.html"
    if not start.is_file():
        return []
    seen, queue, order = {start}, [start], []
    while queue:
        page = queue.pop(0)
        order.append(page)
        if page not in soups:
            soups[page] = _parse(page)
        soup = soups[page]
        # <a> links plus the <link rel="index|search|next|prev"> navigation of Sphinx pages
        refs = [a["href"] for a in soup.find_all(["a", "link"], href=True)]
        refresh = _meta_refresh(soup)
        if refresh:
            refs.insert(0, refresh)
        for ref in refs:
            target, _ = _local_target(page, ref)
            if not target or target == Path("") or target.suffix.lower() not in (".html", ".htm"):
                continue
            target = target.resolve()
            if target in seen or not target.is_file():
                continue
            try:
                target.relative_to(root)
            except ValueError:
                continue
            if target.relative_to(root).parts[0] in ("_static", "_sources"):
                continue
            seen.add(target)
            queue.append(target)
    return order


def toc_pages(toc: Path) -> list[str]:
    """Document names listed in a jupyter-book _toc.yml (root, file: entries)."""
    import yaml

    data = yaml.safe_load(Path(toc).read_text()) or {}
    names: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    names.append(node[key])
            for v in node.values():
                if isinstance(v, (list, dict)):
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data)
    out = []
    for n in names:
        n = re.sub(r"\.(md|ipynb|rst)$", "", n)
        if n not in out:
            out.append(n)
    return out


def find_toc(root: Path) -> Path | None:
    for cand in (Path(root).resolve().parent.parent / "_toc.yml", Path(root).resolve().parent / "_toc.yml"):
        if cand.is_file():
            return cand
    return None


def collect_pages(root: Path, toc: Path | None, report: Report,
                  soups: dict[Path, BeautifulSoup]) -> list[Path]:
    root = Path(root).resolve()
    pages = discover_pages(root, soups)
    if not pages:
        report.add(Problem("index.html", "missing-page", f"no index.html in {root}"))
    if toc is not None:
        for name in toc_pages(toc):
            path = (root / f"{name}.html").resolve()
            if not path.is_file():
                report.add(Problem(f"{name}.html", "missing-page",
                                   f"listed in {toc.name} but not built (no {_rel(path, root)})"))
            elif path not in pages:
                report.notes.append(Problem(f"{name}.html", "unlinked",
                                            "listed in the TOC but not reachable from index.html"))
                pages.append(path)
    reports_dir = root / "reports"
    if reports_dir.is_dir():
        for log in sorted(reports_dir.rglob("*.err.log")):
            report.notes.append(Problem(_rel(log, root), "execution-log",
                                        "jupyter-book wrote a notebook execution error log "
                                        f"(modified {time.strftime('%Y-%m-%d %H:%M', time.localtime(log.stat().st_mtime))})"))
    return pages


def check_site(root: Path, toc: Path | None = None) -> Report:
    """HTML-only check of a whole built site (no browser)."""
    t0 = time.monotonic()
    root = Path(root).resolve()
    report = Report()
    soups: dict[Path, BeautifulSoup] = {}
    for page in collect_pages(root, toc, report, soups):
        report.pages.append(_rel(page, root))
        for p in check_page_static(root, page, soups):
            report.add(p)
    report.seconds = time.monotonic() - t0
    return report


# --------------------------------------------------------------------------------------------
# Chromium over the DevTools protocol (pipe transport, standard library only)
# --------------------------------------------------------------------------------------------

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
                  "--mute-audio", "--no-default-browser-check", "--remote-debugging-pipe",
                  # no network: every request goes to a proxy that does not exist (port 9 on
                  # loopback, where nothing listens), and no proxy bypass for other hosts
                  "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


class CDPError(RuntimeError):
    pass


class Chromium:
    """Headless Chromium driven with CDP messages over fds 3 (commands) and 4 (replies)."""

    def __init__(self, binary: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="browser-check-profile-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        # copies at fds >= 10, so that placing them at 3 and 4 in the child cannot clobber either
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r)
        os.close(from_child_w)

        def wire():  # runs in the child before exec: the protocol reads fd 3 and writes fd 4
            os.dup2(child_r, 3)  # dup2 copies are inheritable
            os.dup2(child_w, 4)

        self._log = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                close_fds=False, preexec_fn=wire)
        except BaseException:
            for fd in (self._to_child, self._from_child):
                os.close(fd)
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        finally:
            os.close(child_r)
            os.close(child_w)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- transport --
    def _read_message(self, deadline: float) -> dict | None:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._from_child], [], [], left)
            if not ready:
                return None
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise CDPError("Chromium closed the DevTools pipe (crashed?): " + self._stderr_tail())
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read_message(deadline)
            if reply is None:
                raise CDPError(f"no reply to {method} within {timeout or self.timeout} s")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, session: str | None, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["method"] == method and (session is None or ev.get("sessionId") == session):
                    return self.events.pop(i)
            msg = self._read_message(deadline)
            if msg is None:
                return None
            if "method" in msg:
                self.events.append(msg)

    def drain(self, session: str | None = None) -> list[dict]:
        """Return (and drop) buffered events, after reading whatever is already waiting."""
        while True:
            msg = self._read_message(time.monotonic() + 0.05)
            if msg is None:
                break
            if "method" in msg:
                self.events.append(msg)
        mine = [e for e in self.events if session is None or e.get("sessionId") == session]
        self.events = [e for e in self.events if e not in mine]
        return mine

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", timeout=5)
                except Exception:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._log.close()
            shutil.rmtree(self.profile, ignore_errors=True)


#: Runs in each page after load: forces lazy images to load, then reports what the reader sees.
PAGE_PROBE = r"""
(async () => {
  const imgs = Array.from(document.images);
  for (const im of imgs) { if (im.loading === 'lazy') im.loading = 'eager'; }
  await Promise.all(imgs.map(im => im.complete ? null : new Promise(res => {
    im.addEventListener('load', res, {once: true});
    im.addEventListener('error', res, {once: true});
    setTimeout(res, 10000);
  })));
  // let MathJax 3 finish typesetting when it loaded (from the book's own _static/mathjax)
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    await Promise.race([MathJax.startup.promise, new Promise(res => setTimeout(res, 10000))]);
  }
  const sels = %s;
  const errors = [];
  for (const sel of sels) {
    for (const el of document.querySelectorAll(sel)) {
      errors.push({sel: sel, text: (el.innerText || el.textContent || '').slice(0, 300)});
    }
  }
  return {
    title: document.title,
    images: imgs.map(im => ({src: im.getAttribute('src'), url: im.currentSrc || im.src,
                             complete: im.complete, naturalWidth: im.naturalWidth,
                             alt: im.getAttribute('alt')})),
    text: document.body ? document.body.innerText : '',
    errors: errors,
    width: Math.max(document.documentElement.scrollWidth, document.body ? document.body.scrollWidth : 0),
    height: Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0),
  };
})()
""" % json.dumps(ERROR_SELECTORS)


def find_chromium(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot_name(page: str) -> str:
    stem = re.sub(r"\.html?$", "", page)
    return re.sub(r"[^A-Za-z0-9._-]+", "__", stem) + ".png"


def browser_check(root: Path, out_dir: Path, binary: str, toc: Path | None = None,
                  width: int = 1280, height: int = 900, max_height: int = 12000,
                  page_timeout: float = 30.0) -> Report:
    t0 = time.monotonic()
    root = Path(root).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    report = Report()
    soups: dict[Path, BeautifulSoup] = {}
    pages = collect_pages(root, toc, report, soups)
    browser = Chromium(binary, timeout=page_timeout)
    try:
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Network.enable", "Log.enable"):
            browser.send(method, session=session)
        browser.send("Network.setBlockedURLs", {"urls": ["http://*", "https://*", "ws://*", "wss://*"]},
                     session=session)
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        for page_path in pages:
            page = _rel(page_path, root)
            report.pages.append(page)
            for p in check_page_static(root, page_path, soups, text=False):
                report.add(p)
            browser.drain(session)
            nav = browser.send("Page.navigate", {"url": page_path.as_uri()}, session=session)
            if nav.get("errorText"):
                report.add(Problem(page, "load", f"navigation failed: {nav['errorText']}"))
                continue
            if browser.wait_event("Page.loadEventFired", session, page_timeout) is None:
                report.notes.append(Problem(page, "load", f"no load event within {page_timeout:.0f} s; checked as is"))
            info: dict = {}
            refresh = _meta_refresh(soups[page_path.resolve()])
            if refresh:  # e.g. jupyter-book's index.html: check (and shoot) where it lands
                if browser.wait_event("Page.loadEventFired", session, 10) is None:
                    report.add(Problem(page, "load", f"meta refresh to {refresh} did not load"))
                    continue
                report.notes.append(Problem(page, "redirect", f"meta refresh to {refresh} loads; "
                                                              "the screenshot shows where it lands"))
            else:
                res = browser.send("Runtime.evaluate", {"expression": PAGE_PROBE, "awaitPromise": True,
                                                        "returnByValue": True}, session=session)
                if "exceptionDetails" in res:
                    report.add(Problem(page, "probe", f"page probe failed: {res['exceptionDetails'].get('text')}"))
                else:
                    info = res["result"]["value"]
                    _browser_findings(report, root, page_path, page, info, browser.drain(session))
            if not info:  # redirect or failed probe: size the screenshot from the page as it is
                res = browser.send("Runtime.evaluate", {"expression": "document.documentElement.scrollHeight",
                                                        "returnByValue": True}, session=session)
                info = {"height": (res.get("result") or {}).get("value")}
            # full-page screenshot, height capped
            shot_h = max(height, min(int(info.get("height") or height), max_height))
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": shot_h, "deviceScaleFactor": 1, "mobile": False},
                         session=session)
            time.sleep(0.2)
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session,
                                timeout=60)
            browser.send("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                         session=session)
            path = out_dir / screenshot_name(page)
            path.write_bytes(base64.b64decode(shot["data"]))
            report.screenshots.append(str(path))
    finally:
        browser.close()
    report.seconds = time.monotonic() - t0
    return report


def _browser_findings(report: Report, root: Path, page_path: Path, page: str, info: dict,
                      events: list[dict]) -> None:
    missing_files = {p.detail for p in report.problems if p.page == page and p.kind == "image"}
    for im in info["images"]:
        if im["naturalWidth"] == 0:
            src = im["src"] or ""
            if any(f"image file missing: {src} " in d for d in missing_files):
                continue  # already reported as a missing file
            if src.lower().startswith(("http:", "https:", "//")):
                report.notes.append(Problem(page, "image", f"remote image not loaded (offline): {src}"))
                continue
            report.add(Problem(page, "image", f"broken image (naturalWidth 0 after load): {src or im['url']}"))
    for err in info["errors"]:
        snippet = " ".join(err["text"].split())[:200]
        report.add(Problem(page, "error-output", f"{err['sel']} element: {snippet}"))
    for p in text_problems(page, info["text"]):
        report.add(p)
    raw_math = len(re.findall(r"\\\(|\\\[", info["text"]))
    if raw_math:
        report.add(Problem(page, "math", f"{raw_math} TeX expression(s) shown untypeset "
                                         "(\\( or \\[ in the text: MathJax did not run)"))
    blocked, failed_local = set(), set()
    for ev in events:
        if ev["method"] == "Network.loadingFailed":
            prm = ev["params"]
            rid = prm.get("requestId")
            url = next((e["params"]["request"]["url"] for e in events
                        if e["method"] == "Network.requestWillBeSent" and e["params"].get("requestId") == rid), "")
            if prm.get("blockedReason") or url.startswith(("http:", "https:", "ws")):
                blocked.add(url or prm.get("errorText", ""))
            elif url.startswith("file:") and not prm.get("canceled"):
                failed_local.add((url, prm.get("errorText", "")))
        elif ev["method"] == "Runtime.exceptionThrown":
            det = ev["params"]["exceptionDetails"]
            text = (det.get("exception") or {}).get("description") or det.get("text", "")
            report.add(Problem(page, "js-exception", text.splitlines()[0][:200] if text else "?"))
    for url, why in sorted(failed_local):
        local = Path(unquote(urlsplit(url).path))
        report.add(Problem(page, "resource", f"local resource failed to load ({why}): {_rel(local, root)}"))
    if blocked:
        hosts = sorted({urlsplit(u).netloc or u for u in blocked})
        report.add(Problem(page, "remote", f"{len(blocked)} request(s) to the network (blocked: the book must "
                                           f"work offline): {', '.join(hosts)}"))


# --------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("html_dir", nargs="?", default="_build/html", help="built book (default _build/html)")
    ap.add_argument("--out", default="_build/browser-check", help="screenshot folder (default _build/browser-check)")
    ap.add_argument("--toc", default=None, help="_toc.yml to compare against (default: <html_dir>/../../_toc.yml if present)")
    ap.add_argument("--no-toc", action="store_true", help="do not read a _toc.yml")
    ap.add_argument("--no-browser", action="store_true", help="HTML-only checks (no Chromium, no screenshots)")
    ap.add_argument("--chromium", default=os.environ.get("CHROMIUM"), help="browser binary (default: chromium on PATH)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each page's load event")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--max-height", type=int, default=12000, help="cap on full-page screenshot height")
    ap.add_argument("--json", default=None, help="also write the report as JSON to this file")
    args = ap.parse_args(argv)

    root = Path(args.html_dir)
    if not (root / "index.html").is_file():
        print(f"[browser-check] error: {root}/index.html not found (build the book first)", file=sys.stderr)
        return 2
    toc = None if args.no_toc else (Path(args.toc) if args.toc else find_toc(root))
    if toc is not None and not toc.is_file():
        print(f"[browser-check] error: TOC {toc} not found", file=sys.stderr)
        return 2
    if args.no_browser:
        report = check_site(root, toc)
    else:
        binary = find_chromium(args.chromium)
        if not binary:
            print("[browser-check] error: no chromium on PATH (apt-get install chromium, "
                  "or run with --no-browser)", file=sys.stderr)
            return 2
        try:
            report = browser_check(root, Path(args.out), binary, toc, args.width, args.height,
                                   args.max_height, args.timeout)
        except (CDPError, OSError) as exc:
            print(f"[browser-check] error: browser failed: {exc}", file=sys.stderr)
            return 2
    print(report.format())
    if args.json:
        Path(args.json).write_text(json.dumps({
            "ok": report.ok, "seconds": round(report.seconds, 2), "pages": report.pages,
            "screenshots": report.screenshots,
            "problems": [vars(p) for p in report.problems], "notes": [vars(n) for n in report.notes],
        }, indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
