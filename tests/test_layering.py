"""The package's layering (docs/architecture.md), checked on its source with ``ast``.

* ``midog_d2`` never imports ``midog_dev`` (the data made for development lives beside the
  product, is not installed with it, and what users run on MIDOG never needs it);
* imports between the parts flow one way (``ALLOWED``): ``fileio`` depends on ``constants``
  only, ``data`` on ``fileio``, ``inference`` on ``fileio`` and ``modeling``,
  ``evaluation`` on ``data``, ``checkpoint`` and ``modeling``, and ``engine`` on all of
  these, ...;
* no import cycle between modules, lazy imports inside functions included.

The checker is run on small made-up packages too, so that a rule that stopped catching
anything would fail here.
"""

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "midog_d2"
DEV_PACKAGE = PACKAGE.parent / "midog_dev"
# Top-level packages of the checkout that the product must not import.
NOT_IMPORTED = {"midog_dev"}

# Every part that engine/ may build on; jobs/ may use engine/ too.
_BELOW_ENGINE = {
    "constants",
    "config",
    "fileio",
    "modeling",
    "data",
    "inference",
    "evaluation",
    "utils",
    "solver",
    "checkpoint",
}

# part -> the parts it may import (a part: a subpackage or a top-level module of midog_d2;
# "" is the package's own __init__, which registers the model and exports the config hook:
# only the parts that list it may import the package itself).
ALLOWED: Dict[str, Set[str]] = {
    "": {"constants", "config", "modeling"},
    "constants": set(),
    "config": {"constants"},
    "fileio": {"constants"},
    "modeling": {"constants", "config"},
    "data": {"constants", "config", "fileio"},
    "inference": {"constants", "fileio", "modeling"},  # modeling.outputs: declared outputs
    "evaluation": {"constants", "fileio", "data", "checkpoint", "modeling"},
    "utils": {"constants", "fileio"},
    "solver": {"constants", "config"},
    "checkpoint": {"constants", "fileio"},  # fileio.atomic: the one atomic writer
    "collect_env": {"constants", ""},  # reports the package's version and location
    "engine": _BELOW_ENGINE,
    "jobs": _BELOW_ENGINE | {"engine"},
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(root: Path) -> Tuple[Dict[str, Set[str]], Dict[str, Set[str]]]:
    """(graph, from_init): module -> the modules of the package it imports (every
    ``import`` statement, including those inside functions, resolved to the longest
    existing module name; importing ``pkg.x`` names ``pkg`` too, whose ``__init__`` runs
    first), and module -> the packages whose ``__init__`` it takes something from
    (``import pkg``, or ``from pkg import name`` where ``name`` is no submodule)."""
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    packages = {m for m, p in files.items() if p.name == "__init__.py"}
    graph: Dict[str, Set[str]] = {}
    from_init: Dict[str, Set[str]] = {}

    def resolve(t: str) -> str:
        while t and t not in files:
            t = t.rpartition(".")[0]
        return t

    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: Set[str] = set()
        inits: Set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
                inits |= {a.name for a in node.names if a.name in packages}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # "from pkg import name" may import the submodule pkg.name
                targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
                if prefix in packages and any(
                    f"{prefix}.{a.name}" not in files for a in node.names
                ):
                    inits.add(prefix)
            for t in targets:
                t = resolve(t)
                if t and t != mod:
                    deps.add(t)
        # a "from x import y" that found submodule x.y also names x itself: keep both
        graph[mod] = deps
        from_init[mod] = inits - {mod}
    return graph, from_init


def import_graph(root: Path) -> Dict[str, Set[str]]:
    """module -> the modules of the package it imports (see :func:`_imports`)."""
    return _imports(root)[0]


def part_of(root: Path, mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle (as a list of modules, first == last), or []."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> List[str]:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            # a package's __init__ importing its own submodules is how packages work
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return []


def imports_of_not_imported(path: Path) -> List[str]:
    """The imports (lazy ones included) in ``path`` of a top-level package in
    :data:`NOT_IMPORTED`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in NOT_IMPORTED]
    return found


def forbidden_imports(root: Path) -> List[str]:
    """Every import of a package in :data:`NOT_IMPORTED` from the package ``root``."""
    return [
        f"{module_name(root, path)} imports {n}: the product never imports development data"
        for path in sorted(root.rglob("*.py"))
        for n in imports_of_not_imported(path)
    ]


def violations(root: Path) -> List[str]:
    graph, from_init = _imports(root)
    problems = forbidden_imports(root)
    for mod, deps in sorted(graph.items()):
        part = part_of(root, mod)
        for d in sorted(from_init[mod]):
            # The package's own __init__ imports its modules: a module that takes a name
            # from it works or not depending on which was imported first.
            if d != root.name and mod.startswith(d + "."):
                problems.append(f"{mod} imports from its own package's __init__ ({d})")
        for d in sorted(deps):
            other = part_of(root, d)
            if d == root.name:
                # the root package's __init__ (the model's registration, the config hook)
                if part != "" and "" not in ALLOWED.get(part, set()):
                    problems.append(
                        f"{mod} imports the package {d} itself: {part} may import only "
                        f"{sorted(ALLOWED[part])}"
                    )
                continue
            if other == part:
                continue
            if part in ALLOWED and other not in ALLOWED[part]:
                problems.append(
                    f"{mod} imports {d}: {part} may import only {sorted(ALLOWED[part])}"
                )
            elif part not in ALLOWED:
                problems.append(f"{mod}: part {part!r} has no entry in ALLOWED")
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def test_every_part_of_the_package_is_known():
    parts = {part_of(PACKAGE, m) for m in import_graph(PACKAGE)} - {""}
    assert parts <= set(ALLOWED), parts - set(ALLOWED)
    assert {"fileio", "data", "inference", "evaluation", "engine", "jobs"} <= parts


def test_the_development_data_has_no_import_cycle():
    assert find_cycle(import_graph(DEV_PACKAGE)) == []


def write_package(root: Path, files: Dict[str, str]) -> Path:
    pkg = root / "midog_d2"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for d in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return pkg


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"data/a.py": "from midog_dev import canvas\n"}, "never imports development data"),
        (
            {"inference/p.py": "def f():\n    from midog_dev.x import y\n"},
            "never imports development data",
        ),
        ({"engine/t.py": "import midog_dev.demo as d\n"}, "never imports development data"),
        (
            {"fileio/slide.py": "from ..data.mapper import M\n", "data/mapper.py": "M = 1\n"},
            "fileio may import only",
        ),
        (
            {"data/a.py": "from . import b\n", "data/b.py": "def f():\n    from .a import g\n"},
            "import cycle",
        ),
        (
            {"evaluation/e.py": "import midog_d2.engine.trainer\n", "engine/trainer.py": ""},
            "evaluation may import only",
        ),
        ({"newpart/x.py": "from ..fileio import y\n", "fileio/y.py": ""}, "no entry in ALLOWED"),
        # the root package from inside: its __init__ imports the model and the config
        ({"fileio/slide.py": "from .. import add_midog_config\n"}, "imports the package midog_d2"),
        ({"data/a.py": "def f():\n    import midog_d2\n"}, "imports the package midog_d2"),
        # a module taking a name from its own package's __init__
        (
            {"data/a.py": "from . import helper\n", "data/__init__.py": "helper = 1\n"},
            "own package's __init__",
        ),
        (
            {
                "inference/sub/x.py": "from midog_d2.inference import y\n",
                "inference/__init__.py": "y = 1\n",
            },
            "own package's __init__",
        ),
    ],
)
def test_the_checker_catches_each_rule(tmp_path, files, expected):
    found = violations(write_package(tmp_path, files))
    assert any(expected in v for v in found), found


def test_the_checker_accepts_a_clean_package(tmp_path):
    pkg = write_package(
        tmp_path,
        {
            "fileio/slide.py": "from ..constants import DEFAULT_MPP\n",
            "constants.py": "DEFAULT_MPP = 0.25\n",
            "data/mapper.py": "from ..fileio.slide import x\nfrom . import sampler\n",
            "data/sampler.py": "import numpy\n",
            "engine/trainer.py": "from ..data import mapper\nimport numpy\n",
        },
    )
    assert violations(pkg) == []


def test_the_products_tests_use_no_development_data():
    """Tests of the product get their images from ``tests/midog_fixtures.py``; only
    ``tests/datagen/`` (the development data's own tests) imports ``midog_dev``."""
    tests = Path(__file__).resolve().parent
    found = [
        f"{path.relative_to(tests)}: {n}"
        for path in sorted(tests.rglob("*.py"))
        if (tests / "datagen") not in path.parents
        for n in imports_of_not_imported(path)
    ]
    assert found == []


def test_the_installed_package_ships_no_development_data(tmp_path):
    """``pip install`` builds this wheel: ``midog_d2`` and nothing of ``midog_dev``."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # A copy of what the build reads, so that setuptools' build/ stays out of the checkout.
    repo = tmp_path / "src"
    for name in ("midog_d2", "midog_dev"):
        shutil.copytree(
            PACKAGE.parent / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(PACKAGE.parent / name, repo / name)
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(repo), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("midog_d2-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert "midog_d2" in tops and not tops & NOT_IMPORTED, tops


def test_no_module_is_longer_than_600_lines():
    """Small modules named for what they hold: a module past 600 lines holds two things."""
    long = {
        str(p.relative_to(PACKAGE.parent)): n
        for root in (PACKAGE, DEV_PACKAGE)
        for p in root.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert long == {}
