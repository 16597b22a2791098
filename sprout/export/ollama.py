"""`sprout export ollama --model DIR --out DIR`: a GGUF file plus the Modelfile `ollama create` reads.

Ollama does not run the Jinja chat template stored in the GGUF; it renders its own Go text/template
(the Modelfile's TEMPLATE) with the variables .System (the system messages), .Messages (each with
.Role, .Content, .Thinking) and .IsThinkSet / .Think (the request's `think` flag). The template below
writes, for system / user / assistant conversations, exactly the text sprout's chat template
produces (tests/test_export_ollama.py renders it with Go's text/template and compares):

    <|im_start|>system\\n{system}<|im_end|>\\n
    <|im_start|>user\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n{thinking}\\n</think>\\n\\n{content}<|im_end|>\\n
    <|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n      (the reply; without the empty think block when think is on)

Tool calls are not in the template: Ollama would write tool descriptions with Go's JSON encoder,
whose spacing differs from the JSON the model was trained on. Use `sprout serve` for tools.
"""

from __future__ import annotations

import json
from pathlib import Path

from .gguf_export import export_gguf

# No `{{-` trim markers: every newline here is part of the prompt, and the pieces are joined without any
# whitespace of their own.
TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ range .Messages }}"
    '{{ if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n'
    '{{ else if eq .Role "assistant" }}<|im_start|>assistant\n<think>\n{{ .Thinking }}\n</think>\n\n'
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}{{ end }}"
    "<|im_start|>assistant\n{{ if not (and .IsThinkSet .Think) }}<think>\n\n</think>\n\n{{ end }}"
)
STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
# generation_config.json key -> Ollama PARAMETER name
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "repetition_penalty": "repeat_penalty"}


def modelfile(gguf_name: str, generation_config: dict, num_ctx: int) -> str:
    """The Modelfile text: weights, template, stop tokens and the folder's default sampling."""
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{TEMPLATE}"""']
    lines += [f'PARAMETER stop "{s}"' for s in STOP_TOKENS]
    for key, name in _SAMPLING.items():
        if generation_config.get(key):
            lines.append(f"PARAMETER {name} {generation_config[key]}")
    lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def export_ollama(
    model: str | Path, out: str | Path, dtype: str = "q8_0", lora: str | Path | None = None, name: str | None = None
) -> tuple[Path, str]:
    """Write OUT/model.gguf and OUT/Modelfile; return the Modelfile path and the commands to run."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_gguf(model, out / "model.gguf", dtype, lora)
    folder = Path(model)
    gen_path = folder / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    cfg_path = folder / "config.json"
    max_pos = json.loads(cfg_path.read_text()).get("max_position_embeddings", 2048) if cfg_path.exists() else 2048
    path = out / "Modelfile"
    path.write_text(modelfile("model.gguf", gen, min(max_pos, 4096)), encoding="utf-8")
    tag = name or Path(model).resolve().name.lower()
    commands = f"ollama create {tag} -f {path}\nollama run {tag}"
    return path, commands
