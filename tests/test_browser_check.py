"""Tests of scripts/browser_check.py on small synthetic sites (HTML-only checks need no browser;
the browser tests run only where Chromium is installed)."""
from __future__ import annotations

import base64
import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("browser_check", ROOT / "scripts" / "browser_check.py")
bc = importlib.util.module_from_spec(_spec)
sys.modules["browser_check"] = bc
_spec.loader.exec_module(bc)

# a valid 1x1 PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


def page(title: str, body: str, head: str = "") -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{head}</head>"
            f"<body>{body}</body></html>")


GOOD_BODY = """
<nav><a href="intro.html">Intro</a> <a href="sub/other.html">Other</a></nav>
<main>
<h1 id="top">Intro</h1>
<p>Text with a <a href="#top">same-page link</a>, a link to
<a href="sub/other.html#section-2">another page's section</a>, a
<a href="https://example.org/x">remote link</a>, <a href="mailto:a@b.c">mail</a> and
<a href="#">an empty anchor</a>.</p>
<img src="_images/fig.png" alt="figure">
<img src="data:image/png;base64,%s" alt="inline">
<pre><code>x = {"a": 1}</code></pre>
<script>var s = "{glue:text}`not visible` ```{note}";</script>
<style>.x::after { content: "{cite}`nope`"; }</style>
</main>
""" % base64.b64encode(PNG).decode()

OTHER_BODY = """
<main><h1 id="other">Other</h1><section id="section-2"><p>Back to <a href="../intro.html#top">intro</a>;
<a name="legacy"></a><a href="#legacy">legacy anchor</a>.</p>
<img src="../_images/fig.png" alt="figure"></section></main>
"""


def make_site(root: Path, intro_body: str = GOOD_BODY, other_body: str = OTHER_BODY) -> Path:
    (root / "_images").mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    (root / "_images" / "fig.png").write_bytes(PNG)
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=intro.html" />')
    (root / "intro.html").write_text(page("Intro", intro_body))
    (root / "sub" / "other.html").write_text(page("Other", other_body))
    return root


def kinds(problems) -> list[str]:
    return [p.kind for p in problems]


def test_good_site_passes(tmp_path):
    root = make_site(tmp_path / "html")
    report = bc.check_site(root)
    assert report.ok, report.format()
    assert report.pages == ["index.html", "intro.html", "sub/other.html"]
    assert bc.check_page_static(root, root / "intro.html") == []


def test_discovery_follows_refresh_links_and_link_tags_but_not_static(tmp_path):
    root = make_site(tmp_path / "html")
    (root / "_static").mkdir()
    (root / "_static" / "x.html").write_text(page("static", "x"))
    (root / "genindex.html").write_text(page("Index", "<p>index</p>"))
    (root / "orphan.html").write_text(page("Orphan", "<p>nobody links here</p>"))
    intro = page("Intro", GOOD_BODY + '<a href="_static/x.html">s</a>',
                 head='<link rel="index" href="genindex.html">')
    (root / "intro.html").write_text(intro)
    found = [p.relative_to(root.resolve()).as_posix() for p in bc.discover_pages(root)]
    assert found == ["index.html", "intro.html", "genindex.html", "sub/other.html"]


def test_missing_image_file_and_img_without_src(tmp_path):
    body = GOOD_BODY + '<img src="_images/gone.png" alt="gone"><img alt="no source">'
    root = make_site(tmp_path / "html", intro_body=body)
    problems = bc.check_page_static(root, root / "intro.html")
    assert kinds(problems) == ["image", "image"], problems
    assert any("image file missing: _images/gone.png" in p.detail for p in problems)
    assert any("without src" in p.detail for p in problems)
    assert all(p.page == "intro.html" for p in problems)


@pytest.mark.parametrize("href,detail", [
    ("missing.html#x", "missing file: missing.html#x"),
    ("sub/other.html#nope", "anchor #nope not found in sub/other.html"),
    ("#nowhere", "#nowhere"),
], ids=["missing-page", "anchor-on-other-page", "anchor-on-same-page"])
def test_broken_link(tmp_path, href, detail):
    root = make_site(tmp_path / "html", intro_body=GOOD_BODY + f'<a href="{href}">x</a>')
    problems = bc.check_page_static(root, root / "intro.html")
    assert len(problems) == 1 and problems[0].kind == "link"
    assert detail in problems[0].detail


