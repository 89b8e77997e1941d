"""Worker processes forked from one that imported tiercache already.

A crash test restarts a worker hundreds of times; a fresh interpreter
spends most of a restart importing (0.3-0.5 s on this machine). The
zygote imports once, then forks each worker on demand: every worker is
still a new OS process that runs the given source as ``__main__`` with
its own ``sys.argv``, writes its stdout to a file of its own (each
``flush()`` one ``write(2)``, so what it printed before a SIGKILL is all
there), and is killed by PID. The zygote itself starts no threads and no
cache, so the fork copies nothing a worker could share.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

ZYGOTE = r"""
import json, os, signal, sys
import tiercache, tiercache.testing  # the imports every worker would pay for
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd, path in ((1, job["out"]), (2, job["err"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.argv = ["-c", *job["argv"]]
        code = 0
        try:
            exec(compile(job["source"], "<worker>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.stdout.write(f"{pid}\n")
    sys.stdout.flush()
"""


class Worker:
    """One forked worker: its PID and what it printed so far."""

    def __init__(self, pid: int, out: Path, err: Path) -> None:
        self.pid = pid
        self.out = out
        self.err = err

    def lines(self) -> list[str]:
        text = self.out.read_text() if self.out.exists() else ""
        # A line is whole once its newline is written.
        return text.split("\n")[:-1]

    def first_line(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if lines:
                return lines[0]
            if not self.alive():
                raise AssertionError(f"worker exited before printing:\n{self.err.read_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker printed nothing in {timeout} s")
            time.sleep(0.002)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self, timeout: float = 10.0) -> None:
        """SIGKILL, and wait until it is gone (the kernel reaps it)."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.pid} still alive after SIGKILL")
            time.sleep(0.001)


class Zygote:
    """``with Zygote(tmp_path) as z: w = z.spawn(SOURCE, [args...])``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

    def spawn(self, source: str, argv: list[str]) -> Worker:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.count += 1
        out = self.directory / f"worker-{self.count}.out"
        err = self.directory / f"worker-{self.count}.err"
        job = {"source": source, "argv": argv, "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        pid = self.proc.stdout.readline()
        assert pid, "the zygote died"
        return Worker(int(pid), out, err)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
