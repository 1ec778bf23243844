"""Helpers shared by the batch tests."""

from pathlib import Path


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under a folder but the batch's own state, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and ".spectrosynth" not in p.relative_to(folder).parts
    }
