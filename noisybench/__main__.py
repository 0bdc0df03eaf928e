"""``python -m noisybench``: see :mod:`noisybench.cli`."""

from noisybench.cli import main

if __name__ == "__main__":
    main()
