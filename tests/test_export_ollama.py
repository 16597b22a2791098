"""The Ollama Modelfile: its TEMPLATE, run by Go's text/template (the engine Ollama uses), must write
exactly the prompt sprout's chat template writes. Needs `go` (Debian golang-go; scripts/setup.sh --dev)."""

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import pytest
from conftest import save_tiny_family_model

from sprout.export.ollama import TEMPLATE
from sprout.tokenizer import Tokenizer, default_tokenizer_dir

GO = shutil.which("go")
RENDER = Path(__file__).parent / "ollama_template" / "main.go"
needs_go = pytest.mark.skipif(
    GO is None, reason="needs the Go toolchain (apt-get install golang-go; scripts/setup.sh --dev installs it)"
)

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是一个乐于助人的助手。"}, {"role": "user", "content": "1+1=?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!\nHow are you?"},
        {"role": "assistant", "content": "Fine, thanks."},
        {"role": "user", "content": "What is  {{ .System }}?"},
    ],
    [
        {"role": "user", "content": "2*3?"},
        {"role": "assistant", "content": "6", "reasoning_content": "2 times 3 is 6."},
        {"role": "user", "content": "And 2*4?"},
    ],
]


def go_render(template: str, messages: list[dict], think: bool | None) -> str:
    """Ollama's variables for a chat request: .Messages with .Thinking, .System, .IsThinkSet/.Think."""
    msgs = [{"role": m["role"], "content": m["content"], "thinking": m.get("reasoning_content", "")} for m in messages]
    req = json.dumps({"template": template, "messages": msgs, "think": think})
    r = subprocess.run([GO, "run", str(RENDER)], input=req, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_go
@pytest.mark.parametrize("think", [None, False, True])
def test_modelfile_template_renders_sprouts_prompt(think):
    tok = Tokenizer.load(default_tokenizer_dir())
    for messages in CONVERSATIONS:
        want = tok.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=bool(think))
        assert go_render(TEMPLATE, messages, think) == want


def test_export_ollama_writes_gguf_and_modelfile(tmp_path, capsys):
    from sprout.cli import main

    folder = save_tiny_family_model(tmp_path / "tiny", "qwen3")
    main(["export", "ollama", "--model", str(folder), "--out", str(tmp_path / "ollama"), "--name", "sprout-tiny"])
    out = capsys.readouterr().out
    assert (
        f"ollama create sprout-tiny -f {tmp_path / 'ollama' / 'Modelfile'}" in out and "ollama run sprout-tiny" in out
    )
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    lines = text.splitlines()
    assert lines[0] == "FROM ./model.gguf"
    assert f'TEMPLATE """{TEMPLATE}"""' in text
    for line in (
        'PARAMETER stop "<|im_end|>"',
        'PARAMETER stop "<|endoftext|>"',
        "PARAMETER temperature 0.7",
        "PARAMETER top_p 0.9",
        "PARAMETER repeat_penalty 1.05",
    ):
        assert line in lines
    reader = gguf.GGUFReader(tmp_path / "ollama" / "model.gguf")
    assert reader.fields["general.architecture"].contents() == "qwen3"
