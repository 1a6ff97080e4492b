"""The journal of a long command: what an interrupted run had finished, so that ``--resume`` goes on.

After every finished unit of work (a vertebra of ``spinereg register``, a case of ``spinereg
evaluate``) the run rewrites ``.<DIR>.<command>-journal.json`` beside its output folder DIR
(atomically, so a killed process leaves the last complete version). A run that ends well deletes
it; one that is interrupted, fails or is killed keeps it, and the same command with ``--resume``
takes its entries instead of computing them again. The journal holds a fingerprint of everything
that decides the results (:func:`fingerprint`: the contents of every input file, the settings);
a journal of other inputs is never used, and a fresh run never throws one away unasked.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import InputError

FORMAT = "spinereg-journal"
VERSION = 1
#: Bytes read at a time while hashing an input file.
_CHUNK = 1 << 20


def journal_path(out: str | os.PathLike, command: str) -> Path:
    """The journal of ``command`` for output folder ``out``: hidden, beside it."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.{command}-journal.json"


def _hash_path(digest, path: Path) -> None:
    """Add a file's bytes, or every file of a folder (a DICOM series) in name order, to ``digest``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)


def fingerprint(files: Iterable, settings: dict) -> str:
    """SHA-256 (hex) of the contents of ``files`` (in order: paths of files or folders; numpy arrays
    by shape, dtype and every value; anything else, e.g. None, by its repr) and of ``settings`` (JSON,
    keys sorted). Which folder the files are in does not count; their names and what they hold do."""
    digest = hashlib.sha256()
    for value in files:
        digest.update(b"\0")
        if isinstance(value, (str, os.PathLike)) and Path(value).exists():
            _hash_path(digest, Path(value))
        elif isinstance(value, np.ndarray):  # its repr elides the middle of a large array
            digest.update(f"{value.shape}{value.dtype}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class RunJournal:
    """The journal of one ``command`` run into ``out``: ``done`` (key -> JSON entry) holds what a
    resumed run takes over; :meth:`record` adds an entry; :meth:`discard` deletes the journal.

    Opening checks, before any work: without ``resume`` an existing journal is refused unless
    ``overwrite`` (its work would be lost); with ``resume`` a journal of another ``fingerprint`` or
    an unreadable one is refused, and a missing one means starting afresh (``done`` empty).
    """

    def __init__(self, out: str | os.PathLike, command: str, fingerprint: str, resume: bool = False,
                 overwrite: bool = False):
        self.path = journal_path(out, command)
        self.command, self.fingerprint = command, fingerprint
        self.done: dict[str, dict] = {}
        if not self.path.exists():
            return
        if not resume:
            if not overwrite:
                raise InputError(f"an interrupted run into {Path(out)} left {self.path.name} beside it: add --resume to "
                                 "continue it, or --overwrite to start over")
            return
        try:
            document = json.loads(self.path.read_text())
            if document.get("format") != FORMAT or document.get("command") != command:
                raise ValueError(f"not a {FORMAT} file of {command}")
            entries = document["entries"]
            if not isinstance(entries, dict):
                raise ValueError("its entries are not an object")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{self.path}: cannot resume from it ({error}); delete it to start over") from None
        if document.get("fingerprint") != fingerprint:
            raise InputError(f"{self.path.name} was written for other inputs (a file or a setting differs): delete it "
                             "to start over")
        self.done = entries

    def record(self, key: str, entry: dict) -> None:
        """Add a finished entry and rewrite the journal (a temporary file renamed over it)."""
        self.done[key] = entry
        document = {"format": FORMAT, "version": VERSION, "command": self.command, "fingerprint": self.fingerprint,
                    "entries": self.done}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1))
        partial.replace(self.path)

    def discard(self) -> None:
        """Delete the journal (the run's folder is complete)."""
        self.path.unlink(missing_ok=True)
