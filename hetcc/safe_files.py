"""Reading files a stranger wrote and replacing directories atomically: the file-system half of
bundle safety (hetcc/bundle.py holds the format half).

Reading: a bundle's JSON files are opened without following a symbolic link and without blocking
(a FIFO would hang ``open``), must be regular files, are read up to a size limit, and are parsed
with a bound on nesting, so a crafted bundle cannot hang hetcc, exhaust its memory or crash it
with a RecursionError.

Replacing: ``rename_noreplace`` and ``exchange`` use Linux's renameat2, so a save never has a
moment with no bundle at the path and never replaces something that appeared there after it was
checked. Where renameat2 is missing (another OS, a file system without it) they fall back to
plain renames and say so in the log; docs/bundle.md states what is then guaranteed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import stat
from pathlib import Path

from hetcc.errors import BundleError
from hetcc.names import first_line

log = logging.getLogger(__name__)

JSON_LIMIT = 64 * 2**20
"""Bytes hetcc reads of a bundle's manifest or report: a plan of 100k nodes is a few MB."""
MAX_DEPTH = 64
"""Nesting of JSON containers a bundle may use; hetcc writes at most about ten."""


def read_json(path: Path, what: str, limit: int = JSON_LIMIT):
    """The JSON value in ``path``: a regular file (not a link, FIFO or device), at most ``limit``
    bytes, nested at most MAX_DEPTH deep. A BundleError otherwise, naming ``what``."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BundleError(f"{path} is a symbolic link; a bundle holds plain files only: do not use "
                              "it, copy the bundle again or recompile") from None
        raise BundleError(f"cannot read {what} {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{path} is not a regular file; a bundle holds plain files only: do not "
                              "use it, copy the bundle again or recompile")
        if info.st_size > limit:
            raise BundleError(f"{what} {path} is {info.st_size} bytes, more than the {limit} hetcc "
                              "reads; the bundle is corrupt or was tampered with")
        data = f.read(limit + 1)
    if len(data) > limit:  # grew while we read it
        raise BundleError(f"{what} {path} is larger than the {limit} bytes hetcc reads")
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        why = "it is nested too deeply" if isinstance(exc, RecursionError) else first_line(exc)
        raise BundleError(f"{what} {path} is not valid JSON ({why}); the bundle is corrupt: copy it "
                          "again or recompile") from None
    if depth(value) > MAX_DEPTH:
        raise BundleError(f"{what} {path} is nested more than {MAX_DEPTH} levels deep; the bundle is "
                          "corrupt or was tampered with")
    return value


def depth(value) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level + 1)
            if level + 1 > MAX_DEPTH:
                return level + 1
            stack.extend((child, level + 1) for child in node)
    return deepest


# ---- atomic directory moves ----

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_renameat2 = None


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        _renameat2 = False
        name = ctypes.util.find_library("c")
        if name:
            try:
                fn = ctypes.CDLL(name, use_errno=True).renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                _renameat2 = fn
            except (OSError, AttributeError):  # not Linux, or a libc older than glibc 2.28
                pass
    return _renameat2 or None


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False where the system or file system lacks it."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` if nothing is at ``dst``; FileExistsError if anything is, even an
    empty directory made a moment ago (a plain rename would silently replace that)."""
    if _rename2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    log.debug("renameat2 is not available here; %s is moved with a plain rename", dst)
    os.rename(src, dst)


def exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (both must exist). False where the system cannot; the
    caller then falls back to two renames."""
    return _rename2(a, b, _RENAME_EXCHANGE)


def umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting; restored at once
    os.umask(mask)
    return mask
