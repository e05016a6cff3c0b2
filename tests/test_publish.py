"""What publishing relies on: the GitHub Pages workflow calls the README's commands, the Binder
environment matches the pinned one (with CPU torch), the repository buttons follow the one setting,
the thebe script is removed, and the licence and citation files are there."""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import yaml

from memgeo.config import PRESETS

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("memgeo_html", ROOT / "book" / "_ext" / "memgeo_html.py")
html_ext = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(html_ext)

GPU_ONLY = re.compile(r"^(nvidia-|cuda-|triton==)", re.I)


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "-")):
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = version
    return out


def test_binder_environment_is_the_pinned_one_with_cpu_torch():
    root, binder = pins(ROOT / "requirements.txt"), pins(ROOT / "binder" / "requirements.txt")
    assert binder.pop("torch") == root["torch"] + "+cpu"
    assert binder.pop("torchvision") == root["torchvision"] + "+cpu"
    expected = {k: v for k, v in root.items() if not GPU_ONLY.match(f"{k}==") and k not in ("torch", "torchvision")}
    assert binder == expected
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in (ROOT / "binder" / "requirements.txt").read_text()
    for script in ("postBuild", "start"):
        assert os.access(ROOT / "binder" / script, os.X_OK), script
    assert "pip install --no-deps --no-build-isolation -e ." in (ROOT / "binder" / "postBuild").read_text()
    start = (ROOT / "binder" / "start").read_text()
    assert "export MEMGEO_DEFAULT_PRESET=smoke" in start and 'exec "$@"' in start


def test_workflow_builds_with_the_readme_commands_and_deploys():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "book.yml").read_text())
    on = wf[True]  # YAML reads the key `on` as True
    assert "push" in on and on["workflow_dispatch"]["inputs"]["preset"]["options"] == ["cpu", "smoke", "paper"]
    assert set(on["workflow_dispatch"]["inputs"]["preset"]["options"]) == set(PRESETS)
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    steps = build["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    for action in ("actions/checkout", "actions/setup-python", "actions/cache", "actions/cache/restore",
                   "actions/cache/save", "actions/upload-pages-artifact"):
        assert action in uses, action
    runs = [s["run"] for s in steps if "run" in s]
    readme = (ROOT / "README.md").read_text()
    assert runs[0].startswith("bash scripts/book.sh ") and "bash scripts/book.sh" in readme
    assert runs[1].startswith("bash scripts/browser_check.sh ") and "bash scripts/browser_check.sh" in readme
    for script in ("scripts/book.sh", "scripts/browser_check.sh"):
        assert (ROOT / script).is_file()
    cached = {s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache")}
    assert cached == {"runs", "data"}
    save = next(s for s in steps if s.get("uses", "").startswith("actions/cache/save"))
    assert save["if"].startswith("always()")
    assert next(s for s in steps if "upload-pages-artifact" in s.get("uses", ""))["with"]["path"] == "_build/html"
    assert "MEMGEO_REPOSITORY_URL" in build["env"] and "inputs.preset" in build["env"]["PRESET"]
    assert deploy["needs"] == "build" and deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["steps"][0]["uses"].startswith("actions/deploy-pages@")


def test_repository_buttons_follow_the_one_setting():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "url" not in config.get("repository", {})
    assert not any(k in config.get("html", {}) for k in html_ext.REPOSITORY_BUTTONS)
    assert "colab_url" not in config["launch_buttons"] and not config["launch_buttons"].get("thebe")
    theme = {"launch_buttons": dict(config["launch_buttons"]), "repository_branch": "main", "path_to_docs": ""}
    unset = html_ext.repository_options(theme, None, None)
    assert not any(k in unset for k in html_ext.REPOSITORY_BUTTONS + ("repository_url",))
    assert "binderhub_url" not in unset["launch_buttons"]
    stale = html_ext.repository_options({**theme, "repository_url": "https://github.com/memgeo/memgeo",
                                         "use_repository_button": True}, "", None)
    assert "repository_url" not in stale and "use_repository_button" not in stale
    on = html_ext.repository_options(theme, "https://github.com/someone/memgeo/", "pages")
    assert on["repository_url"] == "https://github.com/someone/memgeo" and on["repository_branch"] == "pages"
    assert on["use_repository_button"] and on["use_issues_button"]
    assert on["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert theme["launch_buttons"].get("binderhub_url")  # the input is not changed


def test_thebe_script_removed_and_repeats_dropped():
    from sphinx.builders.html._assets import _JavaScript

    thebe = _JavaScript("", body='const THEBE_JS_URL = "x"; const thebe_selector = ".cell"')
    toggle = _JavaScript("", body="var togglebuttonSelector = '.toggle';")
    files = [_JavaScript("_static/doctools.js", priority=200), thebe, toggle,
             _JavaScript("_static/sphinx-thebe.js", **{"async": "async"}), thebe,
             _JavaScript("", body="var togglebuttonSelector = '.toggle';", priority=501),
             _JavaScript("_static/mathjax/tex-chtml.js", defer="defer")]
    kept = html_ext.clean_scripts(files)
    assert [js.filename for js in kept] == ["_static/doctools.js", "", "_static/mathjax/tex-chtml.js"]
    assert kept[1].attributes["body"].startswith("var togglebuttonSelector")


def test_licence_and_citation():
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT" and cff["authors"]
    paper = cff["references"][0]
    bib = (ROOT / "book" / "references.bib").read_text()
    assert paper["title"] in bib and paper["year"] == 2021
    assert [a["family-names"] for a in paper["authors"]] == ["Stephenson", "Padhy", "Ganesh", "Hui", "Tang", "Chung"]
