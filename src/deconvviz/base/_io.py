"""Atomic file writing: every file deconvviz writes appears whole or not at all.

Each writer writes to a temporary file in the destination's directory, flushes and fsyncs it,
then ``os.replace``-s it over the destination, so an interrupted job (Ctrl-C, crash, full disk)
never leaves a half-written file and never destroys the previous version.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from deconvviz.base._util import json_safe
from deconvviz.base.errors import BusyError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Example::

        with atomic_path("fig.png") as tmp:
            figure.savefig(tmp, format="png")
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would have given
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, dest)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and not exc.filename:
            # a full disk says "No space left on device" without a file: name the one we wrote
            raise OSError(exc.errno, exc.strerror or str(exc), str(dest)) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(fileobj)`` on a temporary binary file, then move it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda fh: fh.write(data))


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; always valid JSON: NaN and
    infinite numbers (which JSON has no spelling for) are written as ``null``, tensors and NumPy
    values as lists (:func:`deconvviz.base._util.json_safe`)."""
    text = json.dumps(
        json_safe(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False
    )
    return write_text(path, text + "\n")


def save_torch(path: str | os.PathLike[str], obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def save_figure(path: str | os.PathLike[str], figure: Any, **kwargs: Any) -> Path:
    """Save a matplotlib figure atomically; the format comes from the file suffix."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda fh: figure.savefig(fh, format=fmt, **kwargs))


def save_image(path: str | os.PathLike[str], image: Any) -> Path:
    """Save a PIL image atomically; the format comes from the file suffix."""
    fmt = (Path(path).suffix.lstrip(".") or "png").upper()
    fmt = "JPEG" if fmt == "JPG" else fmt
    return atomic_write(path, lambda fh: image.save(fh, format=fmt))


def _json_default(obj: Any) -> Any:
    try:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


# ---------------------------------------------------------------------- stale temporary files


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` leaves beside ``path`` when the process is
    killed mid-write (``.NAME.*.tmp``); call it while holding ``path``'s :func:`lock`, so that no
    live writer's file goes. Returns the files removed."""
    dest = Path(path)
    gone = []
    if dest.parent.is_dir():
        for tmp in dest.parent.glob(f".{_glob_escape(dest.name)}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_dir():
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
                gone.append(tmp)
    return gone


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


# ---------------------------------------------------------------------- locks


_HELD: set[tuple[Path, int]] = set()  # the locks each thread of this process holds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


@contextlib.contextmanager
def lock(path: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold ``path`` (a lock file holding the owner's pid, host and start time) for the block.

    A second process that asks for the same lock while the owner is alive gets a
    :class:`deconvviz.base.errors.BusyError` naming the owner; a lock left by a dead process on this
    host (a kill -9, a crash) is taken over; in the thread that holds it, asking again is a
    no-op (a command holds its output folder around the library calls that write it); another
    thread of the same process is refused like another process.
    ``what`` names the thing locked in the message.
    """
    lock_path = Path(path).absolute()
    mine = (lock_path, threading.get_ident())
    if mine in _HELD:  # this thread holds it already (a command around a library call)
        yield lock_path
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    for _ in range(5):
        try:
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _read_owner(lock_path)
            if owner is None:  # being written this instant, or garbage: look again
                time.sleep(0.05)
                owner = _read_owner(lock_path)
            if owner is not None and owner.get("host") != me["host"]:
                raise BusyError(
                    f"{what} is in use by pid {owner.get('pid')} on host {owner.get('host')} "
                    f"(lock {lock_path}); wait for it, choose another output, or delete the "
                    "lock if that run is gone"
                ) from None
            if owner is not None and isinstance(owner.get("pid"), int) and _alive(owner["pid"]):
                since = time.strftime("%H:%M:%S", time.localtime(float(owner.get("since", 0) or 0)))
                raise BusyError(
                    f"{what} is in use by another run (pid {owner['pid']} on {owner['host']}, "
                    f"since {since}; lock {lock_path}); wait for it or choose another output"
                ) from None
            # stale: its owner is dead (or the file is unreadable garbage): take it over
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            continue
        with os.fdopen(fd, "w") as fh:
            json.dump(me, fh)
        break
    else:  # pragma: no cover - five stale takeovers lost in a row
        raise BusyError(f"cannot take the lock {lock_path} for {what}; try again")
    _HELD.add(mine)
    try:
        yield lock_path
    finally:
        _HELD.discard(mine)
        if _read_owner(lock_path) == me:
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()


def _read_owner(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def lock_path_for(folder: str | os.PathLike[str]) -> Path:
    """The lock file of an output folder: a hidden sibling, ``.NAME.lock`` (the folder itself is
    swapped whole by :func:`atomic_dir`)."""
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


# ---------------------------------------------------------------------- whole folders


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike[str], *, carry: Iterable[str] = (), owned: Iterable[str] = ()
) -> Iterator[Path]:
    """Yield an empty temporary sibling folder of ``path``; when the block succeeds it replaces
    ``path`` whole, so ``path`` holds the old result until the new one is complete.

    On the swap, entries of the old folder named in ``carry`` (e.g. a scan state) and every
    top-level entry not named in ``owned`` (files the user put there) move into the new folder
    first; the old folder's own result (the ``owned`` names) goes. On failure (an exception, a
    full disk, Ctrl-C) the partial folder is removed and ``path`` is untouched; an ``OSError``
    then names ``path``. Hold the folder's :func:`lock` around it.
    """
    dest = Path(path).absolute()
    here = Path.cwd().resolve()
    if dest.resolve() == here or dest.resolve() in here.parents:
        from deconvviz.base.errors import InputError

        raise InputError(
            f"{path} is the current folder (or holds it); it is replaced whole when written: "
            "give a folder of its own, e.g. --out atlas"
        )
    if dest.exists() and not dest.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(dest)
    for old in dest.parent.glob(f".{_glob_escape(dest.name)}.*.old"):
        shutil.rmtree(old, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    owned_names, carried = set(owned), set(carry)
    try:
        yield stage
        os.chmod(stage, 0o777 & ~_umask())
        if dest.exists():
            for entry in list(dest.iterdir()):
                if entry.name in carried or entry.name not in owned_names:
                    target = stage / entry.name
                    if not target.exists():
                        os.replace(entry, target)
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / "site")
            os.replace(stage, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, dest)
    except BaseException as exc:
        shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            if exc.filename and str(exc.filename).startswith(str(stage)):
                where = str(dest) + str(exc.filename)[len(str(stage)) :]
                raise OSError(exc.errno, exc.strerror or str(exc), where) from exc
            if not exc.filename:
                raise OSError(exc.errno, exc.strerror or str(exc), str(dest)) from exc
        raise
