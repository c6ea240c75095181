"""Outputs appear complete or not at all.

Every writer works on a temporary file beside its target, checks and flushes it, and only then
renames it into place. A crash, a full disk or a failed check leaves the old target untouched and
no half-written file under the final name. Temporary names carry the host and process id, so a later
run can tell its own leftovers from those of a live process and remove them (`remove_stale_temps`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_TMP_TAG = '.ctclip-tmp'


def temp_path_for(path: str | Path) -> Path:
    """A unique temporary path in `path`'s folder (same file system, so the rename is atomic)."""
    path = Path(path)
    host = socket.gethostname().split('.')[0] or 'host'
    token = f'{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    return path.with_name(f'.{path.name}.{token}{_TMP_TAG}')


def fsync_path(path: str | Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a folder
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def commit(tmp: str | Path, path: str | Path) -> Path:
    """Flush `tmp` and rename it onto `path`.

    A folder replaces an existing folder too: the old one is first renamed aside under a
    temporary name (restored if the second rename fails, removed after it succeeds), so `path`
    is always either the old complete folder or the new one.
    """
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file():
        fsync_path(tmp)
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        aside = temp_path_for(path)
        os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(aside, path)
            raise
        _remove(aside)
    else:
        os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path, verify: Callable[[Path], Any] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit, `verify(tmp)` and rename it to `path`.

    The caller writes and closes the file (or fills the folder) inside the block, so write and
    close errors (a full disk) raise there. `verify` raises if the written file is incomplete. On
    any error the temporary file is removed and `path` is left as it was. The temporary name ends
    in `.ctclip-tmp`, not in `path`'s suffix: writers that pick a format from the name (`np.save`,
    `savefig`) take a file object or an explicit format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f'{path}: the writer produced no file')
        if verify is not None:
            verify(tmp)
        commit(tmp, path)
    except OSError as exc:
        _remove(tmp)
        if exc.filename is None and exc.errno is not None:
            # writers such as savefig raise ENOSPC without a path: name the output it was for
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | Path,
    mode: str = 'w',
    verify: Callable[[Path], Any] | None = None,
    **kwargs: Any,
) -> Iterator[IO]:
    """`open()` for writing that renames into place only after the data reached the disk."""
    if not any(c in mode for c in 'wx'):
        raise ValueError(f"mode must be a write mode ('w', 'wb', ...), not {mode!r}")
    if 'b' not in mode:
        kwargs.setdefault('encoding', 'utf-8')
    with atomic_path(path, verify=verify) as tmp:
        with open(tmp, mode.replace('x', 'w'), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path, 'w') as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, 'wb') as f:
        f.write(data)
    return Path(path)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; as a `verify`, it rejects a truncated or empty one."""
    with open(path, encoding='utf-8') as f:
        return json.load(f)


def write_json(path: str | Path, obj: Any, newline: bool = True, **dumps_kwargs: Any) -> Path:
    """`json.dumps(obj, **dumps_kwargs)` (+ a final newline), re-read before it is renamed.

    `indent` defaults to 2; pass `indent=None` for one line.
    """
    dumps_kwargs.setdefault('indent', 2)
    text = json.dumps(obj, **dumps_kwargs) + ('\n' if newline else '')
    with atomic_open(path, 'w', verify=read_json) as f:
        f.write(text)
    return Path(path)


def _owner_alive(name: str) -> bool:
    """Whether the process named in a temporary file's name may still be writing it."""
    token = name[: -len(_TMP_TAG)].rsplit('.', 1)[-1]
    parts = token.rsplit('-', 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    if host != (socket.gethostname().split('.')[0] or 'host'):
        return True  # another node's process: not ours to judge
    return pid_alive(pid)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` of this host may still run (ours, or one we may not signal)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files left in `folder` by writers that died (not by live ones)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob(f'.*{_TMP_TAG}'):
        if not _owner_alive(p.name):
            _remove(p)
            removed.append(p)
    return removed
