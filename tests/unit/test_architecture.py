"""The rules of issue 12 ("Rules the redesign must leave true"), checked from the code.

The import graph comes from ``scripts/import-graph --json`` (it reads the source with ``ast``, imports nothing):
an arrow counts wherever its import sits, at the top, inside a function, or under ``if TYPE_CHECKING:``. Each
rule is a function returning one message per offence (file, line, the import as written), run once on
``coreos_lab/`` and once on a small package built to break every rule, so that a rule which cannot fail shows.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "import-graph"
MAX_LINES = 800

# Third-party packages and the one place (a file, or a directory ending in "/") of the package allowed to import them.
HOMES: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("paramiko",), ("ssh.py",)),
    (("vagrant",), ("vagrant.py",)),  # python-vagrant's top-level package
    (("typer", "click", "rich"), ("cli/",)),
    (("requests", "urllib3", "httpx"), ("http.py",)),
]

# Modules that are programs, not library: they may print and exit.
PROGRAMS = {
    "cli/": "the command line is the one error boundary",
    "_entry.py": "the console script's guard around loading the CLI",
    "box/agent.py": "installed in the box image as /usr/bin/coreos-cloudinit; its stderr is the node's journal",
}

# Importing the scheduler must do no I/O: none of these may be loaded (``{package}``: the package under test).
# The issue names subprocess, paramiko, requests, runner, ssh and systemd; the rest of the HTTP stack is I/O too.
IO_MODULES = (
    *("subprocess", "paramiko", "requests", "urllib3", "httpx"),
    *("{package}.runner", "{package}.ssh", "{package}.systemd", "{package}.http"),
)

Graph = dict[str, Any]


def import_graph(package_dir: Path) -> Graph:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", str(package_dir)], capture_output=True, text=True, check=True
    )
    graph: Graph = json.loads(out.stdout)
    return graph


def _where(graph: Graph, module: str, imp: dict[str, Any]) -> str:
    return f"{graph['modules'][module]['path']}:{imp['line']} `{imp['stmt']}`"


def _in_package(graph: Graph, module: str) -> str:
    """The module's path inside the package (``cli/units.py``), as HOMES and PROGRAMS name it."""
    return str(graph["modules"][module]["path"]).removeprefix(graph["package"] + "/")


def _at(place: str, places: Iterable[str]) -> bool:
    return any(place.startswith(p) if p.endswith("/") else place == p for p in places)


def circles(graph: Graph) -> list[str]:
    """One message per circle, naming every import that closes it."""
    out = []
    for members in graph["circles"]:
        inside = set(members)
        arrows = [
            f"{_where(graph, m, imp)} ({imp['kind']})"
            for m in members
            for imp in graph["modules"][m]["imports"]
            if imp["module"] in inside
        ]
        out.append(f"circle {' <-> '.join(members)}: " + "; ".join(arrows))
    return out


def dynamic_imports(graph: Graph) -> list[str]:
    """importlib.import_module / __import__ of the package's own modules: they hide an arrow from mypy and readers.
    A name that is not a constant cannot be checked, so it counts too."""
    package = graph["package"]
    out = []
    for module, info in graph["modules"].items():
        for call in info["dynamic"]:
            name = call["arg"]
            if name is None or name.startswith(".") or name == package or name.startswith(package + "."):
                out.append(f"{_where(graph, module, call)}: import it with an import statement")
    return out


def misplaced_third_party(graph: Graph, names: tuple[str, ...], homes: tuple[str, ...]) -> list[str]:
    out = []
    for module, info in graph["modules"].items():
        if _at(_in_package(graph, module), homes):
            continue
        for imp in info["externals"]:
            if imp["module"].split(".")[0] in names:
                out.append(f"{_where(graph, module, imp)} ({imp['kind']}): only {', '.join(homes)} may import it")
    return out


def oversized(graph: Graph, limit: int = MAX_LINES) -> list[str]:
    return [
        f"{info['path']}: {info['lines']} lines (at most {limit})"
        for info in graph["modules"].values()
        if info["lines"] > limit
    ]


def output_calls(graph: Graph, programs: Iterable[str] = PROGRAMS) -> list[str]:
    """print / sys.exit / SystemExit in library modules. A ``__main__`` guard is a program's entry: not run on
    import, so it is no library behaviour."""
    programs = tuple(programs)
    return [
        f"{_where(graph, module, call)}: the library returns or raises, the CLI prints and exits"
        for module, info in graph["modules"].items()
        if not _at(_in_package(graph, module), programs)
        for call in info["output_calls"]
        if not call["main_guard"]
    ]


