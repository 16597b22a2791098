"""One shape for every failure a user can fix: `WHERE: what is wrong; what to do`, exit 1, no traceback.

`UserError` carries the location (file, line, field) and the advice. `describe` turns the other
exceptions a user's input or machine causes (missing files, permissions, a full disk, undecodable
bytes, bad JSON, CUDA out of memory) into the same one-line form. `run_cli` wraps a command: known
failures print that line to stderr and exit 1; anything else is a bug in sprout and keeps its
traceback. `--debug` (or SPROUT_DEBUG=1) shows the traceback for every failure.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_ERROR = 1  # argparse keeps 2 for usage errors
EXIT_INTERRUPTED = 130  # the shell's code for SIGINT
DEBUG_ENV = "SPROUT_DEBUG"


class UserError(ValueError):
    """A failure the user can fix: where (file, line, field), what is wrong, what to do about it."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        advice: str | None = None,
    ) -> None:
        self.problem, self.field, self.advice = problem, field, advice
        self.file = str(file) if file is not None else None
        self.line = line
        super().__init__(self.located())

    def where(self) -> str:
        if self.file is None:
            return ""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def located(self) -> str:
        """`FILE:LINE: field: problem` (what str() gives, and what tests and scripts match)."""
        text = f"{self.field}: {self.problem}" if self.field else self.problem
        return f"{self.where()}: {text}" if self.where() else text

    def message(self) -> str:
        """The located problem plus the advice: the line the command prints."""
        return f"{self.located()}; {self.advice}" if self.advice else self.located()


def decode_error(exc: UnicodeDecodeError, file: str | Path, line: int | None, line_start: int) -> UserError:
    """Undecodable bytes as FILE:LINE with the byte offset in the file (line_start: offset of the line)."""
    offset = line_start + exc.start
    return UserError(
        f"byte 0x{exc.object[exc.start]:02x} at byte offset {offset} is not valid {exc.encoding.upper()} "
        f"({exc.reason})",
        file=file,
        line=line,
        advice="save the file as UTF-8 text (is it binary or in another encoding?)",
    )


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """A whole text file; undecodable bytes raise a UserError with the line and byte offset."""
    data = Path(path).read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise decode_error(e, path, line, 0) from None


def _os_message(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else ""
    if isinstance(exc, FileNotFoundError):
        # Our own raises put the whole message in args[0]; the OS's carry a filename.
        return f"{name}: no such file or folder" if name else str(exc)
    if isinstance(exc, PermissionError):
        return f"{name}: permission denied; check the owner and mode of this path (ls -l)"
    if exc.errno == errno.ENOSPC:
        return (
            f"{name or 'disk'}: no space left on the device; free some space (old checkpoints and runs) "
            "and run the same command again (training: add --resume)"
        )
    if exc.errno == errno.EDQUOT:
        return f"{name or 'disk'}: disk quota exceeded; free some space and run again"
    if exc.errno == errno.EROFS:
        return f"{name}: the file system is read-only; choose another --out"
    if exc.errno == errno.EISDIR:
        return f"{name}: is a folder, a file was expected"
    if exc.errno == errno.ENOTDIR:
        return f"{name}: a part of this path is a file, not a folder"
    # Any other failure on a named file (an I/O error, a stale network mount) is the machine's, not a bug.
    return f"{name}: {exc.strerror}" if name and exc.strerror else ""


def describe(exc: BaseException) -> str | None:
    """The one-line message for an exception a user can act on, or None for a bug in sprout."""
    if isinstance(exc, UserError):
        return exc.message()
    if isinstance(exc, UnicodeDecodeError):
        return (
            f"byte 0x{exc.object[exc.start]:02x} at byte offset {exc.start} is not valid "
            f"{exc.encoding.upper()} ({exc.reason}); save the input as UTF-8 text"
        )
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
    if isinstance(exc, OSError):
        return _os_message(exc) or None
    if _is_cuda_oom(exc):
        from .train.guards import oom_advice  # imported late: guards pulls in torch

        return oom_advice()
    return None


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_cli(fn: Callable[[list[str]], None], argv: Sequence[str]) -> int:
    """Run `fn(argv)` (argv without --debug) and return the process exit code.

    Known failures and `SystemExit("message")` print `sprout: error: MESSAGE` to stderr and return 1;
    Ctrl-C returns 130. `SystemExit(n)` passes through (argparse has already printed its message).
    """
    debug = debug_requested(argv)
    args = [a for a in argv if a != "--debug"]
    try:
        fn(args)
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            raise  # argparse and sys.exit(n): their message, if any, is already printed
        if debug:
            traceback.print_exc()
        print(f"sprout: error: {exc.code}", file=sys.stderr)  # raise SystemExit("message") in older code
        return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("sprout: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every exception is either described or re-raised
        message = describe(exc)
        if message is None or debug:
            if message is None:
                print("sprout: internal error (a bug in sprout; please report it with this traceback)", file=sys.stderr)
            traceback.print_exc()
        if message is not None:
            print(f"sprout: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    return 0
