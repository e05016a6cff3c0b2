"""The layout of memgeo.geometry: public names, no import circle, small modules, and tests
that use public names only."""
import ast
import importlib
import pkgutil
from pathlib import Path

import memgeo.geometry as geometry

PACKAGE = Path(geometry.__file__).parent
TESTS = Path(__file__).parent

# every name memgeo, the book and the benchmarks use from memgeo.geometry
PUBLIC = ["analyze", "preprocess", "capacity_from_points", "solve_f", "solve_f_cvxopt",
          "solve_f_nnls", "kkt_residual", "manifold_statistics", "sample_t", "center_correlation",
          "find_center_subspace", "RandomProjection", "random_projection", "alpha_points",
          "alpha_segment", "alpha_ball", "f_ball", "f_simplex", "simplex_points",
          "cover_fraction", "simulated_capacity", "separable_fraction", "is_separable",
          "SimulatedCapacity", "GeometryResult", "PerManifold", "PerT", "Preprocessed",
          "SolveResult", "CenterSubspace", "ENGINE_VERSION", "ESTIMATORS", "SOLVERS", "BACKENDS"]


def _modules():
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]))


def _imports(path: Path) -> set:
    """Modules of the package that the file imports, anywhere in it (lazy imports count)."""
    names = set(_modules())
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out.update(a.name for a in node.names)
            elif node.module and node.module.startswith("memgeo.geometry"):
                rest = node.module[len("memgeo.geometry"):].lstrip(".")
                out.add(rest.split(".")[0] if rest else "__init__")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("memgeo.geometry."):
                    out.add(a.name.split(".")[2])
    return {m for m in out if m in names or m == "__init__"}


def test_public_names_importable_from_the_package():
    missing = [n for n in PUBLIC if not hasattr(geometry, n)]
    assert not missing
    assert set(PUBLIC) <= set(geometry.__all__)
    assert geometry.ENGINE_VERSION == 2           # probe's cache key; bump only if numbers move


def test_old_modules_are_gone():
    # (checked by file: an editable install of another checkout could still resolve the names)
    for name in ("geometry.py", "simcap.py", "_jit.py"):
        assert not (PACKAGE.parent / name).exists(), name


def test_no_import_circle_and_no_import_of_the_package_itself():
    graph = {m: _imports(PACKAGE / f"{m}.py") for m in _modules()}
    for m, deps in graph.items():
        assert "__init__" not in deps, f"{m} imports memgeo.geometry itself"
        assert m not in deps
    # Kahn's algorithm: every module can be ordered after what it imports
    left = dict(graph)
    while left:
        ready = [m for m, deps in left.items() if not deps & set(left)]
        assert ready, f"import circle among {sorted(left)}"
        for m in ready:
            del left[m]
    for m in _modules():                           # and each imports on its own
        importlib.import_module(f"memgeo.geometry.{m}")


def test_modules_are_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes


def test_geometry_tests_use_public_names_only():
    # tests call public or module-level functions, never a `_private` name of another module
    files = sorted(TESTS.glob("test_geometry*.py")) + [TESTS / "geometry_cases.py"]
    own = {f.stem for f in files}
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module not in own:
                bad += [f"{f.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                    node.attr.startswith("_") and not node.attr.startswith("__"):
                bad.append(f"{f.name}: {node.value.id}.{node.attr}")
    assert not bad
