"""Atomic file writes: a reader never sees a half-written flatbuffer."""

import os
import tempfile


def atomic_write_bytes(path, data):
    """Writes `data` to `path` so that `path` is either the old file or the whole new one.

    The bytes go to a temporary file in the same directory (so `os.replace` is a
    rename on one file system), are flushed to disk, and then replace `path`.
    On any failure the temporary file is removed and `path` is untouched.

    Arguments:
        path: destination file path (str or `os.PathLike`).
        data: the bytes to write.

    Returns:
        The absolute destination path as a str.

    Example:

    >>> atomic_write_bytes("model.tflite", flatbuffer_bytes)
    '/home/me/model.tflite'
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Cannot write {path}: the directory {directory} does not exist. "
            "Create it first (os.makedirs(dir, exist_ok=True)) or choose another path."
        )
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
