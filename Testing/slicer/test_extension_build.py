"""The built extension: what SpineRegistration/CMakeLists.txt ships, read from its file lists.

No Slicer build here: the lists are parsed, compared with the source tree (a file added
without CMake fails), and laid out as ctkMacroCompilePythonScript copies them (paths kept,
relative to each list's source folder) to check that the library and its models work from
there. Plus Slicer's rule for the module folder and the module's pip requirements.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR = ROOT / "SpineRegistration"
PACKAGE_DIR = MODULE_DIR / "SpineRegistrationModuleLib"
MODULE_SOURCE = (MODULE_DIR / "SpineRegistration.py").read_text(encoding="utf-8")


def cmake_lists(path: Path = MODULE_DIR / "CMakeLists.txt") -> dict[str, list[str]]:
    """``set(NAME item ...)`` of a CMake file: NAME -> items, ``${MODULE_NAME}`` expanded."""
    text = re.sub(r"#[^\n]*", "", path.read_text(encoding="utf-8"))
    found = {name: body.split() for name, body in re.findall(r"\bset\(\s*(\w+)\s+([^)]*)\)", text)}
    module = found["MODULE_NAME"][0]
    return {name: [item.replace("${MODULE_NAME}", module) for item in items] for name, items in found.items()}


def tree_files(folder: Path, pattern: str) -> set[str]:
    """Files under ``folder`` (bytecode caches left out), relative to the repository root."""
    return {path.relative_to(ROOT).as_posix() for path in folder.rglob(pattern)
            if path.is_file() and "__pycache__" not in path.parts}


def install_layout(destination: Path) -> Path:
    """The module folder of a built extension (qt-scripted-modules), made from the CMake lists."""
    lists = cmake_lists()
    for source_dir, names in ((MODULE_DIR, ("MODULE_PYTHON_SCRIPTS", "MODULE_PYTHON_RESOURCES")),
                              (ROOT, ("LIBRARY_PYTHON_SCRIPTS", "LIBRARY_PYTHON_RESOURCES"))):
        for name in names:
            for item in lists[name]:
                (destination / item).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_dir / item, destination / item)
    return destination


def test_every_library_file_and_model_is_installed():
    lists = cmake_lists()
    for name, expected in (("LIBRARY_PYTHON_SCRIPTS", tree_files(ROOT / "SpineRegistrationLib", "*.py")),
                           ("LIBRARY_PYTHON_RESOURCES", tree_files(ROOT / "Resources" / "Models", "*"))):
        listed = set(lists[name])
        assert len(listed) == len(lists[name]), f"{name} lists a file twice"
        assert listed == expected, f"{name}: missing {sorted(expected - listed)}, no such file {sorted(listed - expected)}"
    assert "ctkMacroCompilePythonScript" in (MODULE_DIR / "CMakeLists.txt").read_text()


def test_every_module_file_is_installed():
    lists = cmake_lists()
    scripts = set(lists["MODULE_PYTHON_SCRIPTS"])
    assert {f"{path.name}" for path in MODULE_DIR.glob("*.py")} <= scripts
    package = {path.relative_to(MODULE_DIR).as_posix() for path in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in path.parts}
    assert package <= scripts, f"missing from MODULE_PYTHON_SCRIPTS: {sorted(package - scripts)}"
    resources = {path.relative_to(MODULE_DIR).as_posix() for path in (MODULE_DIR / "Resources").rglob("*") if path.is_file()}
    assert resources <= set(lists["MODULE_PYTHON_RESOURCES"])
    for item in lists["MODULE_PYTHON_SCRIPTS"] + lists["MODULE_PYTHON_RESOURCES"]:
        assert (MODULE_DIR / item).is_file(), f"CMake lists {item}, which does not exist"


def test_every_top_level_file_of_the_module_folder_defines_its_own_class():
    """Slicer's scripted-module factory takes every *.py at the top of a module folder for a
    module and looks for the class of the file's name in it."""
    top = sorted(MODULE_DIR.glob("*.py"))
    assert top
    for path in top:
        classes = {node.name for node in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(node, ast.ClassDef)}
        assert path.stem in classes, f"{path.name} defines no class {path.stem}"


def test_the_library_and_its_models_work_from_the_installed_layout(tmp_path):
    modules = install_layout(tmp_path / "qt-scripted-modules")
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONPATH": str(modules)}
    probe = ("import SpineRegistrationLib, SpineRegistrationLib.cli; "
             "from SpineRegistrationLib.learned.models import shipped_model; "
             "from SpineRegistrationLib.deform.network import shipped_network_path; "
             "print(SpineRegistrationLib.__file__); print(shipped_model()); print(shipped_network_path())")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=environment)
    assert run.returncode == 0, run.stderr[-2000:]
    library, pose_model, deform_model = (Path(line) for line in run.stdout.split())
    assert library == modules / "SpineRegistrationLib" / "__init__.py"
    assert pose_model.parent == deform_model.parent == modules / "Resources" / "Models"


def _library_folder_of(module_file: Path):
    """SpineRegistration.py's libraryFolder() as if that file lay at ``module_file``."""
    tree = ast.parse(MODULE_SOURCE)
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "libraryFolder")
    namespace = {"Path": Path, "LIBRARY_PACKAGE": "SpineRegistrationLib", "__file__": str(module_file)}
    exec(compile(ast.Module([function], []), "SpineRegistration.py", "exec"), namespace)
    return namespace["libraryFolder"]()


def test_the_module_finds_the_library_installed_beside_it_or_in_the_checkout(tmp_path):
    modules = install_layout(tmp_path / "qt-scripted-modules")
    assert _library_folder_of(modules / "SpineRegistration.py") == modules
    assert _library_folder_of(MODULE_DIR / "SpineRegistration.py") == ROOT
    assert _library_folder_of(tmp_path / "elsewhere" / "SpineRegistration.py") is None
    assert "sys.path.insert(0, str(libraryFolder()))" in MODULE_SOURCE


def test_the_module_installs_exactly_the_librarys_third_party_requirements():
    assignment = next(node for node in ast.parse(MODULE_SOURCE).body
                      if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PYTHON_REQUIREMENTS")
    requirements = ast.literal_eval(assignment.value)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert sorted(r for r, _ in requirements) == sorted(project["dependencies"] + project["optional-dependencies"]["dicom"])
    assert "SpineRegistration" not in {re.split(r"[<>=]", r)[0] for r, _ in requirements}  # the library is shipped
    assert "pip_install([source])" not in MODULE_SOURCE and "pip_ensure" in MODULE_SOURCE


def test_the_vertebra_list_follows_the_parameter_node_not_the_selector():
    """A selector's own signal runs before the parameter node sees the new node (connectGui
    comes later), so the list would show the previous segmentation's vertebrae."""
    assert not re.search(r"\.connect\([^)]*updateVertebraList", MODULE_SOURCE)
    tree = ast.parse(MODULE_SOURCE)
    widget = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "SpineRegistrationWidget")
    method = next(node for node in widget.body if isinstance(node, ast.FunctionDef) and node.name == "onParameterNodeModified")
    calls = {node.func.attr for node in ast.walk(method) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
    assert "updateVertebraList" in calls


def test_the_module_never_runs_the_cli_in_the_application_itself():
    assert "sys.executable" not in MODULE_SOURCE.split("class SpineRegistrationLogic")[1]
    assert "find_python_slicer()" in MODULE_SOURCE
