"""Atomic file writes: a reader never sees a half-written flatbuffer."""

import os
import tempfile


def _temporary_file(directory, name):
    return tempfile.mkstemp(prefix=".tmp-", suffix="-" + name, dir=directory)


def _path_error(error, message):
    """An OSError of the same kind (PermissionError, ...) whose message names the path and the fix."""
    return OSError(error.errno, message) if error.errno is not None else OSError(message)


def check_writable(path):
    """Raises an `OSError` naming `path` and the fix unless a file can be written there.

    Checked before any expensive work, so a bad output path fails in a second,
    not after conversion. Probes with a temporary file, which it removes: as
    root, permission bits say nothing, but a read-only or virtual file system
    still refuses.

    Arguments:
        path: destination file path (str or `os.PathLike`).

    Returns:
        The absolute destination path as a str.

    Raises:
        IsADirectoryError: `path` is a directory.
        NotADirectoryError: a parent of `path` is a file.
        FileNotFoundError: the parent directory does not exist.
        PermissionError / OSError: the directory refuses new files.
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write {path}: it is a directory. Pass a file path such as "
                                f"{os.path.join(path, 'model.tflite')}.")
    ancestor = directory
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise NotADirectoryError(
            f"Cannot write {path}: {ancestor} is a file, not a directory. Choose an output path "
            f"inside a directory, e.g. {os.path.join(os.path.dirname(ancestor), os.path.basename(path))}."
        )
    if ancestor != directory:
        raise FileNotFoundError(f"Cannot write {path}: directory {directory} does not exist. "
                                "Create it first (os.makedirs(dir, exist_ok=True)) or choose another path.")
    try:
        fd, probe = _temporary_file(directory, os.path.basename(path))
    except OSError as error:
        raise _path_error(error, f"Cannot write {path}: the directory {directory} does not accept new "
                          f"files ({error.strerror}). Choose a writable directory for the output.") from error
    os.close(fd)
    os.remove(probe)
    return path


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

    Raises:
        OSError: `path` cannot be written (see `check_writable`), or writing failed
            (e.g. the disk is full); the message names `path`.

    Example:

    >>> atomic_write_bytes("model.tflite", flatbuffer_bytes)
    '/home/me/model.tflite'
    """
    path = check_writable(path)
    tmp = None
    try:
        fd, tmp = _temporary_file(os.path.dirname(path), os.path.basename(path))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(error, OSError):
            raise _path_error(error, f"Cannot write {path} ({error.strerror or error}); it was left as it "
                              "was. Free space or choose another path, then write it again.") from error
        raise
    return path
