"""``python -m noisybench`` and the ``noisybench`` command: see :mod:`noisybench.cli`.

The command line is imported inside :func:`entry`, so that a Ctrl-C while torch and Hydra are
being imported (seconds) is one line, not a traceback."""

import sys


def entry() -> None:
    """Import the command line and run it."""
    try:
        from noisybench.cli import main
    except KeyboardInterrupt:  # nothing ran yet, nothing was written
        print("noisybench: error: interrupted by SIGINT while starting", file=sys.stderr)
        sys.exit(130)
    main()


if __name__ == "__main__":
    entry()
