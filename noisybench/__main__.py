"""``python -m noisybench``: see :mod:`noisybench.cli`."""

import sys

try:
    from noisybench.cli import main
except KeyboardInterrupt:  # Ctrl-C while torch / Hydra are being imported: nothing ran yet
    print(
        "noisybench: error: interrupted by SIGINT while starting; nothing was written",
        file=sys.stderr,
    )
    sys.exit(130)

if __name__ == "__main__":
    main()
