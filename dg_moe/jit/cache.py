"""On-disk kernel cache: ``<cache>/<family>/<key>/{kernel.so or kernel.cubin, kernel.cu, meta.json}``.

Entries are built in a temporary folder beside them and published by renaming the whole folder
(atomic), under a per-key ``fcntl.flock`` so concurrent processes compile a key once. An entry
whose meta.json is missing or foreign, or whose kernel.so is missing or differs from the sha256
recorded in meta.json, is corrupt: it is discarded and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LIBRARY_FILE = "kernel.so"
CUBIN_FILE = "kernel.cubin"  # DG_MOE_JIT_BACKEND=nvrtc: device code only
SOURCE_FILE = "kernel.cu"
META_FILE = "meta.json"
ABSENT = "absent"


def entry_dir(root: Path, family: str, key: str) -> Path:
    """Folder of one cache entry."""
    return root / family / key


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_entry(entry: Path, key: str, key_format: int, artifact: str = LIBRARY_FILE) -> str | None:
    """None when ``entry`` is complete and intact, ABSENT when it does not exist, else what is wrong."""
    try:
        meta = json.loads((entry / META_FILE).read_text())
    except FileNotFoundError:
        return "meta.json missing" if entry.is_dir() else ABSENT
    except (OSError, ValueError) as exc:
        return f"meta.json unreadable ({exc})"
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != key_format:
        return "meta.json does not describe this key"
    try:
        digest = file_sha256(entry / artifact)
    except FileNotFoundError:
        return f"{artifact} missing"
    except OSError as exc:
        return f"{artifact} unreadable ({exc})"
    if digest != meta.get("kernel_sha256"):
        return f"{artifact} differs from the sha256 in meta.json"
    return None


def write_meta(folder: Path, meta: dict[str, Any], artifact: str = LIBRARY_FILE) -> None:
    """Write meta.json, recording the sha256 of the kernel.so (or kernel.cubin) beside it."""
    meta = {**meta, "kernel_sha256": file_sha256(folder / artifact)}
    (folder / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))


@contextlib.contextmanager
def key_lock(root: Path, family: str, key: str) -> Iterator[None]:
    """Exclusive lock of one key across processes (held while checking, compiling and publishing)."""
    folder = root / family
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def staging_dir(root: Path, family: str, key: str) -> Path:
    """A fresh temporary folder beside the entry; stale ones of this key (a crashed compile) go first.

    Call with the key's lock held: then no live process owns another staging folder of this key.
    """
    folder = root / family
    prefix = f".tmp-{key[:16]}-"
    for stale in folder.glob(prefix + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=folder))


def publish(staging: Path, entry: Path) -> None:
    """Move a complete staging folder into place in one rename."""
    os.rename(staging, entry)


def discard(entry: Path) -> None:
    """Remove an entry: first renamed aside (so readers never see half of it), then deleted."""
    trash = Path(tempfile.mkdtemp(prefix=f".trash-{entry.name[:16]}-", dir=entry.parent))
    os.rename(entry, trash / entry.name)
    shutil.rmtree(trash, ignore_errors=True)


def size_bytes(root: Path) -> int:
    """Total size of the files under ``root`` (0 when it does not exist)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total
