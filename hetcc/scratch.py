"""Scratch directories that compile() keeps because a segment failed in them (the failing segment
and its reproducer are there). Each kept one is marked, and marking a new one prunes the old ones,
so they do not pile up in the temp directory.

Only marked directories are ever removed: a ``hetcc-*`` directory without the mark may be the
scratch of a compile still running in another process. The newest ``KEEP`` are left alone, and so
is any kept within ``MIN_AGE`` seconds, however many: its CompiledModel may still be unsaved (save
copies the artifacts from there)."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "hetcc-"
"""compile()'s ``tempfile.mkdtemp(prefix=...)``."""
MARK = "KEPT_BY_HETCC"
"""File in a kept scratch directory: its presence is what allows pruning it."""
KEEP = 10
"""Kept directories that survive any pruning, newest first."""
MIN_AGE = 24 * 3600
"""Seconds a kept directory survives regardless of KEEP."""


def keep_scratch(scratch: Path | None, keep: int = KEEP, min_age: float = MIN_AGE) -> list[Path]:
    """Mark ``scratch`` as kept, and remove older kept directories beside it that are beyond the
    ``keep`` newest and older than ``min_age`` seconds. Returns what was removed. Never raises for
    a directory it cannot read or remove: cleaning up must not fail a compile."""
    if scratch is None:
        return []
    scratch = Path(scratch)
    try:
        (scratch / MARK).write_text("kept by hetcc.compile: a segment failed to lower or verify here; "
                                    "hetcc removes this directory once newer ones replace it\n")
    except OSError as exc:
        log.debug("could not mark %s as kept: %s", scratch, exc)
    return prune(scratch.parent, keep, min_age, spare=scratch)


def prune(root: Path, keep: int = KEEP, min_age: float = MIN_AGE, spare: Path | None = None) -> list[Path]:
    """Remove the kept scratch directories under ``root`` beyond the ``keep`` newest that are older
    than ``min_age`` seconds (never ``spare``); returns them."""
    kept = []
    for path in Path(root).glob(PREFIX + "*"):
        try:
            if path.is_dir() and not path.is_symlink() and (path / MARK).is_file():
                kept.append(((path / MARK).stat().st_mtime, path))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    kept.sort(reverse=True)
    now, removed = time.time(), []
    for when, path in kept[keep:]:
        if now - when < min_age or (spare is not None and path == Path(spare)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            removed.append(path)
    if removed:
        log.info("removed %d old kept scratch director%s under %s", len(removed),
                 "y" if len(removed) == 1 else "ies", root)
    return removed
