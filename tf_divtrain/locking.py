"""One process per run directory: ``<out_dir>/.lock``, held with ``fcntl.flock``.

Two ``train`` commands on the same ``--out_dir`` would interleave their checkpoints; the second
refuses instead (:class:`LockedError`, naming the holder's PID). The kernel drops a flock when its
process dies, however it dies, so a killed run never leaves the directory locked: the PID written
into the file is only for the message. Imports no TensorFlow.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Optional

from tf_divtrain import io_utils

LOCK_FILE = ".lock"


class LockedError(io_utils.FileProblem):
    """Another live process holds the run directory."""


class RunLock:
    """``with RunLock() as lock: lock.acquire(out_dir)`` -- held until the block ends.

    ``acquire`` again on the same directory is a no-op, unless the locked directory was moved away
    (``--fresh`` moves the old run aside), in which case the new directory is locked instead.
    """

    def __init__(self):
        self._fd: Optional[int] = None
        self.path = ""

    def acquire(self, out_dir: str, what: str = "run",
                elsewhere: str = "use another --out_dir") -> "RunLock":
        """Locks ``out_dir``; held by a live process -> :class:`LockedError` naming it, ``what`` it
        is and how to go ``elsewhere``."""
        path = os.path.join(out_dir, LOCK_FILE)
        if self._fd is not None:
            try:
                if os.path.samestat(os.fstat(self._fd), os.stat(path)):
                    return self
            except OSError:
                pass
            self.release()
        try:
            os.makedirs(out_dir, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return self  # an unwritable out_dir: the run's first write reports it (nothing to guard)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise io_utils.output_error(path, e) from e
            raise LockedError(f"{out_dir} is in use by another {what} (pid {holder}, lock {path}); "
                              f"wait for it to finish, or {elsewhere}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd, self.path = fd, path
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays (harmless, re-used next time)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_FILE", "LockedError", "RunLock"]
