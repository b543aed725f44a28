"""Independent work in a second process while this one computes: a second core, used.

``reproduce`` measures the route verdict of every shipped organism beside the model under study. That
panel needs nothing from the run but its settings, so it goes to a second process at the start and is
collected when the report needs it; on a 2-core machine it costs no wall time beyond the run's own.

The worker is ``python -m spatial_interp.background``, fed pickled ``(function, arguments)`` tasks on
its stdin, one at a time in submission order, and answering on its stdout. A task the worker has not
started when its result is asked for runs in the caller instead, so the two processes share the work
however long each task takes. It is not a
``multiprocessing`` child, so it never re-imports the caller's ``__main__``: a user's script without an
``if __name__ == "__main__":`` guard works as it is (with ``spawn`` it would re-run itself in the child
and leave the task waiting forever). The worker gives torch one thread, and while it is alive the
caller's torch gives up one of its threads (restored when the block exits), so the two processes do not
oversubscribe the cores. It is killed when the ``with`` block exits, so an error or Ctrl-C in the
caller leaves no process behind; if the worker dies, the task it held raises :class:`WorkerDiedError`
and the others run in the caller. ``enabled=False`` runs each task in the caller, lazily, when its
result is asked for: the same calls, for tests and debugging.

Example:
    >>> import operator
    >>> with Background(enabled=False) as background:
    ...     task = background.submit(operator.add, 2, 3)
    ...     task.result()
    5
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """The background worker process ended before answering (its own error is on stderr)."""


class Task(Generic[T]):
    """A submitted call. ``result()`` waits for the worker's answer, or, if the worker has not started
    it yet, runs it here (the caller would otherwise sit idle): work goes to whichever process is free."""

    def __init__(self, owner: Background | None, fn: Callable[..., T], args: tuple) -> None:
        self._owner, self._fn, self._args = owner, fn, args
        self.state = "pending" if owner is not None else "local"  # pending, sent, answered, local, cancelled
        self.ran_here = False
        self._done, self._ok, self._value = False, True, None

    def cancel(self) -> bool:
        """Withdraw the task if the worker has not started it (then it runs nowhere); whether it was."""
        owner = self._owner
        if owner is None:
            return not self._done and not self.ran_here
        with owner._changed:
            if self.state != "pending":
                return False
            owner._pending.remove(self)
            self.state = "cancelled"
            return True

    def result(self) -> T:
        owner = self._owner
        if not self._done and owner is not None:
            with owner._changed:
                if self.state == "pending":
                    owner._pending.remove(self)
                    self.state = "local"
                while self.state == "sent":
                    owner._changed.wait()
        if self.state == "cancelled":
            raise RuntimeError("this task was cancelled")
        if not self._done:
            self.ran_here = True
            self._value, self._ok, self._done = self._fn(*self._args), True, True
        if not self._ok:
            raise self._value
        return self._value  # type: ignore[return-value]

    def _answered(self, ok: bool, value: Any) -> None:
        self._ok, self._value, self._done, self.state = ok, value, True, "answered"


class Background:
    """One worker process for calls whose function (module-level) and arguments pickle."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._process: subprocess.Popen | None = None
        self._feeder: threading.Thread | None = None
        self._threads: int | None = None
        self._pending: deque[Task[Any]] = deque()
        self._changed = threading.Condition()
        self._closed = False

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        if self._feeder is not None:
            self._feeder.join()
            self._feeder = None
        if self._process is not None:
            for stream in (self._process.stdin, self._process.stdout):
                if stream is not None:
                    stream.close()
            self._process = None
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        if not self.enabled:
            return Task(None, fn, args)
        task = Task(self, fn, args)
        with self._changed:
            self._pending.append(task)
            self._changed.notify_all()
        if self._process is None:
            self._start()
        return task

    def _start(self) -> None:
        import torch

        log.debug("starting a background worker process")
        # The worker imports this very copy of the package (not another one on its default path).
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        self._process = subprocess.Popen([sys.executable, "-m", "spatial_interp.background"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._threads = torch.get_num_threads()
        if self._threads > 1:
            torch.set_num_threads(self._threads - 1)
        self._feeder = threading.Thread(target=self._feed, name="spatial_interp-background", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        """Hand the worker one task at a time, so a task it has not started can still run in the caller."""
        process = self._process
        assert process is not None and process.stdin is not None and process.stdout is not None
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
                task = self._pending.popleft()
                task.state = "sent"
            try:
                pickle.dump((task._fn, task._args), process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                process.stdin.flush()
                ok, value = pickle.load(process.stdout)
            except (EOFError, OSError, pickle.UnpicklingError) as error:
                died = WorkerDiedError(f"the background worker process ended (exit code {process.wait()}) "
                                       "before answering; its error is above")
                died.__cause__ = error
                with self._changed:
                    task._answered(False, died)
                    self._closed = True  # tasks not yet sent run in the caller
                    self._changed.notify_all()
                return
            with self._changed:
                task._answered(ok, value)
                self._changed.notify_all()


def _serve(tasks: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: run each ``(function, arguments)`` read from ``tasks``, write ``(ok, value)``."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)
    while True:
        try:
            fn, args = pickle.load(tasks)
        except EOFError:
            return
        try:
            answer = (True, fn(*args))
        except Exception as error:  # noqa: BLE001 - every task error goes back to the caller, raised there
            answer = (False, error)
        try:
            data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # noqa: BLE001 - an unpicklable value or error is reported by name
            data = pickle.dumps((False, RuntimeError(f"{getattr(fn, '__name__', fn)}: its result does not "
                                                     f"pickle: {type(error).__name__}: {error}")))
        answers.write(data)
        answers.flush()


if __name__ == "__main__":
    # Answers go on the original stdout; anything a library prints goes to stderr, not into the stream.
    answer_stream = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s (background): %(message)s")
    _serve(sys.stdin.buffer, answer_stream)
