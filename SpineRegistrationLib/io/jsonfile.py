"""Reading user JSON files with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file; InputError naming ``what`` was expected if missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({what} expected): {error}") from None


def check_format(document: Any, format_name: str, version: int) -> dict:
    """``document`` itself when it is a JSON object of ``format_name`` at ``version``; InputError
    ("format is ..., expected ..." / "version is ..., expected ...") otherwise."""
    if not isinstance(document, dict) or document.get("format") != format_name:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise InputError(f"format is {found!r}, expected {format_name!r}")
    if document.get("version") != version or isinstance(document.get("version"), bool):
        raise InputError(f"version is {document.get('version')!r}, expected {version}")
    return document
