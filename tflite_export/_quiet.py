"""`quiet()`: TensorFlow's, the converter's and LiteRT's logs go to a file, not the console.

The TFLite converter logs from C++ (MLIR passes, SavedModel loading) straight to
file descriptor 2, and TensorFlow, absl and LiteRT add their own lines; an export
would bury its result under them. Inside `quiet()` file descriptors 1 and 2,
`sys.stdout` / `sys.stderr` and the `tensorflow` and `absl` Python loggers all
write to one temporary file. `tail()` reads it back, so a failed conversion can
carry the converter's last lines in its error. Records that tfcompress's or
tflite_export's own code logs through those loggers are kept and logged again
when the block ends: they are ours to show.

The redirection is process-wide: output of other threads during the block is
captured too. This module imports nothing heavy, so `inspect` stays fast.
"""

import contextlib
import io
import logging
import os
import sys
import tempfile

_DIVERTED_LOGGERS = ("tensorflow", "absl")
_OWN_PACKAGES = tuple(
    os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), package) + os.sep
    for package in ("tflite_export", "tfcompress")
)
_active = None


def _flush_c_stdio():
    """Flushes C `stdout`/`stderr` buffers, so C++ lines land in the file they were meant for."""
    try:
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no libc symbols (e.g. Windows): nothing to flush
        pass


def _flush_python_streams():
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


class _Divert(logging.Filter):
    """Writes a logger's records to the capture file; keeps our own packages' records for later."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream
        self.own_records = []
        self.formatter = logging.Formatter("%(levelname)s %(name)s %(filename)s:%(lineno)d] %(message)s")

    def filter(self, record):
        if os.path.abspath(record.pathname).startswith(_OWN_PACKAGES):
            self.own_records.append(record)
        else:
            try:
                self.stream.write(self.formatter.format(record) + "\n")
            except (OSError, ValueError):
                pass
        return False


class CapturedLog:
    """The log captured by one `quiet()` block (empty when the block was verbose)."""

    def __init__(self, fd=None):
        self.fd = fd  # the log file, open for reading and appending; None when nothing is captured

    def mark(self):
        """The current end of the log: pass it to `tail(since=...)` to read what came after."""
        if self.fd is None:
            return 0
        _flush_python_streams()
        _flush_c_stdio()
        return os.fstat(self.fd).st_size

    def text(self, since=0):
        """Everything captured after byte offset `since`."""
        if self.fd is None:
            return ""
        end = self.mark()
        chunks = []
        while since < end:
            if hasattr(os, "pread"):
                chunk = os.pread(self.fd, end - since, since)
            else:  # Windows: seeking is harmless, every write appends (O_APPEND)
                os.lseek(self.fd, since, os.SEEK_SET)
                chunk = os.read(self.fd, end - since)
            if not chunk:
                break
            chunks.append(chunk)
            since += len(chunk)
        return b"".join(chunks).decode("utf-8", errors="replace")

    def tail(self, lines=40, since=0):
        """The last `lines` non-empty lines captured after `since`, as one string."""
        kept = [line for line in self.text(since).splitlines() if line.strip()]
        return "\n".join(kept[-lines:])


@contextlib.contextmanager
def quiet(verbose=False):
    """Sends TensorFlow/converter/absl/LiteRT output to a temporary file for the block.

    Nested blocks do what the outermost one does, and share its file.

    Arguments:
        verbose: when True, nothing is redirected and the logs reach the console.

    Yields:
        A `CapturedLog` (`tail()` is empty when verbose).

    Example:

    ```python
    with quiet() as log:
        start = log.mark()
        content = converter.convert()
    ```
    """
    global _active
    if _active is not None:
        yield _active
        return
    if verbose:
        _active = CapturedLog()  # nested blocks (a conversion inside an export) stay verbose too
        try:
            yield _active
        finally:
            _active = None
        return
    handle, path = tempfile.mkstemp(prefix="tflite_export_", suffix=".log")
    os.close(handle)
    # O_APPEND: every writer (C++, Python, loggers) appends, so reading the log never moves a write.
    log_fd = os.open(path, os.O_RDWR | os.O_APPEND)
    try:
        os.unlink(path)  # POSIX keeps the open file; nothing is left behind even if the process is killed
        path = None
    except OSError:  # Windows cannot remove an open file: removed when the block ends
        pass
    stream = io.TextIOWrapper(os.fdopen(os.dup(log_fd), "wb"), encoding="utf-8", errors="replace",
                              line_buffering=True)
    divert = _Divert(stream)
    loggers = [logging.getLogger(name) for name in _DIVERTED_LOGGERS]
    _flush_python_streams()
    _flush_c_stdio()
    saved_fds = {}
    try:
        for fd in (1, 2):
            saved_fds[fd] = os.dup(fd)
    except OSError:  # no real descriptors (an embedding host): Python-level capture only
        for saved in saved_fds.values():
            os.close(saved)
        saved_fds = {}
    saved_streams = sys.stdout, sys.stderr
    # absl's logging calls logging.basicConfig() on first use, with a handler on our capture stream.
    root_handlers = list(logging.getLogger().handlers)
    captured = CapturedLog(log_fd)
    try:
        for fd in saved_fds:
            os.dup2(log_fd, fd)
        sys.stdout = sys.stderr = stream
        for logger in loggers:
            logger.addFilter(divert)
        _active = captured
        yield captured
    finally:
        _active = None
        for logger in loggers:
            logger.removeFilter(divert)
        stream.flush()
        _flush_c_stdio()
        for handler in [h for h in logging.getLogger().handlers if h not in root_handlers]:
            logging.getLogger().removeHandler(handler)
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in saved_fds.items():
            os.dup2(saved, fd)
            os.close(saved)
        stream.close()
        captured.fd = None
        os.close(log_fd)
        if path is not None:
            try:
                os.unlink(path)
            except OSError:
                pass
        for record in divert.own_records:
            logging.getLogger(record.name).handle(record)
