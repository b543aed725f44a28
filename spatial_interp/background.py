"""Independent work in a second process while this one computes: a second core, used.

``reproduce`` measures the route verdict of every shipped organism beside the model under study. That
panel needs nothing from the run but its settings, so it goes to a second process at the start and is
collected when the report needs it; on a 2-core machine it costs no wall time beyond the run's own.

The worker is a forked copy of this process on Linux (it starts with every module already imported) and
``python -m spatial_interp.background`` elsewhere; either way it is fed tasks on a pipe, one at a time
in submission order, and answers on another, one JSON line each: a task names a module-level function
(``"module:qualname"``) and gives JSON arguments, and its result must be JSON too (numpy scalars and
arrays become numbers and lists); nothing is ever unpickled. A task's result is the same JSON round trip
wherever it runs. A task the worker has not started when its result is asked for runs in the caller
instead, so the two processes share the work however long each task takes. It is not a
``multiprocessing`` child, so it never re-imports the caller's ``__main__``: a user's script without an
``if __name__ == "__main__":`` guard works as it is (with ``spawn`` it would re-run itself in the child
and leave the task waiting forever), and a forked worker never returns into the caller's code. The
worker gives torch one thread, and while it is alive the caller's torch gives up one of its threads
(restored when the block exits), so the two processes do not oversubscribe the cores. It is killed when
the ``with`` block exits, so an error or Ctrl-C in the caller leaves no process behind; if the worker
dies, the task it held raises :class:`WorkerDiedError` and the others run in the caller.
``enabled=False`` runs each task in the caller, lazily, when its result is asked for: the same calls,
for tests and debugging.

Example:
    >>> import operator
    >>> with Background(enabled=False) as background:
    ...     task = background.submit(operator.add, 2, 3)
    ...     task.result()
    5
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import signal
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


class BackgroundTaskError(RuntimeError):
    """A task failed in the worker with an error that cannot be rebuilt here (its type and message)."""


def _plain(value: Any) -> Any:
    """JSON's ``default``: numpy numbers and arrays as Python ones; anything else is refused."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"a background task's arguments and result must be JSON (numbers, strings, lists, dicts); "
                    f"got a {type(value).__name__}")


def _round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_plain))


def _name(fn: Callable[..., Any]) -> str:
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or "<" in qualname or module == "__main__":
        raise TypeError(f"a background task must be a module-level function of an importable module, got {fn!r}")
    return f"{module}:{qualname}"


def _function(name: str) -> Any:
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _error_record(error: BaseException) -> dict[str, str]:
    return {"module": type(error).__module__, "type": type(error).__qualname__, "message": str(error)}


def _rebuilt(record: dict[str, str]) -> Exception:
    """The worker's exception as the same type with its message, where that type takes a message alone."""
    try:
        kind = _function(f"{record['module']}:{record['type']}")
        if isinstance(kind, type) and issubclass(kind, Exception):
            return kind(record["message"])
    except Exception:  # noqa: BLE001, S110 - any failure to rebuild falls back to the generic error below
        pass
    return BackgroundTaskError(f"{record['module']}.{record['type']}: {record['message']}")


class Task(Generic[T]):
    """A submitted call. ``result()`` waits for the worker's answer, or, if the worker has not started
    it yet, runs it here (the caller would otherwise sit idle): work goes to whichever process is free."""

    def __init__(self, owner: Background | None, fn: Callable[..., T], args: tuple) -> None:
        self._owner, self._fn, self._args = owner, fn, args
        self.state = "pending" if owner is not None else "local"  # pending, sent, answered, local, cancelled
        self.ran_here = False
        self._done, self._ok, self._value = False, True, None
        self._line = ""

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
            self._value, self._ok, self._done = _round_trip(self._fn(*self._args)), True, True
        if not self._ok:
            raise self._value
        return self._value  # type: ignore[return-value]

    def _answered(self, ok: bool, value: Any) -> None:
        self._ok, self._value, self._done, self.state = ok, value, True, "answered"


class Background:
    """One worker process for module-level functions with JSON arguments and results."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._process: subprocess.Popen | _ForkedWorker | None = None
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
        line = json.dumps({"function": _name(fn), "args": list(args)}, default=_plain)  # refused here if not JSON
        if not self.enabled:
            return Task(None, fn, args)
        task = Task(self, fn, args)
        task._line = line
        with self._changed:
            self._pending.append(task)
            self._changed.notify_all()
        if self._process is None:
            self._start()
        return task

    def _start(self) -> None:
        import torch

        if FORK:
            log.debug("forking a background worker process")
            self._process = _ForkedWorker()
        else:
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
                process.stdin.write(task._line.encode() + b"\n")
                process.stdin.flush()
                reply = process.stdout.readline()
                if not reply:
                    raise EOFError("no answer")
                answer = json.loads(reply)
            except (EOFError, OSError, ValueError) as error:
                died = WorkerDiedError(f"the background worker process ended (exit code {process.wait()}) "
                                       "before answering; its error is above")
                died.__cause__ = error
                with self._changed:
                    task._answered(False, died)
                    self._closed = True  # tasks not yet sent run in the caller
                    self._changed.notify_all()
                return
            ok = answer["ok"]
            with self._changed:
                task._answered(ok, answer["value"] if ok else _rebuilt(answer["error"]))
                self._changed.notify_all()


FORK = sys.platform == "linux"
"""Fork the worker (Linux): it starts with every module this process imported, where a fresh
interpreter spends seconds importing torch and transformers again (measured: 6 s of the main job's
CPU on 2 cores). Elsewhere (macOS forbids forking a process that has used Objective-C or
Accelerate) the worker is ``python -m spatial_interp.background``."""


class _ForkedWorker:
    """A forked copy of this process serving :func:`_serve` on two pipes (``subprocess.Popen``'s parts used here).

    The child never returns into the caller's code: it serves until its task pipe closes or it is killed,
    then leaves with ``os._exit`` (no ``atexit`` handlers, no second flush of the caller's buffers).
    """

    def __init__(self) -> None:
        task_read, task_write = os.pipe()
        answer_read, answer_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(task_write)
                os.close(answer_read)
                _quiet_worker()
                _serve(os.fdopen(task_read, "rb"), os.fdopen(answer_write, "wb"))
                code = 0
            finally:
                os._exit(code)
        os.close(task_read)
        os.close(answer_write)
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = os.fdopen(task_write, "wb")
        self.stdout = os.fdopen(answer_read, "rb")

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # it has already left
                os.kill(self.pid, signal.SIGKILL)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _quiet_worker() -> None:
    """In the worker: anything a library prints goes to stderr (never into the answer stream), and only
    warnings are logged, marked as the worker's."""
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for name in list(logging.root.manager.loggerDict):
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s (background): %(message)s")


def _serve(tasks: BinaryIO, answers: BinaryIO) -> None:
    """The worker's loop: for each task line read from ``tasks``, one answer line on ``answers``."""
    import torch

    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        pass
    else:
        threadpool_limits(1)
    for line in tasks:
        try:
            task = json.loads(line)
            data = json.dumps({"ok": True, "value": _function(task["function"])(*task["args"])}, default=_plain)
        except Exception as error:  # noqa: BLE001 - every task error goes back to the caller, raised there
            data = json.dumps({"ok": False, "error": _error_record(error)})
        answers.write(data.encode() + b"\n")
        answers.flush()


if __name__ == "__main__":
    answer_stream = os.fdopen(os.dup(1), "wb")  # answers go on the original stdout
    _quiet_worker()
    _serve(sys.stdin.buffer, answer_stream)
