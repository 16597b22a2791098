"""sprout/errors.py: which exceptions become one line (and which stay bugs with a traceback)."""

from __future__ import annotations

import errno
import json

import pytest

from sprout.errors import UserError, describe, read_text, run_cli


@pytest.mark.parametrize(
    "exc,message",
    [
        (
            UserError("text is empty", file="a.jsonl", line=3, field="text", advice="fill it"),
            "a.jsonl:3: text: text is empty; fill it",
        ),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.json"), "x.json: no such file or folder"),
        (
            PermissionError(errno.EACCES, "Permission denied", "/root/x"),
            "/root/x: permission denied; check the owner and mode of this path (ls -l)",
        ),
        (
            OSError(errno.ENOSPC, "No space left on device", "runs/a/model.safetensors"),
            "runs/a/model.safetensors: no space left on the device; free some space (old checkpoints and runs) and run "
            "the same command again (training: add --resume)",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/ro/out"),
            "/ro/out: the file system is read-only; choose another --out",
        ),
        (OSError(errno.EIO, "Input/output error", "/mnt/data.bin"), "/mnt/data.bin: Input/output error"),
        (
            UnicodeDecodeError("utf-8", b"ok \xff", 3, 4, "invalid start byte"),
            "byte 0xff at byte offset 3 is not valid UTF-8 (invalid start byte); save the input as UTF-8 text",
        ),
        (json.JSONDecodeError("Expecting value", "\n x", 2), "invalid JSON at line 2 column 2: Expecting value"),
    ],
)
def test_known_failures_are_one_line(exc: BaseException, message: str) -> None:
    assert describe(exc) == message


@pytest.mark.parametrize("exc", [KeyError("x"), TypeError("bad operand"), OSError("no errno, no file")])
def test_bugs_stay_bugs(exc: BaseException) -> None:
    assert describe(exc) is None


def test_run_cli_exit_codes(capsys) -> None:
    def fail(exc):
        def fn(argv):
            raise exc

        return fn

    assert run_cli(lambda argv: None, []) == 0
    assert run_cli(fail(UserError("broken", file="f")), []) == 1
    assert capsys.readouterr().err == "sprout: error: f: broken\n"
    assert run_cli(fail(SystemExit("old style message")), []) == 1
    assert capsys.readouterr().err == "sprout: error: old style message\n"
    assert run_cli(fail(KeyboardInterrupt()), []) == 130
    assert run_cli(fail(KeyError("bug")), []) == 1
    err = capsys.readouterr().err
    assert err.startswith("sprout: interrupted\nsprout: internal error (a bug in sprout") and "KeyError: 'bug'" in err
    with pytest.raises(SystemExit) as e:  # argparse's exits pass through with their code
        run_cli(fail(SystemExit(2)), [])
    assert e.value.code == 2


def test_read_text_reports_line_and_offset(tmp_path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes(b"h\xc3\xa9llo\nw\xc3\xb6rld \x80\n")  # 0x80 cannot start a UTF-8 character
    with pytest.raises(UserError) as e:
        read_text(path)
    assert e.value.located() == f"{path}:2: byte 0x80 at byte offset 14 is not valid UTF-8 (invalid start byte)"
