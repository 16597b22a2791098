"""Weight types `sprout export gguf|ollama` can write; importable without torch (the CLI's --dtype choices)."""

DTYPES = ("f32", "f16", "bf16", "q8_0")
