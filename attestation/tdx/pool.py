# SPDX-License-Identifier: Apache-2.0
"""A process pool for the CPU-bound TDX checks, so they never hold the server's event loop.

dcap-qvl holds the GIL for the whole verification (about 1 ms per quote, plus about 1 ms
to parse and replay a large CC event log), so a thread pool gives no relief: only another
process does. :class:`VerificationPool` is a ``concurrent.futures.Executor`` that
:class:`~attestation.tdx.verifier.TdxVerifier` takes as ``executor=``:

* processes start from a **forkserver** (never ``fork`` of a server that already runs
  threads), which preloads this package's verification modules, so a new worker is a
  cheap fork of an interpreter that has already imported dcap-qvl;
* :meth:`VerificationPool.warm` starts every worker up front (call it off the event
  loop: the first fork waits for the forkserver to start);
* a worker that dies (killed, out of memory) breaks a ``ProcessPoolExecutor`` for good:
  the futures in flight fail with ``BrokenProcessPool`` (the verifier answers those
  attestations with ``VerifierUnavailableError``) and the next :meth:`submit` replaces
  the broken pool with a new one, so one crash never wedges the server;
* workers ignore SIGINT (Ctrl-C reaches the whole process group; the owner shuts the
  pool down) and log at the owner's level to stderr.

What crosses the process boundary is chosen by the verifier (quote bytes, a collateral
digest, the trust anchor DER, the time); see ``attestation/tdx/verifier.py``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Final, ParamSpec, TypeVar

_logger = logging.getLogger(__name__)

__all__ = ["MAX_VERIFY_PROCESSES", "PRELOAD_MODULES", "VerificationPool"]

#: Upper bound on worker processes per pool (a pool per server worker process).
MAX_VERIFY_PROCESSES: Final = 64
#: Imported once by the forkserver, so every worker forks with them loaded.
PRELOAD_MODULES: Final = ("attestation.tdx.verifier",)
#: ``fork`` is unsafe once the server runs threads; ``spawn`` re-imports per worker.
START_METHOD: Final = "forkserver"
_LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s [verify worker %(process)d] %(message)s"

P = ParamSpec("P")
T = TypeVar("T")


def _init_worker(
    log_level: int, initializer: Callable[..., object] | None, initargs: Sequence[Any]
) -> None:
    # Ctrl-C on `kbs serve` signals the whole process group: let the owner stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format=_LOG_FORMAT)
    if initializer is not None:
        initializer(*initargs)


def _ready() -> int:
    return os.getpid()


class VerificationPool(Executor):
    """A ``ProcessPoolExecutor`` that replaces itself when a worker process dies."""

    def __init__(
        self,
        processes: int,
        *,
        initializer: Callable[..., object] | None = None,
        initargs: Sequence[Any] = (),
    ) -> None:
        """Create the pool; no process starts until :meth:`warm` or the first job.

        Args:
            processes: worker processes, 1 to :data:`MAX_VERIFY_PROCESSES`.
            initializer: called in each worker after start (tests use it to install
                hooks); must pickle by reference.
            initargs: arguments for ``initializer``.

        Raises:
            ValueError: ``processes`` is out of range.
        """
        if not 1 <= processes <= MAX_VERIFY_PROCESSES:
            raise ValueError(f"processes must be 1 to {MAX_VERIFY_PROCESSES}")
        self._processes = processes
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._context = multiprocessing.get_context(START_METHOD)
        # Only takes effect when this process starts its forkserver (once).
        self._context.set_forkserver_preload(list(PRELOAD_MODULES))
        self._lock = threading.Lock()
        self._closed = False
        self._executor = self._new_executor()
        self.restarts = 0

    @property
    def processes(self) -> int:
        """How many worker processes the pool runs."""
        return self._processes

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._processes,
            mp_context=self._context,
            initializer=_init_worker,
            initargs=(logging.getLogger().getEffectiveLevel(), self._initializer, self._initargs),
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; a broken pool is replaced first.

        Raises:
            RuntimeError: the pool has been shut down.
        """
        with self._lock:
            if self._closed:
                raise RuntimeError("verification pool is shut down")
            try:
                return self._executor.submit(fn, *args, **kwargs)
            except BrokenProcessPool:
                self._replace()
                return self._executor.submit(fn, *args, **kwargs)

    def _replace(self) -> None:
        broken = self._executor
        _logger.error(
            "a tdx verification worker process died; starting a new pool of %d",
            self._processes,
        )
        broken.shutdown(wait=False, cancel_futures=True)
        self._executor = self._new_executor()
        self.restarts += 1

    def warm(self) -> list[int]:
        """Start every worker now and wait until each answers; return their process ids.

        Blocking (the first start waits for the forkserver): call it in a thread.

        Raises:
            BrokenProcessPool: a worker died while starting.
        """
        futures = [self.submit(_ready) for _ in range(self._processes)]
        return sorted({future.result() for future in futures})

    def pids(self) -> list[int]:
        """Process ids of the current workers (for operators and tests)."""
        with self._lock:
            # ProcessPoolExecutor has no public accessor for its processes.
            processes = self._executor._processes or {}  # noqa: SLF001
            return sorted(processes)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the workers (idempotent); jobs not started are cancelled if asked."""
        with self._lock:
            self._closed = True
            executor = self._executor
        executor.shutdown(wait=wait, cancel_futures=cancel_futures)
