"""Loading never unpickles: a model folder whose weights are a pickle is refused with a clear
message and the pickle's payload never runs (a checkpoint's pickle: see test_guards.py)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from conftest import save_tiny_chat_model

from sprout.cli import main
from sprout.errors import UserError
from sprout.models import load_model


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_folder(tmp_path: Path) -> tuple[Path, Path]:
    folder = tmp_path / "model"
    save_tiny_chat_model(folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    return folder, marker


ADVICE = (
    "sprout reads only model.safetensors; convert weights you trust with transformers "
    "(model.save_pretrained(dir, safe_serialization=True))"
)


def test_pickle_weights_are_refused_and_never_run(tmp_path: Path) -> None:
    folder, marker = _pickle_folder(tmp_path)
    with pytest.raises(UserError) as e:
        load_model(folder)
    assert e.value.message() == (
        f"{folder}: refusing to load pytorch_model.bin: it is a pickle file, and unpickling can run any code; {ADVICE}"
    )
    assert not marker.exists()


def test_cli_refuses_pickle_weights_in_one_line(tmp_path: Path, capsys) -> None:
    folder, marker = _pickle_folder(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["eval", "--model", str(folder), "--tasks", "--device", "cpu", "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert err == (
        f"sprout: error: {folder}: refusing to load pytorch_model.bin: it is a pickle file, and "
        f"unpickling can run any code; {ADVICE}\n"
    )
    assert not marker.exists()


def test_safetensors_wins_and_the_pickle_beside_it_is_never_opened(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_tiny_chat_model(folder)
    marker = tmp_path / "pwned"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(marker)))
    load_model(folder)
    assert not marker.exists()


def test_broken_config_is_reported_with_its_file(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    save_tiny_chat_model(folder)
    (folder / "config.json").write_text('{"model_type": "qwen3",')
    with pytest.raises(UserError) as e:
        load_model(folder)
    assert e.value.located().startswith(f"{folder / 'config.json'}: not valid JSON (Expecting property name")
