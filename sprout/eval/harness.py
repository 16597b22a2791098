"""`sprout eval harness --model DIR --tasks ...`: EleutherAI's lm-evaluation-harness (lm-eval 0.4.x) on a model folder.

lm-eval loads the folder with its stock `hf` model (transformers' AutoModelForCausalLM, no remote
code), so its numbers are the ones anyone else would get for the same folder. Besides lm-eval's own
tasks (C-Eval, CMMLU, ARC, HellaSwag, ..., which download their data sets), sprout adds local tasks
built from packaged data, so a run works offline:

- `sprout_insuranceqa_zh`, `sprout_insuranceqa_en`: the validation questions of `sprout eval`'s
  insuranceqa tasks (gold answer + 3 same-domain negatives). The context is the chat prompt
  (thinking off) and each choice is an answer followed by `<|im_end|>`, as the model replies.

lm-eval's multiple-choice metrics: `acc` picks the choice with the highest total log-likelihood,
`acc_norm` divides it by the choice's length in bytes first (long answers are not punished).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

LOCAL_TASKS = {"sprout_insuranceqa_zh": "zh", "sprout_insuranceqa_en": "en"}

_TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def write_local_tasks(folder: Path) -> Path:
    """Write the local tasks' YAML files and jsonl data into `folder` (an lm-eval include path)."""
    from ..data.builtin import insuranceqa_choice
    from ..tokenizer_chat import render_chat

    folder.mkdir(parents=True, exist_ok=True)
    for name, lang in LOCAL_TASKS.items():
        data = folder / f"{name}.jsonl"
        with data.open("w", encoding="utf-8") as f:
            for it in insuranceqa_choice("valid", lang):
                context = render_chat(
                    [{"role": "user", "content": it["question"]}], add_generation_prompt=True, enable_thinking=False
                )[0]
                row = {"context": context, "choices": [o + "<|im_end|>" for o in it["options"]], "answer": it["answer"]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        (folder / f"{name}.yaml").write_text(
            _TASK_YAML.format(name=name, data=json.dumps(str(data.resolve()))), encoding="utf-8"
        )
    return folder


def run_harness(
    model_dir: str | Path,
    tasks: list[str],
    out: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    num_fewshot: int | None = None,
) -> dict:
    """Run lm-eval's `hf` model on `model_dir`; write OUT/harness.json and OUT/harness.md; return {task: metrics}."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise SystemExit(f"{model_dir} is not a model folder: config.json is missing")
    out_dir = Path(out or model_dir / "eval")
    only_local = all(t in LOCAL_TASKS for t in tasks)
    if only_local:
        # Local data only: nothing to look up on the hub (lm-eval's own tasks download their data sets).
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import lm_eval
    except ImportError:
        raise SystemExit(
            "sprout eval harness needs lm-eval: pip install 'sprout[harness]' (or pip install 'lm-eval>=0.4.13,<0.5')"
        ) from None
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    include = write_local_tasks(out_dir / "harness_tasks")
    # Indexing lm-eval's thousands of built-in task files takes a while; skip it when only local tasks run.
    manager = TaskManager(include_path=str(include), include_defaults=not only_local)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise SystemExit(
            f"unknown lm-eval task(s) {', '.join(unknown)}; local tasks: {', '.join(LOCAL_TASKS)}; "
            "lm-eval's own tasks: `lm-eval ls tasks`"
        )
    dtype = "float32" if device == "cpu" else "bfloat16"
    try:
        res = lm_eval.simple_evaluate(
            model="hf",
            model_args={"pretrained": str(model_dir), "dtype": dtype},
            tasks=tasks,
            task_manager=manager,
            limit=limit,
            batch_size=batch_size,
            device=device,
            num_fewshot=num_fewshot,
            log_samples=False,
        )
    except ConnectionError as e:  # lm-eval's own tasks fetch their data sets from the Hugging Face hub
        raise SystemExit(
            f"sprout eval harness: {e}; lm-eval's tasks download their data sets, so this needs "
            f"network (or a filled HF_DATASETS_CACHE); offline, use {', '.join(LOCAL_TASKS)}"
        ) from None
    scores = {
        task: {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and "," in k}
        for task, metrics in res["results"].items()
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "harness.json").write_text(
        json.dumps({"model": str(model_dir), "limit": limit, "results": scores}, indent=2) + "\n"
    )
    table = make_table(res)
    (out_dir / "harness.md").write_text(table)
    print(table)
    return scores
