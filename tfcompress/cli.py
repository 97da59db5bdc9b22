"""The `tfcompress` command line tool (absl flags, like TensorFlow's own tools)."""

import sys

from absl import app, flags

from tfcompress.version import __version__

FLAGS = flags.FLAGS
flags.DEFINE_bool("version", False, "Print the tfcompress version and exit.")

USAGE = f"""tfcompress {__version__}: compress tf_keras models and export them to TFLite.

Usage:
  tfcompress --version
  tfcompress --help
"""


def main(argv):
    if FLAGS.version:
        print(f"tfcompress {__version__}")
        return 0
    if len(argv) > 1:
        print(f"tfcompress: unknown command {argv[1]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    print(USAGE)
    return 0


def run():
    """Console-script entry point."""
    app.run(main)


if __name__ == "__main__":
    run()
