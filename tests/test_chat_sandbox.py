"""A model folder's own chat template is untrusted code: it renders in transformers' sandboxed Jinja
environment (sprout/tokenizer_template.py), so a template that reaches for Python internals is
refused without running, and every template failure reaches the user as one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import save_tiny_chat_model

from sprout.cli import main
from sprout.errors import UserError
from sprout.tokenizer import Tokenizer, default_tokenizer_dir

UNSAFE = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "{{ raise_exception.__globals__['__builtins__']['__import__']('os').system('touch MARKER') }}",
    "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
    "{% for i in range(10**9) %}{% endfor %}",
]


def _folder_with_template(path: Path, template: str) -> Path:
    Tokenizer.load(default_tokenizer_dir()).save(path)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_file.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("template", UNSAFE)
def test_unsafe_templates_are_refused_and_never_run(template: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    tok = Tokenizer.load(_folder_with_template(tmp_path / "tok", template))
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(UserError) as e:
        tok.apply_chat_template(messages, add_generation_prompt=True)
    assert e.value.message().startswith("the chat template cannot render this conversation: ")
    assert any(kind in e.value.message() for kind in ("SecurityError", "OverflowError"))
    assert messages == [{"role": "user", "content": "hi"}] and not (tmp_path / "MARKER").exists()


def test_a_folder_template_renders_like_transformers(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] | trim + '<|im_end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    folder = _folder_with_template(tmp_path / "tok", template)
    messages = [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi"}]
    ours = Tokenizer.load(folder).apply_chat_template(messages, add_generation_prompt=True)
    theirs = AutoTokenizer.from_pretrained(folder).apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert (
        ours
        == theirs
        == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_template_failure_in_training_is_one_line(tmp_path: Path, capsys) -> None:
    """The template's own raise_exception, hit while tokenizing SFT data, stops with FILE:LINE."""
    folder = _folder_with_template(tmp_path / "model", "{{ raise_exception('roles must alternate') }}")
    save_tiny_chat_model(tmp_path / "base")
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tmp_path / "base" / name).read_bytes())
    data = tmp_path / "s.jsonl"
    data.write_text(
        json.dumps({"conversations": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
        + "\n"
    )
    with pytest.raises(SystemExit) as e:
        main(
            [
                "train",
                "sft",
                "--model",
                str(folder),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "o"),
                "--max-steps",
                "1",
                "seq_len=32",
                "batch_size=1",
            ]
        )
    err = capsys.readouterr().err
    assert e.value.code == 1 and "Traceback" not in err
    assert err.startswith(
        f"sprout: error: {data}:1: the chat template cannot render this conversation: "
        "TemplateError: roles must alternate"
    )
