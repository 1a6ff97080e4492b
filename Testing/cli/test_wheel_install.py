"""A non-editable install finds the shipped model: the wheel holds every library file and every
model of the tree and, installed into a fresh venv, runs ``spinereg register --method auto`` on
the phantom with the model it carries (not the checkout's, and not silently ``intensity``).

The fresh venv gets the third-party packages of the test venv through a ``.pth`` line (no
download, no torch reinstall); the wheel's own SpineRegistrationLib comes first on its path.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_in_a_fresh_venv_registers_with_its_shipped_model(phantom_dir, tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(ROOT)], capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("*.whl"))
    held = set(zipfile.ZipFile(wheel).namelist())
    library = {path.relative_to(ROOT).as_posix() for path in (ROOT / "SpineRegistrationLib").rglob("*.py")
               if "__pycache__" not in path.parts}
    models = {f"SpineRegistrationLib/learned/weights/{path.name}" for path in (ROOT / "Resources" / "Models").glob("*.pt")}
    assert models and library | models <= held, sorted((library | models) - held)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    packages = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                            text=True).strip())
    (packages / "test-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                              str(wheel)], capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-2000:]

    out = tmp_path / "result"
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"} | {"PYTHONIOENCODING": "utf-8"}
    run = subprocess.run(
        [str(env_dir / "bin" / "spinereg"), "register", "--ct", str(phantom_dir / "ct.nii.gz"),
         "--seg", str(phantom_dir / "seg.nii.gz"), "--vertebra", "L2",
         "--xray", str(phantom_dir / "AP.png"), "--geometry", str(phantom_dir / "AP.json"),
         "--xray", str(phantom_dir / "LAT.png"), "--geometry", str(phantom_dir / "LAT.json"),
         "--method", "auto", "--out", str(out)],
        capture_output=True, encoding="utf-8", errors="replace", cwd=tmp_path, env=environment,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "note:" not in run.stderr  # no fallback to intensity
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "auto"
    model = Path(result["model"])
    assert model.is_relative_to(packages) and model.parent.name == "weights", model
    truth = json.loads((phantom_dir / "truth.json").read_text())["vertebrae"]["L2"]["matrix_ras"]
    assert abs(result["vertebrae"]["L2"]["matrix_ras"][0][3] - truth[0][3]) < 2.0
