"""What every command line of the package shares (stdlib only at import: score mode stays torch-free).

* :func:`run` — the wrapper around each ``main(argv)``: a :class:`~llmva_gebc.errors.UserError` or
  ``FileNotFoundError`` becomes one line ``error: <message>`` on stderr and exit status 2, with no
  traceback unless ``--debug`` is given or ``LLMVA_DEBUG=1`` is set.
* :func:`add_debug_arg`, :func:`setup_logging` — ``--debug`` (also DEBUG-level logs, and the captured
  output of external tools), plain ``LEVEL name: message`` lines, each distinct warning once per process.
* :func:`quiet_libraries` — transformers' loading bars and info chatter off (on again with ``--debug``).
* :func:`captured_stderr` — run an external tool (Java's PTB tokenizer) with its stderr captured: the text
  is logged at DEBUG level, or at ERROR level when the block fails.
* :func:`progress_enabled` — progress bars only on a terminal; plain periodic log lines otherwise.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import traceback
from typing import Callable, Iterator, List, Optional, Sequence

from llmva_gebc.errors import UserError, one_line
from llmva_gebc.fileio import OutputWriteError

DEBUG_ENV = "LLMVA_DEBUG"
# User errors: ours, a missing path, a file where a folder is expected (or the reverse), a file the user
# may not read (chmod 000), an output that cannot be written (disk full, read-only, ...).
USER_ERRORS = (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, OutputWriteError)


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    """``--debug`` among ``argv`` (default ``sys.argv``) or ``LLMVA_DEBUG`` set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def run(main: Callable[[List[str]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)``; a user error prints ``error: <one line>`` to stderr and returns 2.

    Other exceptions (bugs) propagate with their traceback. ``--debug``/``LLMVA_DEBUG=1`` prints the
    traceback of user errors too.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = main(argv)
    except USER_ERRORS as e:
        if debug_requested(argv):
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2
    return 0 if rc is None else int(rc)


def add_debug_arg(parser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help=f"show tracebacks of user errors and debug logs (or set {DEBUG_ENV}=1)")


class _OncePerProcess(logging.Filter):
    """Let each distinct WARNING (logger + message) through once; other levels always pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging(debug: bool = False, level: int = logging.INFO, fmt: str = "%(levelname)s %(name)s: %(message)s",
                  stream=None) -> None:
    """Root logging for a CLI: ``level`` (DEBUG with ``debug``), one line per record, and each distinct
    warning once per process (a validation that repeats every epoch warns once)."""
    root = logging.getLogger()
    if not root.handlers:  # else a host (pytest, an application) has set logging up: leave it alone
        logging.basicConfig(level=logging.DEBUG if debug else level, format=fmt, stream=stream)
        for h in root.handlers:
            h.addFilter(_OncePerProcess())
    if debug:  # third-party debug logs are noise even then
        for name in ("urllib3", "filelock", "PIL", "matplotlib", "fsspec", "httpx", "asyncio"):
            logging.getLogger(name).setLevel(logging.INFO)
    quiet_libraries(debug)


def quiet_libraries(debug: bool = False) -> None:
    """transformers: no weight-loading progress bars, warnings and errors only (unless ``debug``)."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if not debug and not progress_enabled():  # other libraries' own tqdm bars (e.g. GGUF de-quantizing)
        os.environ.setdefault("TQDM_DISABLE", "1")
    if "transformers" not in sys.modules and not debug:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        return
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    if debug:
        hf_logging.set_verbosity_info()
        hf_logging.enable_progress_bar()
    else:
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def progress_enabled(stream=None) -> bool:
    """Progress bars only when ``stream`` (default stderr) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def captured_stderr(tool: str, logger: Optional[logging.Logger] = None) -> Iterator[None]:
    """Capture what child processes (and this process) write to file descriptor 2 inside the block.

    The text is logged at DEBUG level after a successful block, at ERROR level when the block raises
    (then the exception propagates). Used for Java's PTB tokenizer, which reports
    "PTBTokenizer tokenized ..." and "Untokenizable ..." on stderr.
    """
    logger = logger or logging.getLogger("llmva_gebc")
    fd = 2  # what child processes inherit, whatever object sys.stderr is
    sys.stderr.flush()
    try:
        saved = os.dup(fd)
    except OSError:  # no descriptor 2 (a detached process): nothing to capture
        yield
        return
    failed = False
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), fd)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace").strip()
            if text:
                logger.log(logging.ERROR if failed else logging.DEBUG, "%s said:\n%s", tool, text)


__all__ = ["run", "add_debug_arg", "setup_logging", "quiet_libraries", "progress_enabled", "captured_stderr",
           "debug_requested", "USER_ERRORS", "DEBUG_ENV"]
