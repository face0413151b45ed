"""Atomic file writes, checked reads of safetensors files, output folders, and content fingerprints.

Every file tangentft writes goes through :func:`atomic_write`: the bytes land in a temporary file in the
same folder and are renamed over the target, so an interrupted command never leaves a half-written file;
it gets the permissions any new file gets (0644 under the usual umask), not the 0600 of a temporary file.
Every safetensors file tangentft reads goes through :func:`check_safetensors` first, so a truncated or
empty file is one clear line instead of a deserializer's traceback. JSON files are read through
:mod:`tangentft.schemas`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import TangentError


def _umask() -> int:
    # mkstemp/mkdtemp create 0600/0700; a written result should get what open()/mkdir would give it.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # 0644 under umask 022
_DIR_MODE = 0o777 & ~_umask()  # 0755


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a new temporary folder beside ``target`` (removed afterwards unless renamed away) whose mode
    is that of any new folder (0755 under umask 022), not mkdtemp's 0700: fill it, then rename it."""
    target = Path(target)
    ensure_dir(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    os.chmod(tmp, _DIR_MODE)
    try:
        yield tmp
    except OSError as exc:
        raise TangentError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents); one-line TangentError when it is a file, sits under a file,
    or cannot be created."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.exists():
        raise TangentError(f"{path} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise TangentError(f"cannot create folder {path}: {parent} is a file")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TangentError(f"cannot create folder {path}: {exc.strerror or exc}") from None
    return path


def check_out_dir(path: str | os.PathLike) -> Path:
    """Raise a one-line TangentError unless ``path`` is, or can be created as, a writable folder.

    Called before any expensive work. It creates nothing: a temporary file is made and removed in ``path`` or,
    when that does not exist yet, in its nearest existing parent. Creating the folder to test it and removing it
    again raced when several ranks checked one folder (one rank removed it under another's probe).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TangentError(f"{path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise TangentError(f"cannot create folder {path}: {existing} is a file")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".tangentft-probe."):
            pass
    except OSError as exc:
        verb = "write into" if existing == path else "create"
        raise TangentError(f"cannot {verb} folder {path}: {exc.strerror or exc}") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    if path.is_dir():
        raise TangentError(f"cannot write {path}: it is a folder")
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TangentError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    except OSError as exc:  # a full disk, a quota: the old file (if any) stays whole
        raise TangentError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def publish_dir(staged: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename a filled staging folder to ``target`` (atomic), with normal modes on everything in it: some
    writers (transformers' ``save_pretrained`` for its weights) leave 0600 files."""
    staged = Path(staged)
    for root, dirs, files in os.walk(staged):
        for d in dirs:
            os.chmod(os.path.join(root, d), _DIR_MODE)
        for f in files:
            os.chmod(os.path.join(root, f), _FILE_MODE)
    os.chmod(staged, _DIR_MODE)
    os.replace(staged, target)
    return Path(target)


def remove_dir(path: str | os.PathLike) -> None:
    """Delete folder ``path`` in one step as far as any reader can tell: it is renamed to a hidden sibling
    first, so no half-deleted folder is ever visible under its name."""
    path = Path(path)
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    os.replace(path, trash / path.name)
    shutil.rmtree(trash, ignore_errors=True)


LOCK = ".tangentft.lock"  # the lock file inside a folder a process writes into (see folder_lock)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive OS lock (``flock``) on the existing ``folder`` for the body, so two processes never
    write one run folder at once; a second process is refused in one TangentError naming the holder's pid.

    The lock belongs to the open file, so the kernel drops it when its process ends in any way: a killed run
    never leaves a stale lock behind, and its folder can be resumed at once. The lock file stays (removing it
    would let a third process lock a new file while the second still waits on the old one). On a file system
    without ``flock`` the body runs unlocked, with a warning.
    """
    import warnings

    folder = Path(folder)
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    except OSError as exc:
        raise TangentError(f"cannot lock folder {folder}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # The first line only: a holder that wrote a shorter pid over a longer one leaves the old tail behind.
            holder = (os.pread(fd, 32, 0).decode("ascii", "replace").split() or ["unknown"])[0]
            raise TangentError(f"{folder} is in use by another tangentft process (pid {holder}); wait for it to end "
                               "or choose another folder") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            warnings.warn(f"{folder}: the file system cannot lock files ({exc.strerror}); nothing stops a second "
                          "process writing into this folder at the same time", stacklevel=3)
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def clear_dir(path: str | os.PathLike, keep: tuple[str, ...] = (LOCK,)) -> None:
    """Delete everything in folder ``path`` but the names in ``keep`` (its lock file): the entries are moved
    into a hidden sibling first and deleted there, so no half-deleted file is left under its name."""
    path = Path(path)
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
    try:
        for entry in path.iterdir():
            if entry.name not in keep:
                os.replace(entry, trash / entry.name)
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def set_aside(path: str | os.PathLike, keep: tuple[str, ...] = (LOCK,)) -> Path:
    """Move everything in folder ``path`` but ``keep`` into a new hidden sibling and return it: the folder's old
    contents survive until the caller deletes them (:func:`remove_dir`) or puts them back (:func:`put_back`).
    Renames only, so it needs no free space."""
    path = Path(path)
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.replaced.", dir=path.parent))
    for entry in path.iterdir():
        if entry.name not in keep:
            os.replace(entry, aside / entry.name)
    return aside


def put_back(aside: str | os.PathLike, path: str | os.PathLike, keep: tuple[str, ...] = (LOCK,)) -> None:
    """Undo :func:`set_aside`: clear folder ``path`` (but ``keep``) and move the set-aside entries back into it."""
    clear_dir(path, keep)
    for entry in Path(aside).iterdir():
        os.replace(entry, Path(path) / entry.name)
    shutil.rmtree(aside, ignore_errors=True)


def check_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """The header of a complete safetensors file (name -> dtype/shape/offsets, plus ``__metadata__``).

    A missing, empty, truncated or otherwise malformed file is one TangentError naming it: the header
    length, the JSON header and every tensor's byte range are checked against the file size, which is
    what a cut-off copy or an interrupted download gets wrong.
    """
    path = Path(path)
    bad = TangentError(f"{path} is not a valid safetensors file (truncated?)")
    if not path.is_file():
        raise TangentError(f"{path}: no such file")
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad
            (n,) = struct.unpack("<Q", head)
            if n == 0 or 8 + n > size:
                raise bad
            header = json.loads(fh.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise bad from None
    if not isinstance(header, dict):
        raise bad
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise bad
        end = max(end, offsets[1])
    if 8 + n + end != size:
        raise bad
    return header


def load_safetensors(path: str | os.PathLike) -> dict[str, Any]:
    """All tensors of a safetensors file, after :func:`check_safetensors` (so bad files fail in one line)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError):
        raise TangentError(f"{path} is not a valid safetensors file (truncated?)") from None


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header (empty when it has none)."""
    meta = check_safetensors(path).get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise TangentError(f"{path} is not a valid safetensors file (truncated?)")
    return meta


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes or UTF-8 text) to ``path`` atomically and return the path."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def to_jsonable(obj: Any) -> Any:
    """Convert numpy/torch scalars and arrays, paths and tuples into plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays/scalars and torch tensors
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def format_number(v: Any) -> str:
    """How a value appears in reports and tables: "–" for missing, 4 significant digits for floats."""
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON object as a line; a line is written in one ``write`` call and flushed."""
    path = Path(path)
    ensure_dir(path.parent)
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(record)) + "\n")
            fh.flush()
    except OSError as exc:
        raise TangentError(f"cannot write {path}: {exc.strerror or exc}") from None


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
    """Save a name -> tensor mapping with :mod:`safetensors` atomically (tensors made contiguous)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(clean, str(tmp), metadata=dict(metadata) if metadata else None)
        except SafetensorError as exc:  # its I/O errors (a full disk) arrive as this, not as OSError
            reason = str(exc).rsplit("I/O error: ", 1)[-1]
            raise TangentError(f"cannot write {path}: {reason}") from None
    return Path(path)


def fingerprint(*parts: Any) -> str:
    """A short stable hex digest of JSON-serialisable parts (strings, numbers, lists, dicts)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(to_jsonable(part), sort_keys=True).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]
