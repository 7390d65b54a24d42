"""The journal's folding process: it writes the journal's tables from its log while the
broker runs, so that none of that work (Python holding the GIL, SQLite's CPU) is in the
broker's process.

Seen from the broker, :class:`FoldProcess` starts it (``python -m remus.server.journal_fold``)
and talks to it over its stdin and stdout, one line each way:

- ``fold N``: fold the log rows up to row N into the tables (the process reads them from the
  log file itself; nothing but the line crosses the pipe);
- ``folded N``: done, the tables (and their ``meta.folded``) hold them;
- ``error TEXT``: a fold failed; the process exits, and the broker stops at its next write;
- end of stdin: the broker is done (or gone): the process exits. On Linux it also dies with
  the broker thread that started it (``PR_SET_PDEATHSIG``), so that a SIGKILLed broker does
  not leave it holding the journal's lock when the broker is started again.

It opens the journal like any :class:`~remus.server.journal.Journal` (taking the journal
file's exclusive lock, which the broker released for it), so a log the broker wrote since its
last fold is folded first.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from remus.errors import RemusError

log = logging.getLogger(__name__)

#: how long the process may take to start and open the journal
START_TIMEOUT = 30.0
#: what the process runs (not ``-m``: the package remus.server imports this module first)
_CHILD = "import sys; from remus.server.journal_fold import main; sys.exit(main(sys.argv[1:]))"


class FoldError(RemusError):
    """The folding process failed, or could not start."""


class FoldProcess:
    """The folding process of the journal at ``path``, owned by the thread that made it (its
    death signal is that thread's exit)."""

    def __init__(self, path: str, synchronous: str, progress_limit: int | None) -> None:
        import remus  # (its folder goes first on the process's path: the same remus)

        root = str(Path(remus.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        args = [path, synchronous, str(progress_limit or 0), str(os.getpid())]
        self._proc = subprocess.Popen(
            # -P: not the working folder first on the path (it may hold another remus)
            [sys.executable, "-P", "-c", _CHILD, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._out = self._proc.stdout.fileno()
        os.set_blocking(self._out, False)
        self._buffer = b""
        self.pid = self._proc.pid
        try:
            words = self._lines(START_TIMEOUT, until=lambda w: w.startswith(b"ready"))
        except FoldError:
            self.stop(1.0)
            raise
        if not words or not words[-1].startswith(b"ready"):
            self.stop(1.0)
            raise FoldError(f"the journal's folding process did not start within {START_TIMEOUT} s")
        #: the last log row the tables held once the process had opened the journal
        self.folded_at_start = int(words[-1].split()[1])

    def fold(self, last: int) -> None:
        """Ask for the log rows up to ``last`` to be folded (the answer comes later)."""
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(b"fold %d\n" % last)
            stdin.flush()
        except OSError as e:
            raise FoldError(f"the journal's folding process is gone: {e}") from None

    def folded(self, wait: float = 0.0) -> int | None:
        """The last row the process said it folded since the previous call (None if none);
        waits up to ``wait`` seconds for one. Raises FoldError if it failed or died."""
        done = None
        for word in self._lines(wait, until=lambda w: w.startswith(b"folded")):
            done = int(word.split()[1])
        return done

    def _lines(self, wait: float, until: object) -> list[bytes]:
        """Every whole line the process wrote so far; waits up to ``wait`` seconds for one
        that ``until`` accepts."""
        deadline = time.monotonic() + wait
        words: list[bytes] = []
        while True:
            try:
                chunk = os.read(self._out, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                try:
                    code = self._proc.wait(1.0)
                except subprocess.TimeoutExpired:
                    code = None
                raise FoldError(
                    f"the journal's folding process exited (code {code}); its error is on "
                    "the broker's stderr"
                )
            if chunk:
                self._buffer += chunk
                *lines, self._buffer = self._buffer.split(b"\n")
                for line in lines:
                    if line.startswith(b"error"):
                        raise FoldError(line[len(b"error ") :].decode(errors="replace"))
                    words.append(line)
            if any(until(w) for w in words):  # type: ignore[operator]
                return words
            left = deadline - time.monotonic()
            if left <= 0:
                return words
            select.select([self._out], [], [], left)

    def stop(self, timeout: float) -> int | None:
        """End of stdin: the process folds nothing more and exits. The last row it said it
        folded (None if none). Kills it if it does not exit within ``timeout``."""
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass
        done = None
        try:
            for word in self._lines(timeout, until=lambda w: False):
                if word.startswith(b"folded"):
                    done = int(word.split()[1])
        except FoldError:
            pass  # (its end of the pipe closed: it exited)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        assert self._proc.stdout is not None
        self._proc.stdout.close()
        return done


def _die_with_parent(parent: int) -> None:
    """Linux: be killed when the broker thread that started this process ends (SIGKILL of
    the broker included), so that no orphan keeps the journal locked."""
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the broker died before the prctl
        os._exit(0)


def main(argv: list[str] | None = None) -> int:
    path, synchronous, limit, parent = argv if argv is not None else sys.argv[1:]
    _die_with_parent(int(parent))
    logging.basicConfig(level=logging.WARNING, format="remus journal fold: %(message)s")
    from remus.server.journal import Journal

    out = sys.stdout.buffer
    try:
        journal = Journal(path, synchronous=synchronous, progress_limit=int(limit) or None)
    except RemusError as e:
        out.write(b"error " + str(e).encode(errors="replace") + b"\n")
        out.flush()
        return 1
    try:
        out.write(b"ready %d\n" % journal.folded)
        out.flush()
        for line in sys.stdin.buffer:
            words = line.split()
            if len(words) == 2 and words[0] == b"fold":
                journal.fold_through(int(words[1]))
                out.write(b"folded %d\n" % journal.folded)
                out.flush()
    except (RemusError, OSError) as e:
        out.write(b"error " + str(e).encode(errors="replace") + b"\n")
        out.flush()
        return 1
    finally:
        journal.close(fold=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
