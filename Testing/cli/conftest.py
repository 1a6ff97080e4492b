"""Fixtures of the CLI suites: one small phantom per session, an in-process ``spinereg`` runner,
and snapshots that prove a failed command changed nothing.

The phantom (2 mm voxels, L1-L3, 512x512 X-rays) is made once by ``spinereg phantom``
itself, so every test that reads it also checks what that command writes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from SpineRegistrationLib.cli import main

#: The phantom every CLI test shares: small and quick, three vertebrae.
PHANTOM_OPTIONS = ("--spacing", "2", "--vertebrae", "L1", "L3")
#: A date long past (2001-09-09), given to pre-existing outputs so any rewrite shows in the mtime.
OLD_MTIME_NS = 1_000_000_000 * 10**9


@dataclass
class CliResult:
    """What one ``spinereg`` call did: exit code and captured text."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@pytest.fixture
def spinereg(capsys):
    """Run ``spinereg ARGS...`` in-process; returns a :class:`CliResult`.

    argparse's own exits (``--help``, usage errors) come back as their exit code too.
    """

    def run(*argv) -> CliResult:
        capsys.readouterr()
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """Folder written by ``spinereg phantom --spacing 2 --vertebrae L1 L3`` (once per session)."""
    out = tmp_path_factory.mktemp("phantom") / "L1-L3"
    code = main(["phantom", "--out", str(out), *PHANTOM_OPTIONS])
    assert code == 0, "spinereg phantom failed; the CLI suites need it"
    return out


@pytest.fixture(scope="session")
def small_geometry(phantom_dir, tmp_path_factory) -> Path:
    """The phantom's AP view at 8 mm pixels (64 x 64): the same field, rendered in a blink."""
    from SpineRegistrationLib.io.geometry_json import load_geometry, save_geometry

    out = tmp_path_factory.mktemp("geometry") / "AP8.json"
    return save_geometry(load_geometry(phantom_dir / "AP.json").scaled(8), out)


def _snapshot(path: str | os.PathLike) -> dict[str, tuple]:
    """Everything under ``path`` (a file or a folder, recursively): relative name ->
    (sha256, size, mtime_ns) for files, ``("dir",)`` for folders; {} if ``path`` is absent.
    """
    root = Path(path)
    if not root.exists():
        return {}
    entries = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
    state = {}
    for entry in entries:
        name = entry.relative_to(root).as_posix()
        if entry.is_dir():
            state[name] = ("dir",)
        else:
            stat = entry.stat()
            state[name] = (hashlib.sha256(entry.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns)
    return state


def _make_old_file(path: Path, content: bytes = b"previous output, must survive\n") -> Path:
    """Write ``content`` to ``path`` and date it in the past."""
    path.write_bytes(content)
    os.utime(path, ns=(OLD_MTIME_NS, OLD_MTIME_NS))
    return path


def _assert_one_line_error(result: CliResult, after_progress: bool = False) -> None:
    """Exit code 2, exactly one stderr line ``spinereg: error: ...``, no traceback.

    after_progress: the command failed part-way, so progress lines may come before the error
    (which is then the last line); otherwise the error is all there is on stderr.
    """
    assert "Traceback" not in result.err + result.out, result.err
    assert result.code == 2, f"exit code {result.code}, stderr: {result.err!r}"
    lines = result.err_lines[-1:] if after_progress else result.err_lines
    assert len(lines) == 1, f"expected one stderr line, got: {result.err!r}"
    assert lines[0].startswith("spinereg: error: "), result.err
    assert sum(line.startswith("spinereg: error") for line in result.err_lines) == 1, result.err


# Helpers handed to tests as fixtures (test modules do not import conftest).
@pytest.fixture
def snapshot():
    """``snapshot(path)``: the state of a file or folder, to compare before/after a command."""
    return _snapshot


@pytest.fixture
def make_old_file():
    """``make_old_file(path, content=...)``: a pre-existing output dated in the past."""
    return _make_old_file


@pytest.fixture
def assert_one_line_error():
    """``assert_one_line_error(result)``: exit 2, one ``spinereg: error:`` line, no traceback."""
    return _assert_one_line_error
