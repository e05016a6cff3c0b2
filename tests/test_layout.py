"""The layout of memgeo: small modules, no import circle, figures and prose apart from the
computations, thin notebooks, a README that lists every module, and tests that use public names."""
import ast
import re
from pathlib import Path

import memgeo

PACKAGE = Path(memgeo.__file__).parent
ROOT = PACKAGE.parent
TESTS = Path(__file__).parent
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """memgeo modules that `path` imports at module level (imports inside functions are lazy)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            if mod.startswith("memgeo"):
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in node.names)   # `from . import x` names a module
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("memgeo"))
    known = {module_name(p) for p in MODULES}
    return {m for m in out if m in known and m != name}


def test_no_module_exceeds_600_lines():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in MODULES}
    assert max(sizes.values()) <= 600, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_import_circle():
    graph = {module_name(p): top_level_imports(p) for p in MODULES}
    # a package's __init__ may import its own modules; every other edge must be acyclic
    left = {m: {d for d in deps if not m.startswith(d + ".") and not d.startswith(m + ".")}
            for m, deps in graph.items()}
    while left:
        ready = [m for m, deps in left.items() if not deps & set(left)]
        assert ready, f"import circle among {sorted(left)}"
        for m in ready:
            del left[m]


def test_computations_draw_nothing_and_write_no_prose():
    """Only memgeo.plots and memgeo.plotting import matplotlib; only memgeo.reports (and the book
    glue) build the pages' sentences: compute modules import neither."""
    for p in MODULES:
        name = module_name(p)
        src = p.read_text()
        if not (name == "memgeo.plots" or name.startswith("memgeo.plotting")):
            assert "matplotlib" not in src, name
        if not (name.startswith("memgeo.reports") or name in ("memgeo.verdicts", "memgeo.book")):
            assert "memgeo.reports" not in src and "from .reports" not in src, name
        if not name.startswith(("memgeo.plotting", "memgeo.reports")):
            assert not any(m.startswith(("memgeo.plotting", "memgeo.reports")) for m in top_level_imports(p)), name


def test_notebooks_hold_no_logic():
    """A notebook cell is a call, a figure or a glue: no function, class, condition or loop over
    results (the one loop draws the layer page's four geometry figures)."""
    for page in sorted((ROOT / "book").glob("*.md")):
        cells = re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", page.read_text(), re.S)
        for cell in cells:
            code = "\n".join(line for line in cell.splitlines() if not line.startswith(":tags:"))
            for node in ast.walk(ast.parse(code)):
                assert not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.While, ast.Lambda)), \
                    f"{page.name}: {ast.unparse(node)[:80]}"
                if isinstance(node, ast.For):
                    assert "figures." in ast.unparse(node), f"{page.name}: {ast.unparse(node)[:80]}"
            assert "config.json" not in code and "json.loads" not in code, page.name


def test_readme_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The library"):]
    section = section[:section.index("\n## ", 5)]
    for p in MODULES:
        if p.name == "__init__.py" and p.parent == PACKAGE:
            continue
        rel = p.relative_to(PACKAGE)
        name = f"{p.parent.name}/" if p.name == "__init__.py" else p.name
        assert re.search(rf"(^|[ /]){re.escape(name)}\s", section, re.M), f"README's library section misses {rel}"


def test_tests_use_public_names_only():
    """No test imports a `_private` name of memgeo (or of another test module) or reaches into one
    through an attribute."""
    files = sorted(TESTS.glob("*.py"))
    own = {f.stem for f in files}
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in own | {"memgeo"}:
                bad += [f"{f.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("memgeo"):
                bad += [f"{f.name}: {node.module}" for part in node.module.split(".") if part.startswith("_")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{f.name}: {node.value.id}.{node.attr}")
    assert not bad
