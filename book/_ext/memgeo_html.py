"""Sphinx extension for the memgeo book's HTML (listed in _config.yml under sphinx.local_extensions).

Repository buttons. The address of the book's repository is one setting, the environment variable
MEMGEO_REPOSITORY_URL (e.g. https://github.com/OWNER/memgeo; MEMGEO_REPOSITORY_BRANCH, default
main, names the branch). When it is set, pages get the repository and issues buttons and the
Binder launch button (which opens the page's notebook in the repository's `binder/`
environment); when it is not, none of them is shown, rather than a wrong address.

Scripts. The book has no thebe ("live code") button, but jupyter-book always loads sphinx-thebe,
whose inline configuration (`const THEBE_JS_URL = ...`) ends up twice on every page under Sphinx
7.4 and throws `SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`. Its inline
configuration and loader are dropped, and any inline script that appears twice is kept once.
"""
from __future__ import annotations

import os

ENV_URL = "MEMGEO_REPOSITORY_URL"
ENV_BRANCH = "MEMGEO_REPOSITORY_BRANCH"
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button", "use_edit_page_button")


def repository_options(options: dict, url: str | None, branch: str | None) -> dict:
    """html_theme_options with the repository buttons and the Binder launch button set from `url`
    (all of them removed when `url` is empty)."""
    options = dict(options)
    launch = dict(options.get("launch_buttons") or {})
    for key in REPOSITORY_BUTTONS + ("repository_url",):
        options.pop(key, None)
    url = (url or "").strip().rstrip("/")
    if url:
        options.update(repository_url=url, repository_branch=branch or options.get("repository_branch") or "main",
                       use_repository_button=True, use_issues_button=True)
    else:
        launch.pop("binderhub_url", None)
    options["launch_buttons"] = launch
    return options


def _set_repository(app, config) -> None:
    config.html_theme_options = repository_options(config.html_theme_options or {},
                                                   os.environ.get(ENV_URL), os.environ.get(ENV_BRANCH))


def clean_scripts(files: list) -> list:
    """`files` (Sphinx _JavaScript assets) without sphinx-thebe's and without repeats."""
    seen, out = set(), []
    for js in files:
        filename = getattr(js, "filename", None) or (js if isinstance(js, str) else "")
        attributes = dict(getattr(js, "attributes", {}) or {})
        body = attributes.get("body", "")
        if "THEBE_JS_URL" in body or str(filename).endswith("sphinx-thebe.js"):
            continue
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key in seen:
            continue
        seen.add(key)
        out.append(js)
    return out


def _clean_page_scripts(app, pagename, templatename, context, doctree) -> None:
    files = context.get("script_files")
    if isinstance(files, list):
        files[:] = clean_scripts(files)


def setup(app):
    app.connect("config-inited", _set_repository)
    # after every other handler (sphinx.ext.mathjax adds its script in this event too)
    app.connect("html-page-context", _clean_page_scripts, priority=1000)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
