"""The one base class of errors caused by the user's input (no torch, no third-party imports).

Every command line of the package (``train.py``, ``evaluate.py``, ``python -m llmva_gebc.<tool>``)
runs through :func:`llmva_gebc.cli.run`, which turns a :class:`UserError` (or a
``FileNotFoundError``) into one line ``error: <message>`` on stderr and exit status 2. The
package's specific errors (``ConfigError``, ``DataError``, ``CaptionError``, ``SubmissionError``,
``MetricsError``, ``CheckpointMismatchError``, ``VideoDecodeError``, ``RunDirError``) derive from it.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user: a config key, a file, a flag. The message names the file or key and,
    where there is one, the fix; it must make sense on its own, without a traceback."""


class RunDirError(UserError):
    """A run directory that would be reused by accident (a new run into a non-empty directory)."""


def one_line(err: BaseException) -> str:
    """``err``'s message on one line: inner line breaks become ``"; "`` (indentation dropped)."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts) or type(err).__name__


__all__ = ["UserError", "RunDirError", "one_line"]