def test_meta_refresh_to_missing_page(tmp_path):
    root = make_site(tmp_path / "html")
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=gone/intro.html" />')
    report = bc.check_site(root)
    assert [(p.page, p.kind) for p in report.problems] == [("index.html", "link")]
    assert "meta refresh to missing file: gone/intro.html" in report.problems[0].detail


def test_link_to_missing_local_download(tmp_path):
    root = make_site(tmp_path / "html", intro_body=GOOD_BODY + '<a href="_sources/intro.ipynb">nb</a>')
    problems = bc.check_page_static(root, root / "intro.html")
    assert kinds(problems) == ["link"]


@pytest.mark.parametrize("raw", [
    "The value is {glue:text}`acc:.3f` here.",
    "{glue:figure} fig_key",
    "The value is {glue}`acc` here.",
    "as shown by {cite}`stephenson2021`",
    "as shown by {cite:p}`stephenson2021`",
    "```{code-cell} ipython3",
    "```{note}",
    ":::{figure} x.png",
    "::::{admonition} Title",
    "see {ref}`sec-methods`",
])
def test_raw_myst_is_reported(tmp_path, raw):
    root = make_site(tmp_path / "html", intro_body=GOOD_BODY + f"<p>{raw}</p>")
    problems = bc.check_page_static(root, root / "intro.html")
    assert problems and all(p.kind == "raw-myst" for p in problems), problems
    assert "unrendered" in problems[0].detail


def test_raw_myst_inside_literal_block_is_reported(tmp_path):
    # an unknown directive comes out as a literal block; it is visible text all the same
    body = GOOD_BODY + '<div class="highlight"><pre>```{glue:figure} fig\n```</pre></div>'
    root = make_site(tmp_path / "html", intro_body=body)
    assert "raw-myst" in kinds(bc.check_page_static(root, root / "intro.html"))


@pytest.mark.parametrize("html", [
    '<div class="cell_output docutils container"><div class="output traceback highlight-ipythontb '
    'notranslate"><div class="highlight"><pre>ValueError: boom</pre></div></div></div>',
    '<div class="output error"><pre>NameError: name x is not defined</pre></div>',
    '<div class="highlight-ipythontb"><pre>KeyError</pre></div>',
    '<pre>Traceback (most recent call last):\n  File "x.py", line 1</pre>',
])
def test_error_output_is_reported(tmp_path, html):
    root = make_site(tmp_path / "html", intro_body=GOOD_BODY + html)
    problems = bc.check_page_static(root, root / "intro.html")
    assert problems and all(p.kind == "error-output" for p in problems), problems


def test_text_checks_can_be_left_to_the_browser(tmp_path):
    body = GOOD_BODY + "<p>{cite}`x`</p><div class='output error'>boom</div>"
    root = make_site(tmp_path / "html", intro_body=body)
    assert bc.check_page_static(root, root / "intro.html", text=False) == []


def test_site_report_lists_page_and_problem(tmp_path):
    body = GOOD_BODY + '<img src="_images/gone.png"><a href="sub/other.html#nope">x</a><p>{cite}`x`</p>'
    root = make_site(tmp_path / "html", intro_body=body)
    report = bc.check_site(root)
    assert not report.ok
    assert sorted(kinds(report.problems)) == ["image", "link", "raw-myst"]
    text = report.format()
    assert "FAILED: 3 problem(s)" in text
    assert "intro.html: [image] image file missing: _images/gone.png" in text
    assert "intro.html: [link] anchor #nope not found in sub/other.html" in text


def test_toc_pages_missing_from_build_are_reported(tmp_path):
    root = make_site(tmp_path / "_build" / "html")
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: intro\nchapters:\n  - file: sub/other\n"
                   "  - file: sub/missing.md\n  - file: unlinked\n")
    (root / "unlinked.html").write_text(page("Unlinked", "<p>only in the TOC</p>"))
    assert bc.toc_pages(toc) == ["intro", "sub/other", "sub/missing", "unlinked"]
    assert bc.find_toc(root) == toc.resolve()
    report = bc.check_site(root, toc)
    assert [(p.page, p.kind) for p in report.problems] == [("sub/missing.html", "missing-page")]
    assert "unlinked.html" in report.pages
    assert any(n.kind == "unlinked" for n in report.notes)


