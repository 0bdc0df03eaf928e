"""User-facing errors: one line that names the bad value and says what to do."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(ValueError):
    """A problem with the user's input (config, files, data), not a bug in noisybench.

    The command line prints ``noisybench: error: <message>`` on one line and exits with
    status 2, without a traceback. Messages are one sentence: what is wrong, then what to do.
    """
