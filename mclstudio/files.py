"""Output files: never overwrite or lose what a user already has.

Every command that writes a file goes through here:
- ``check_output`` refuses, before any compute, an output that exists (unless the user asked to replace
  it), that is one of the command's own inputs (always), that is a folder, whose folder cannot be made or
  written, or that would not fit on the disk;
- ``claim_output`` does those checks, makes the folder and holds an exclusive lock on the output for the
  whole run, so a second writer gets one clear line instead of a mixed or unreadable file;
- ``atomic_target`` gives a temporary path next to the output, renamed over it on success and removed on
  every failure (an exception, KeyboardInterrupt, a full disk).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from mclstudio.errors import OutputError
from mclstudio.formatting import clip, format_bytes


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _nearest_existing(folder: Path) -> Path:
    """The folder itself, or the closest ancestor that exists."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _writable(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: os.access says yes to root even on a
    read-only file system)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def check_output(
    path: str | Path,
    *,
    replace: bool = False,
    inputs: Iterable[str | Path] = (),
    estimate_bytes: int = 0,
    what: str = "output",
    hint: str = "pass --force to replace it",
) -> Path:
    """``path`` as a Path if the command may write it; else OutputError with one line. ``replace``: the
    user asked to replace (or extend) an existing file. ``inputs``: files the command reads, which it never
    writes, even when asked. ``estimate_bytes``: roughly what the output needs on disk (0: unknown)."""
    text = str(path)
    if not text.strip():
        raise OutputError(f"the {what} path is empty")
    path = Path(text)
    if path.is_dir():
        raise OutputError(f"the {what} path {path} is a folder; give a file name")
    for source in inputs:
        if _same_file(path, Path(source)) or path.absolute() == Path(source).absolute():
            raise OutputError(f"{path} is one of this command's inputs; mclstudio never writes to its own input, "
                              "give another output path")
    if path.exists() and not replace:
        raise OutputError(f"{path} already exists; {hint}, or give another path")
    folder = _nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is not a folder")
    if not _writable(folder):
        raise OutputError(f"cannot write {path}: the folder {folder} is not writable")
    if estimate_bytes > 0:
        free = shutil.disk_usage(folder).free
        if free < estimate_bytes:
            raise OutputError(f"not enough free space for {path}: {format_bytes(free)} free in {folder}, "
                              f"about {format_bytes(estimate_bytes)} needed")
    return path


def new_run_path(name: str, file: str, runs: str | Path = "runs") -> Path:
    """runs/<name>-<YYYYmmdd-HHMMSS>[-n]/<file>: a default output in a folder that does not exist yet, so
    that a run without -o never replaces anything (':' and '/' in the name become '-')."""
    stem = "".join("-" if c in ":/\\ " else c for c in name) + "-" + datetime.now().strftime("%Y%m%d-%H%M%S")
    folder, n = Path(runs) / stem, 2
    while folder.exists():
        folder, n = Path(runs) / f"{stem}-{n}", n + 1
    return folder / file


def lock_path(path: Path) -> Path:
    """The sidecar lock file of an output: .<name>.lock next to it."""
    return path.with_name(f".{path.name}.lock")


@contextmanager
def output_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock (fcntl.flock on the sidecar .<name>.lock) on ``path`` while the block runs;
    OutputError at once if another process holds it. The sidecar is removed on the way out."""
    path = Path(path)
    sidecar = lock_path(path)
    while True:
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"{path} is being written by another process; wait for it or give another path") from None
        # The previous holder removes the sidecar before releasing it: if the file we locked is no longer
        # the one at that name, we locked a removed file and must try again.
        try:
            current = os.stat(sidecar).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(sidecar)
        except OSError:
            pass
        os.close(fd)


@contextmanager
def claim_output(
    path: str | Path,
    *,
    replace: bool = False,
    inputs: Iterable[str | Path] = (),
    estimate_bytes: int = 0,
    what: str = "output",
    hint: str = "pass --force to replace it",
) -> Iterator[Path]:
    """check_output, then make the output's folder and hold its lock while the block runs. The existence
    check is repeated under the lock, so two runs racing for a new path never both write it. Folders made
    here are removed again if the run leaves them empty (a refusal or a failure before any output)."""
    inputs = list(inputs)
    kw = dict(replace=replace, inputs=inputs, estimate_bytes=estimate_bytes, what=what, hint=hint)
    path = check_output(path, **kw)  # type: ignore[arg-type]
    made: list[Path] = []
    folder = path.parent.absolute()
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    try:
        for folder in reversed(made):
            folder.mkdir()
        with output_lock(path):
            check_output(path, **kw)  # type: ignore[arg-type]
            yield path
    finally:
        for folder in made:
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break


@contextmanager
def atomic_target(path: str | Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path (.<name>.tmp-<pid>) next to ``path`` for the block to write; renamed over ``path``
    when the block ends normally, removed on any exception (KeyboardInterrupt and a full disk included).
    ``fsync``: flush the file and the rename to disk (for files that must survive a power cut)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk (torch.save raises RuntimeError for it): which file,
        tmp.unlink(missing_ok=True)         # and that what was there is intact
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else clip(str(exc), 120)
        kept = "; the file there is unchanged" if path.exists() else ""
        raise OutputError(f"cannot write {path}: {reason}{kept}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
