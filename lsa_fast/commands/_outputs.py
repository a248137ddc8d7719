"""Checks of output locations, made before a command does any work: an analysis or a
training of minutes must not end in a traceback because --out names a file, lies
inside a file, or cannot be written. Each check raises one ValueError line."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Union

__all__ = ["check_output_dir", "check_output_file"]

PathLike = Union[str, "os.PathLike[str]"]


def check_output_dir(path: PathLike, option: str = "--out", files: Iterable[str] = ()) -> Path:
    """`path` must be a directory, or a path where one can be made; the `files` the
    command will write into it must not be directories. Creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path}: exists and is not a directory; {option} names a directory "
                         f"(give a new or existing directory)")
    _check_writable(path, option, path)
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{option} {path}: {path / name} is a directory, so the {name} cannot be written")
    return path


def check_output_file(path: PathLike, option: str = "--out") -> Path:
    """`path` must be a file that can be (over)written, or created together with its
    missing parent directories. Creates nothing."""
    text = os.fspath(path)
    path = Path(text).expanduser()
    if path.is_dir() or text.endswith(("/", os.sep)):
        raise ValueError(f"{option} {text}: is a directory; {option} names a file (e.g. {path / 'table.json'})")
    _check_writable(path.parent if str(path.parent) else Path("."), option, path)
    return path


def _check_writable(directory: Path, option: str, target: Path) -> None:
    """`directory` exists and is writable, or its nearest existing ancestor is a
    directory where the missing ones can be made."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{option} {target}: {existing} is a file, so nothing can be written inside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "the directory" if existing == directory else "its nearest existing parent"
        raise ValueError(f"{option} {target}: {what} {existing} is not writable")
