"""The journal of a registration run: what an interrupted ``spinereg register`` had finished.

After every vertebra the run rewrites ``.<DIR>.register-journal.json`` beside its output folder
DIR (atomically, so a killed process leaves the last complete version). A run that ends well
deletes it; one that is interrupted, fails or is killed keeps it, and the same command with
``--resume`` takes its vertebrae instead of registering them again. The journal holds a
fingerprint of everything that decides a result (the contents of every input file, the method,
the model file, the rigid configuration); a journal of other inputs is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

from ..errors import InputError
from ..io.results import VertebraResult
from .inputs import CaseInputs, is_path

FORMAT = "spinereg-register-journal"
VERSION = 1
#: Bytes read at a time while hashing an input.
_CHUNK = 1 << 20


def journal_path(out: str | os.PathLike) -> Path:
    """The journal file of output folder ``out``: hidden, beside it."""
    out = Path(out).absolute()
    return out.parent / f".{out.name}.register-journal.json"


def _hash_path(digest, path: Path) -> None:
    """Add a file's bytes, or every file of a folder (a DICOM series) in name order, to ``digest``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                digest.update(chunk)


def fingerprint(case: CaseInputs) -> str:
    """SHA-256 (hex) of what decides the results of ``case``: its input files' contents (or, for an
    input given as an object, its repr), the label scheme, --invert, the method, the model file
    and the rigid configuration. Paths and the device do not count."""
    config = case.config
    digest = hashlib.sha256()
    inputs = [config.ct, config.seg, *config.xrays, *config.geometries, config.init, config.roi, config.boxes,
              case.model_path]
    for value in inputs:
        digest.update(b"\0")
        if value is not None and is_path(value) and Path(value).exists():
            _hash_path(digest, Path(value))
        else:
            digest.update(repr(value).encode())
    settings = {"label_scheme": case.labelmap.scheme.name, "invert": bool(config.invert), "method": case.method,
                "rigid": asdict(config.rigid)}
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class RegisterJournal:
    """The journal of one run into ``out``: ``done`` (name -> :class:`VertebraResult`) holds what
    a resumed run takes over; :meth:`record` adds a finished vertebra; :meth:`discard` deletes it.

    Opening checks, before anything is registered: without ``resume`` an existing journal is
    refused unless ``overwrite`` (its work would be lost); with ``resume`` a journal of other
    inputs is refused, and a missing one means starting afresh.
    """

    def __init__(self, out: str | os.PathLike, case: CaseInputs, resume: bool = False, overwrite: bool = False):
        self.path = journal_path(out)
        self.fingerprint = fingerprint(case)
        self.done: dict[str, VertebraResult] = {}
        if not self.path.exists():
            return
        if not resume:
            if not overwrite:
                raise InputError(f"an interrupted run into {Path(out)} left {self.path.name} beside it: add --resume to "
                                 "continue it, or --overwrite to start over")
            return
        try:
            document = json.loads(self.path.read_text())
            if document.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            stored = document["vertebrae"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"{self.path}: cannot resume from it ({error}); delete it to start over") from None
        if document.get("fingerprint") != self.fingerprint:
            raise InputError(f"{self.path.name} was written for other inputs (a file, the method, the model or the "
                             "settings differ): delete it to start over")
        wanted = set(case.vertebrae)
        self.done = {name: VertebraResult.from_json(name, entry, str(self.path))
                     for name, entry in stored.items() if name in wanted}

    def record(self, result: VertebraResult) -> None:
        """Add a finished vertebra and rewrite the journal (a temporary file renamed over it)."""
        self.done[result.name] = result
        document = {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                    "vertebrae": {name: entry.to_json() for name, entry in self.done.items()}}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(document, indent=1))
        partial.replace(self.path)

    def discard(self) -> None:
        """Delete the journal (the run's folder is complete)."""
        self.path.unlink(missing_ok=True)
