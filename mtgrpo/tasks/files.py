"""Local dataset files read with errors that name the file, the line and the fix.

    rows = read_jsonl(Path("data/train.jsonl"))        # also .jsonl.gz

A bad file must fail before any model is loaded, in one line a user can act on: an empty file, a malformed row
(file and line number), a truncated or corrupt gzip file.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl (or .jsonl.gz) file, one per non-blank line."""
    opener = gzip.open if path.name.endswith(".gz") else open
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ValueError(
                        f"Dataset file {path}, line {number}: not valid JSON ({err.msg}, column {err.colno}). Fix or "
                        "remove that line; every line must be one JSON object."
                    ) from None
                if not isinstance(row, dict):
                    raise ValueError(
                        f"Dataset file {path}, line {number}: a JSON {type(row).__name__}, not an object. Every line "
                        "must be one JSON object with the dataset's columns."
                    )
                rows.append(row)
    except (EOFError, zlib.error, gzip.BadGzipFile, UnicodeDecodeError) as err:
        raise ValueError(
            f"Dataset file {path} is truncated or corrupt ({err}). Download or copy it again"
            f"{' (gzip -t checks it)' if path.name.endswith('.gz') else ''}."
        ) from None
    if not rows:
        raise ValueError(f"Dataset file {path} is empty: it has no rows. Pass a file with one JSON object per line.")
    return rows
