"""The house rules of the library: imports point one way, nothing imports the evaluation, each
subpackage imports alone, ``spinereg register`` loads no training or evaluation code, and the
packaging lists every package (the shipped model included).

Layers, bottom to top (a module may import its own layer and those below, never above)::

    errors, version  <  core  <  geometry  <  io  <  render  <  similarity  <  rigid
    <  synthetic  <  learned  <  methods  <  pipeline  <  evaluation  <  cli
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "SpineRegistrationLib"
LAYERS = ["errors", "core", "geometry", "io", "render", "similarity", "rigid", "synthetic", "learned", "deform", "methods",
          "pipeline", "evaluation", "cli"]
#: Top-level files that are not a layer of their own.
TOP_LEVEL = {"__init__": 0, "__main__": len(LAYERS)}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    """Rank of ``SpineRegistrationLib.<area>...``."""
    area = module.split(".")[1] if "." in module else "__init__"
    return TOP_LEVEL[area] if area in TOP_LEVEL else LAYERS.index(area)


def _imports(path: Path, lazy: bool = True) -> set[str]:
    """Library modules ``path`` imports (absolute names), at module level or (``lazy``) anywhere."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    nodes = ast.walk(tree) if lazy else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("SpineRegistrationLib"):
                # "from .. import __version__" names the package; "from . import segnrrd" a module
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    found.add(candidate if _is_module(candidate) else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("SpineRegistrationLib")}
    return found


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = sorted(LIB.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(LIB)) for p in MODULES])
def test_imports_never_run_back_up(path):
    own = _layer(_module_name(path))
    upward = sorted(m for m in _imports(path) if _layer(m) > own)
    assert not upward, f"{path.relative_to(ROOT)} (layer {LAYERS[own] if own < len(LAYERS) else 'top'}) imports {upward}"


def test_no_import_circle():
    """No cycle among module-level imports (a package's __init__ re-exports count as edges)."""
    graph = {_module_name(p): {m for m in _imports(p, lazy=False)} for p in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target == node or target not in graph:
                continue
            if state.get(target) == 1 and not node.startswith(target + "."):  # a package's own modules import it
                pytest.fail(f"import circle: {' -> '.join(stack[stack.index(target):] + [target])}")
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_nothing_imports_the_evaluation_but_the_cli():
    users = sorted(str(p.relative_to(LIB)) for p in MODULES
                   if not _module_name(p).startswith(("SpineRegistrationLib.evaluation", "SpineRegistrationLib.cli"))
                   and any(m.startswith("SpineRegistrationLib.evaluation") for m in _imports(p)))
    assert users == []


SUBPACKAGES = sorted(p.parent.name for p in LIB.glob("*/__init__.py"))


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_each_subpackage_imports_alone_in_a_fresh_interpreter(name):
    done = subprocess.run([sys.executable, "-c", f"import SpineRegistrationLib.{name}"], capture_output=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr


def test_register_loads_no_training_or_evaluation_code(tmp_path):
    """A whole ``spinereg register --method learned`` run in a fresh interpreter, then its sys.modules."""
    script = f"""
import sys
from pathlib import Path
from SpineRegistrationLib.cli import main
from SpineRegistrationLib.synthetic.phantom import PhantomConfig
from SpineRegistrationLib.synthetic.sample_data import SampleConfig, make_sample, write_sample
data = Path({str(tmp_path)!r}) / "data"
data.mkdir()
config = SampleConfig(phantom=PhantomConfig(spacing_mm=2.0, vertebrae=("L1", "L2", "L3")), detector_size=(128, 128),
                      pixel_spacing_mm=4.0)
write_sample(data, *make_sample(config))
for name in [m for m in sys.modules if m.startswith("SpineRegistrationLib")]:
    del sys.modules[name]  # forget what making the data loaded
from SpineRegistrationLib.cli import main
code = main(["register", "--ct", str(data / "ct.nii.gz"), "--seg", str(data / "seg.nii.gz"), "--vertebra", "L2",
             "--xray", str(data / "AP.png"), "--geometry", str(data / "AP.json"),
             "--xray", str(data / "LAT.png"), "--geometry", str(data / "LAT.json"),
             "--method", "learned", "--out", str(Path({str(tmp_path)!r}) / "out")])
assert code == 0, code
print(" ".join(sorted(m for m in sys.modules if m.startswith("SpineRegistrationLib"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", errors="replace")
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.strip().splitlines()[-1].split()
    assert "SpineRegistrationLib.learned.inference" in loaded  # the network did run
    forbidden = [m for m in loaded if m.startswith(("SpineRegistrationLib.evaluation", "SpineRegistrationLib.synthetic"))
                 or m in ("SpineRegistrationLib.learned.training", "SpineRegistrationLib.learned.data")]
    assert forbidden == []


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]["packages"])
    found = {_module_name(p) for p in LIB.rglob("__init__.py")}
    assert listed == found | {"SpineRegistrationLib.learned.weights"}
