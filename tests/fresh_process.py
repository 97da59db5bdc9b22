"""Runs a test body in a fresh Python interpreter and returns the JSON it prints.

For what must happen before TensorFlow initializes (logical CPU devices) or is
process-wide and irreversible (op determinism): pytest's own process has
initialized TensorFlow already. The script prints one line
`RESULT <json>`; `TESTS_DIR` in it becomes the tests folder, so it can import
the models in helpers.py.
"""

import json
import os
import subprocess
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def start(script, **substitutions):
    """Starts `script` with `TESTS_DIR` and each `NAME=value` of `substitutions` filled in."""
    script = script.replace("TESTS_DIR", repr(TESTS_DIR))
    for name, value in substitutions.items():
        script = script.replace(name, str(value))
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=os.path.dirname(TESTS_DIR),
    )


def result(process, timeout):
    """Waits for `process` and returns its `RESULT` JSON; fails the test with its stderr otherwise."""
    stdout, stderr = process.communicate(timeout=timeout)
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert process.returncode == 0 and lines, stderr[-4000:]
    return json.loads(lines[-1][len("RESULT "):])


def run(script, timeout=400, **substitutions):
    """`start` then `result`."""
    return result(start(script, **substitutions), timeout)
