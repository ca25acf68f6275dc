"""Streaming JSON-lines input for the finetuning prep tools, with errors that name file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class InputError(ValueError):
    """Malformed input; the message names the file and line (or record id) and what to fix."""


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("FILE:LINE", record)`` for every non-blank line; refuse lines that are not JSON objects."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); "
                                 "each line must hold one JSON object") from None
            if not isinstance(record, dict):
                raise InputError(f"{where}: expected a JSON object, got {type(record).__name__}")
            yield where, record


def text_field(record: dict, name: str, where: str, flag: str, allow_empty: bool = False) -> str:
    """``record[name]`` as a non-empty string, or an :class:`InputError` that says which flag picks the field."""
    if name not in record:
        fields = ", ".join(sorted(map(repr, record))) or "none"
        raise InputError(f"{where}: no field {name!r} (fields: {fields}); name the field with {flag}")
    value = record[name]
    if not isinstance(value, str):
        raise InputError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InputError(f"{where}: field {name!r} is empty; remove the record or fill it")
    return value
