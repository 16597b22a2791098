"""`sprout bench train|infer|serve`: speed measured on the machine at hand (goals live in docs/BENCHMARKS.md,
never in timed tests). Every verb prints a markdown table and, as its last line, one JSON object.

Only argparse here: the implementations (and torch) are imported when a verb runs."""
from __future__ import annotations


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks: training, decoding and serving throughput")
    bs = p.add_subparsers(dest="what", required=True)
    add_train_parser(bs)
    add_infer_parser(bs)
    add_serve_parser(bs)


def add_train_parser(bs) -> None:
    t = bs.add_parser("train", help="training tokens/s, model FLOP/s and MFU of a preset at each precision")
    t.add_argument("--preset", default="cpu")
    t.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16, auto, fast")
    t.add_argument("--seq-len", type=int, default=256)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--steps", type=int, default=5)
    t.add_argument("--device", default="auto")
    t.set_defaults(func=_run_train)


def _run_train(a) -> None:
    from .train import bench_train, print_table

    print_table(bench_train(a.preset, a.dtypes.split(","), a.seq_len, a.batch_size, a.steps, a.device))


def add_infer_parser(bs) -> None:
    p = bs.add_parser("infer", help="decoding tokens/s at batch 1 and 16 (optionally next to transformers)")
    p.add_argument("--preset", default="cpu", help="a fresh model of this preset (ignored with --model)")
    p.add_argument("--model", help="a model folder instead of a preset")
    p.add_argument("--batch-sizes", default="1,16", help="comma-separated")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--prompts", default="synthetic", help="synthetic (random ids), builtin (built-in corpus) "
                                                          "or a .jsonl file of {\"text\": ...}")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per engine; the median is reported")
    p.add_argument("--compare-hf", action="store_true", help="also time transformers' generate on the same weights")
    p.add_argument("--compile", action="store_true", help="torch.compile the decode step (CUDA graphs on a GPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--dtype", default="auto", help="weights for both engines: auto (as sprout serve: bf16 on a GPU, "
                                                   "fp32 on a CPU), fp32 or bf16")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_run_infer)


def _run_infer(a) -> None:
    from .infer import bench_infer, print_infer

    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    print_infer(bench_infer(
        a.preset, a.model, [int(x) for x in a.batch_sizes.split(",")], a.new_tokens, a.prompt_len, a.prompts,
        a.rounds, a.compare_hf, a.compile, a.device, a.dtype))


def add_serve_parser(bs) -> None:
    p = bs.add_parser("serve", help="streaming tokens/s of 1 and N clients against `sprout serve`, "
                                    "next to in-process decoding")
    p.add_argument("--model", help="model folder with its tokenizer (default: a fresh --preset model)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--url", help="an already running server instead of starting one")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1, help="requests per client in each phase")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch threads, here and in the server (0 = default)")
    p.set_defaults(func=_run_serve)


def _run_serve(a) -> None:
    from .serve import bench_serve, check_model_dir, print_serve

    check_model_dir(a.model)
    print_serve(bench_serve(a.model, a.preset, a.url, a.clients, a.requests, a.max_tokens, a.prompt_len,
                            a.rounds, a.threads))
