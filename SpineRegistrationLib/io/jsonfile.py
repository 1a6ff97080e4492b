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