def _chain(graph: Graph, start: str, loaded: str) -> str:
    """The top-level imports by which importing ``start`` loads ``loaded`` (a module of the package or not)."""
    package = graph["package"]

    def parents(name: str) -> list[str]:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts))]

    def loads(module: str) -> list[tuple[str, dict[str, Any]]]:
        info = graph["modules"][module]
        steps = [(imp["module"], imp) for imp in info["imports"] if imp["kind"] == "top"]
        steps += [(p, {"line": 0, "stmt": "(parent package)"}) for p in parents(module)]
        return steps

    seen: dict[str, tuple[str, dict[str, Any]] | None] = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        hit = next(
            (
                e
                for e in graph["modules"][module]["externals"]
                if e["kind"] == "top" and e["module"].split(".")[0] == loaded
            ),
            None,
        )
        if module == loaded or hit is not None:
            steps = [] if hit is None else [_where(graph, module, hit)]
            while (back := seen[module]) is not None:
                module, imp = back
                steps.append(_where(graph, module, imp))
            return " -> ".join(reversed(steps)) if steps else "(itself)"
        for target, imp in loads(module):
            if target not in seen and target in graph["modules"]:
                seen[target] = (module, imp)
                queue.append(target)
    return f"not through {package}'s own top-level imports (a third-party package loads it)"


def loaded_on_import(graph: Graph, module: str, forbidden: Iterable[str]) -> list[str]:
    """Import ``module`` in a fresh interpreter; one message per forbidden module it leaves in sys.modules."""
    wanted = {name.format(package=graph["package"]) for name in forbidden}
    code = "import importlib, json, sys; importlib.import_module(sys.argv[2]); print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, sys.argv[1]); {code}", graph["root"], module],
        capture_output=True,
        text=True,
        check=True,
    )
    present = set(json.loads(out.stdout))
    return [f"importing {module} loads {name}: {_chain(graph, module, name)}" for name in sorted(wanted & present)]


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(REPO / "coreos_lab")


def test_no_import_circle(graph: Graph) -> None:
    found = circles(graph)
    assert not found, "\n".join(found)


def test_no_dynamic_import_of_own_modules(graph: Graph) -> None:
    found = dynamic_imports(graph)
    assert not found, "\n".join(found)


@pytest.mark.parametrize(("names", "homes"), HOMES, ids=[h[0][0] for h in HOMES])
def test_third_party_stays_in_its_module(graph: Graph, names: tuple[str, ...], homes: tuple[str, ...]) -> None:
    found = misplaced_third_party(graph, names, homes)
    assert not found, "\n".join(found)


def test_no_module_over_800_lines(graph: Graph) -> None:
    found = oversized(graph)
    assert not found, "\n".join(found)


def test_importing_the_scheduler_loads_no_io(graph: Graph) -> None:
    found = loaded_on_import(graph, "coreos_lab.scheduler", IO_MODULES)
    assert not found, "\n".join(found)


def test_library_modules_neither_print_nor_exit(graph: Graph) -> None:
    found = output_calls(graph)
    assert not found, "\n".join(found)


# A package that breaks every rule once, to prove each rule can fail and names the file and import.
BROKEN = {
    "__init__.py": "",
    "a.py": "from fakelab import b\n",
    "b.py": "def f():\n    from fakelab import a\n",
    "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fakelab.d import X\nelse:\n    X = 1\n",
    "d.py": "from . import c\n",
    "selfish.py": "from fakelab import selfish\n",
    "dyn.py": (
        "import importlib\n"
        "def f(name):\n"
        "    importlib.import_module('fakelab.a')\n"
        "    __import__('fakelab')\n"
        "    importlib.import_module(name)\n"
        "    importlib.import_module('json')\n"
    ),
    "ssh.py": "import paramiko\n",
    "misplaced.py": (
        "from typing import TYPE_CHECKING\n"
        "import paramiko.client\n"
        "from requests.adapters import HTTPAdapter\n"
        "def f():\n"
        "    import typer\n"
        "if TYPE_CHECKING:\n"
        "    import vagrant\n"
    ),
    "cli/__init__.py": "import typer\nprint('ok in cli')\n",
    "cli/sub/__init__.py": "import rich\n",
    "ok.py": "x = 1\n" * MAX_LINES,
    "big.py": "x = 1\n" * (MAX_LINES + 1),
    "noisy.py": (
        "import sys\n"
        "print('x')\n"
        "def f():\n"
        "    sys.exit(1)\n"
        "    raise SystemExit(2)\n"
        "if __name__ == '__main__':\n"
        "    sys.exit(0)\n"
    ),
    "_entry.py": "import sys\nsys.exit(3)\n",
    "runner.py": "import subprocess\n",
    "pure.py": "from fakelab import runner\ndef later():\n    from fakelab import ssh\n",
    "data/notamodule.py": "import paramiko\n",  # no __init__.py: package data, not a module
}


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> Graph:
    root = tmp_path_factory.mktemp("arch") / "fakelab"
    for rel, text in BROKEN.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return import_graph(root)