def test_main_no_browser_exit_codes(tmp_path, capsys):
    good = make_site(tmp_path / "good")
    assert bc.main([str(good), "--no-browser", "--no-toc"]) == 0
    assert "OK: no problems found" in capsys.readouterr().out
    bad = make_site(tmp_path / "bad", intro_body=GOOD_BODY + "<p>{glue:text}`x`</p>")
    assert bc.main([str(bad), "--no-browser", "--no-toc", "--json", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr().out
    assert "intro.html: [raw-myst]" in out
    assert '"ok": false' in (tmp_path / "r.json").read_text()
    assert bc.main([str(tmp_path / "nothing"), "--no-browser"]) == 2


def test_screenshot_names():
    assert bc.screenshot_name("book/intro.html") == "book__intro.png"
    assert bc.screenshot_name("index.html") == "index.png"


needs_chromium = pytest.mark.skipif(bc.find_chromium() is None, reason="chromium not installed")


@needs_chromium
def test_browser_finds_broken_image_and_untypeset_math_and_takes_screenshots(tmp_path):
    body = GOOD_BODY + r'<img src="_images/corrupt.png" alt="corrupt"><p>{cite}`x` and \(x^2\)</p>'
    root = make_site(tmp_path / "html", intro_body=body)
    (root / "_images" / "corrupt.png").write_bytes(b"not a png at all")
    out = tmp_path / "shots"
    report = bc.browser_check(root, out, bc.find_chromium(), page_timeout=20)
    assert sorted((p.page, p.kind) for p in report.problems) == [
        ("intro.html", "image"), ("intro.html", "math"), ("intro.html", "raw-myst")], report.format()
    assert any(n.page == "index.html" and n.kind == "redirect" for n in report.notes)
    assert all("naturalWidth 0" in p.detail for p in report.problems if p.kind == "image")
    assert "1 TeX expression(s) shown untypeset" in next(p.detail for p in report.problems if p.kind == "math")
    assert sorted(p.name for p in out.glob("*.png")) == ["index.png", "intro.png", "sub__other.png"]
    assert all(Path(s).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for s in report.screenshots)


@needs_chromium
def test_browser_fails_on_javascript_exceptions_and_network_requests(tmp_path):
    # the sphinx-thebe symptom (one `const` declared twice) and a script from a CDN
    head = ('<script>const THEBE_JS_URL = "x"</script><script>const THEBE_JS_URL = "x"</script>'
            '<script src="https://cdn.example.org/mathjax/tex-chtml.js"></script>')
    root = make_site(tmp_path / "html")
    (root / "intro.html").write_text(page("Intro", GOOD_BODY, head=head))
    report = bc.browser_check(root, tmp_path / "shots", bc.find_chromium(), page_timeout=20)
    kinds = sorted((p.page, p.kind) for p in report.problems)
    assert kinds == [("intro.html", "js-exception"), ("intro.html", "remote")], report.format()
    js = next(p for p in report.problems if p.kind == "js-exception")
    assert "Identifier 'THEBE_JS_URL' has already been declared" in js.detail
    assert "cdn.example.org" in next(p.detail for p in report.problems if p.kind == "remote")
    assert not any(n.kind in ("js-exception", "math", "offline") for n in report.notes)


@needs_chromium
def test_browser_passes_a_clean_site_offline(tmp_path):
    root = make_site(tmp_path / "html")
    report = bc.browser_check(root, tmp_path / "shots", bc.find_chromium(), page_timeout=20)
    assert report.ok, report.format()
    assert [n.kind for n in report.notes] == ["redirect"]


def test_no_network_flags():
    assert "--proxy-server=http://127.0.0.1:9" in bc.CHROMIUM_FLAGS
    assert "--proxy-bypass-list=<-loopback>" in bc.CHROMIUM_FLAGS