def test_script_reads_modules_arrows_and_floors(broken: Graph) -> None:
    modules = broken["modules"]
    assert "fakelab.data.notamodule" not in modules
    assert {(a["from"], a["to"]): a["kinds"] for a in broken["arrows"] if a["from"] in {"fakelab.b", "fakelab.c"}} == {
        ("fakelab.b", "fakelab.a"): ["lazy"],
        ("fakelab.c", "fakelab.d"): ["type-checking"],
    }
    assert modules["fakelab.ok"]["lines"] == MAX_LINES
    assert modules["fakelab.ok"]["floor"] == 0
    assert modules["fakelab.a"]["floor"] == modules["fakelab.b"]["floor"] == 0  # a circle shares one floor
    assert modules["fakelab.pure"]["floor"] == 1  # runner and ssh import nothing of the package
    assert modules["fakelab.cli"]["floor"] == 0  # its submodule's import of it is implied, not an arrow
    text = subprocess.run(
        [sys.executable, str(SCRIPT), str(broken["root"] + "/fakelab")], capture_output=True, text=True
    )
    assert text.returncode == 0
    assert "  a <-> b\n" in text.stdout
    assert "  selfish\n" in text.stdout


def test_rules_catch_circles(broken: Graph) -> None:
    assert circles(broken) == [
        "circle fakelab.a <-> fakelab.b: fakelab/a.py:1 `from fakelab import b` (top); "
        "fakelab/b.py:2 `from fakelab import a` (lazy)",
        "circle fakelab.c <-> fakelab.d: fakelab/c.py:3 `from fakelab.d import X` (type-checking); "
        "fakelab/d.py:1 `from . import c` (top)",
        "circle fakelab.selfish: fakelab/selfish.py:1 `from fakelab import selfish` (top)",
    ]


def test_rules_catch_dynamic_imports(broken: Graph) -> None:
    assert [m.split(": ")[0] for m in dynamic_imports(broken)] == [
        "fakelab/dyn.py:3 `importlib.import_module('fakelab.a')`",
        "fakelab/dyn.py:4 `__import__('fakelab')`",
        "fakelab/dyn.py:5 `importlib.import_module(name)`",
    ]


def test_rules_catch_misplaced_third_party(broken: Graph) -> None:
    found = {names[0]: misplaced_third_party(broken, names, homes) for names, homes in HOMES}
    assert found == {
        "paramiko": ["fakelab/misplaced.py:2 `import paramiko.client` (top): only ssh.py may import it"],
        "vagrant": ["fakelab/misplaced.py:7 `import vagrant` (type-checking): only vagrant.py may import it"],
        "typer": ["fakelab/misplaced.py:5 `import typer` (lazy): only cli/ may import it"],
        "requests": [
            "fakelab/misplaced.py:3 `from requests.adapters import HTTPAdapter` (top): only http.py may import it"
        ],
    }


def test_rules_catch_oversized_modules(broken: Graph) -> None:
    assert oversized(broken) == [f"fakelab/big.py: {MAX_LINES + 1} lines (at most {MAX_LINES})"]


def test_rules_catch_output_in_library_modules(broken: Graph) -> None:
    assert [m.split(": ")[0] for m in output_calls(broken)] == [
        "fakelab/noisy.py:2 `print('x')`",
        "fakelab/noisy.py:4 `sys.exit(1)`",
        "fakelab/noisy.py:5 `raise SystemExit(2)`",
    ]


def test_rules_catch_io_loaded_on_import(broken: Graph) -> None:
    assert loaded_on_import(broken, "fakelab.pure", IO_MODULES) == [
        "importing fakelab.pure loads fakelab.runner: fakelab/pure.py:1 `from fakelab import runner`",
        "importing fakelab.pure loads subprocess: "
        "fakelab/pure.py:1 `from fakelab import runner` -> fakelab/runner.py:1 `import subprocess`",
    ]


def test_source_tree_modules_are_the_ones_python_sees(graph: Graph) -> None:
    """The script's module list is the package's: a module it missed would escape every rule above."""
    on_disk = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "coreos_lab").rglob("*.py")
        if "files" not in p.relative_to(REPO / "coreos_lab").parts
    }
    assert set(graph["modules"]) == on_disk


def _modules_with_examples() -> list[Path]:
    """Modules of coreos_lab/ with a ``>>>`` example in a docstring (module, class or function)."""
    found = []
    for path in sorted((REPO / "coreos_lab").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)),
        ]
        if any(">>>" in (ast.get_docstring(n) or "") for n in nodes):
            found.append(path)
    return found


def test_docstring_examples_are_collected_by_the_test_command() -> None:
    """The README's test command (scripts/test.sh: pytest with the project's config) runs every module's examples."""
    options = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in options["addopts"].split()
    assert "coreos_lab" in options["testpaths"]
    modules = _modules_with_examples()
    assert len(modules) >= 20
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *map(str, modules)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    collected = {line.split("::")[0] for line in out.stdout.splitlines() if "::" in line}
    missing = sorted(str(p.relative_to(REPO)) for p in modules if str(p.relative_to(REPO)) not in collected)
    assert not missing, f"examples not collected in: {', '.join(missing)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}"
