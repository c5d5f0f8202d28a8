"""The pieces of `gpu_check.py` that run in a process of their own (one per call, so a crash or a cap ends
only that piece, and CUDA's peak-memory counter belongs to it alone).

    python benchmarks/gpu_worker.py sft-rows --model FOLDER --gsm8k DIR --work DIR --jsonl FILE [--rows a,b]
    python benchmarks/gpu_worker.py gguf-to-folder FILE.gguf FOLDER     # weights + tokenizer, dequantised once
    python benchmarks/gpu_worker.py architecture FILE.gguf FOLDER       # config + tokenizer only (no weights)
    python benchmarks/gpu_worker.py tiny-llama TOKENIZER FOLDER         # --smoke's stand-in for SmolLM2

`sft-rows` runs rows of the pause table (experiments/pause_warmup.yaml) for a few dozen optimizer steps each
with `unfreeze sft`'s own recipe (the row's YAML and overrides), and appends one JSON line per row: steps/s,
CUDA's peak allocated memory (torch.cuda.max_memory_allocated) and the cost model's prediction of it
(`unfreeze.recipes.suggest.cost.predict_peak_bytes`, written for classify: it has no term for the LM head's logits,
which the line gives beside it). Timing and memory do not depend on the weights' values, so the rows start
from random weights of the model folder's architecture (no step-1 model is needed).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAUSE = "<|pause|>"
# Rows first that differ most in what trains (so a cut run still spans the table): LoRA only, pause
# embedding + head, + LoRA, pause head only (cached), + LM head, everything; then the rest in file order.
FIRST_ROWS = ("step1_sft", "sft", "sft_peft", "sft_fr_pembed", "sft_unfr_lm_head", "sft_unfr_lm_head_embed_peft")
# Components whose gradient runs back through every block (to the embeddings, or LoRA inside the blocks).
THROUGH_THE_BLOCKS = {"lora", "lm_embeddings", "pause_embedding"}


# --- models -------------------------------------------------------------------------------------------
def gguf_to_folder(gguf: str, folder: str) -> None:
    """The GGUF dequantised to float32 once and saved as a model folder, so each run loads it in a second
    (the same fp32 weights every `--model FILE.gguf` run would dequantise anew)."""
    from unfreeze.models.loading import ModelSource

    source = ModelSource(gguf)
    source.load("causal_lm", dtype="float32").save_pretrained(folder)
    source.load_tokenizer().save_pretrained(folder)


def architecture(gguf: str, folder: str) -> None:
    """The GGUF's config and tokenizer without weights: enough for `weights=random` runs of its architecture."""
    from unfreeze.models.loading import ModelSource

    source = ModelSource(gguf)
    source.config().save_pretrained(folder)
    source.load_tokenizer().save_pretrained(folder)


def tiny_llama(tokenizer_source: str, folder: str, seed: int = 0) -> None:
    """A 2-block Llama (width 32) with random weights and the given tokenizer, saved as a model folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from unfreeze.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else len(tokenizer) - 1
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
                         bos_token_id=eos, eos_token_id=eos, tie_word_embeddings=True)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# --- sft rows -----------------------------------------------------------------------------------------
def pause_table_rows(names: list[str] | None) -> list[dict]:
    """The pause table's rows (name, config file, options), in FIRST_ROWS order, or those named."""
    import yaml

    table = yaml.safe_load((ROOT / "experiments" / "pause_warmup.yaml").read_text())
    rows = {row["name"]: row for row in table["rows"]}
    if names:
        unknown = [name for name in names if name not in rows]
        if unknown:
            raise SystemExit(f"--rows: {', '.join(unknown)} not in experiments/pause_warmup.yaml ({', '.join(rows)})")
        return [rows[name] for name in names]
    return [rows[name] for name in FIRST_ROWS if name in rows] + [r for n, r in rows.items() if n not in FIRST_ROWS]


def make_data(model: str, gsm8k: str, work: Path, n_rows: int) -> dict[str, Path]:
    """The first `n_rows` GSM8K training rows as they are (step-1 rows) and with random pauses between the
    model's tokens, as the table's data is made (`unfreeze inject-pauses`, docs/sft.md)."""
    from unfreeze.cli import main as cli_main

    plain = work / "gsm8k"
    plain.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", n_rows), ("test", 8)):
        lines = (Path(gsm8k) / f"{split}.jsonl").read_text().splitlines()[:count]
        (plain / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    pauses = work / "pauses"
    status = cli_main(["inject-pauses", "--dataset_location", str(plain), "--pause_token", PAUSE,
                       "--n_pauses_per_patterns", "{}", "--augm_dataset_save_location", str(pauses),
                       "--pause_augm_col_name", "answer", "--n_random_pauses", "10", "--variable_number_of_pauses",
                       "--tokenizer_hf_name", model, "--seed", "42", "--overwrite"])
    if status != 0:
        raise SystemExit(f"inject-pauses failed ({status})")
    return {"plain": plain, "pauses": pauses}


def longest_example(model: str, data: Path, n_rows: int, max_length: int) -> int:
    """Tokens of the longest training example (what the longest batch is padded to)."""
    from unfreeze.data import sft_data
    from unfreeze.models.control.vocab import register_control_tokens
    from unfreeze.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(model)
    register_control_tokens(tokenizer, [PAUSE], len(tokenizer))
    train_file, _ = sft_data.data_files(str(data))
    rows = sft_data.read_rows(train_file)[:n_rows]
    examples = sft_data.encode_rows(tokenizer, rows, max_length, [PAUSE]).examples
    return max((len(e.input_ids) for e in examples), default=0)


def run_row(row: dict, args, data: dict[str, Path], limit: int, out: Path) -> dict:
    """`unfreeze sft <row's YAML> <overrides> --out OUT` (the command line, in this process): its metrics."""
    from unfreeze.cli import main as cli_main

    step1 = row["name"].startswith(("step1", "baseline"))
    overrides = [f"model={args.model}", "weights=random", "model_config=null", "tokenizer=null",
                 f"data={data['plain' if step1 else 'pauses']}", f"train_limit={limit}", "num_epochs=1",
                 f"batch_size={args.batch_size}", f"max_length={args.max_length}",
                 "test=false", "save_steps=0", "eval_every=0", "keep=last", "eval_at_start=false", "log_every=10",
                 *(f"{key}={json.dumps(value)}" for key, value in (row.get("options") or {}).items()),
                 *([f"precision={args.precision}"] if args.precision else [])]
    status = cli_main(["sft", str(ROOT / "experiments" / row["config"]), *overrides, "--out", str(out)])
    if status != 0:
        log = (out / "run.log").read_text(errors="replace").strip().splitlines() if (out / "run.log").exists() else []
        raise RuntimeError(f"unfreeze sft {row['config']} exited {status}: {log[-1] if log else ''}"[:400])
    return json.loads((out / "metrics.json").read_text())


def predicted_peak(batch_size: int, metrics: dict, hf_config, longest: int) -> dict:
    """The cost model's peak memory for this row, and the LM head's logits it leaves out."""
    from unfreeze.recipes.suggest import cost

    text = hf_config.get_text_config()
    through = THROUGH_THE_BLOCKS & set(metrics["trainable_components"])
    param_bytes = 2 if metrics["precision"] == "bf16-pure" else 4
    peak = cost.predict_peak_bytes(metrics["total_params"], metrics["trainable_params"], batch_size, longest,
                                   text.hidden_size, text.num_hidden_layers if through else 0,
                                   text.num_attention_heads, param_bytes)
    return {"predicted_peak_bytes": peak, "logits_bytes": batch_size * longest * text.vocab_size * 4}


def append(path: str, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def sft_rows(args) -> None:
    from transformers import AutoConfig

    work, cuda = Path(args.work), torch.cuda.is_available()
    rows = pause_table_rows(args.rows.split(",") if args.rows else None)
    limit = math.ceil(args.steps * args.batch_size / 0.9) + 1  # 90 % of the rows train (val_fraction 0.1)
    data = make_data(args.model, args.gsm8k, work, limit)
    hf_config = AutoConfig.from_pretrained(args.model)
    longest = {kind: longest_example(args.model, folder, limit, args.max_length) for kind, folder in data.items()}
    if cuda:  # CUDA's and cuBLAS's first-use costs, outside every row's timing
        run_row(rows[0], args, data, 2 * args.batch_size, work / "warmup")
    for row in rows:
        if time.time() > args.deadline:
            print(f"deadline reached before row {row['name']}", flush=True)
            break
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            metrics = run_row(row, args, data, limit, work / "runs" / row["name"])
        except Exception as err:  # noqa: BLE001 - a failing row is recorded; the next rows still run
            append(args.jsonl, {"row": row["name"], "config": row["config"], "error": f"{type(err).__name__}: {err}"})
            continue
        kind = "plain" if row["name"].startswith(("step1", "baseline")) else "pauses"
        record = {"row": row["name"], "config": row["config"], "options": row.get("options") or {},
                  "components": metrics["trainable_components"], "trainable_params": metrics["trainable_params"],
                  "total_params": metrics["total_params"], "precision": metrics["precision"],
                  "cache": metrics["cache"]["kind"], "optimizer_steps": metrics["optimizer_steps"],
                  "train_time_s": metrics["train_time_s"],
                  "steps_per_s": round(metrics["optimizer_steps"] / metrics["train_time_s"], 3),
                  "longest_example": longest[kind], "batch_size": args.batch_size,
                  "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                  "eval_loss": metrics["eval_loss"],
                  **predicted_peak(args.batch_size, metrics, hf_config, longest[kind])}
        append(args.jsonl, record)
        print(f"sft row {row['name']}: {record['steps_per_s']} steps/s, peak {record['peak_bytes']}", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("gguf-to-folder", "architecture"):
        sub = commands.add_parser(name)
        sub.add_argument("gguf")
        sub.add_argument("folder")
    sub = commands.add_parser("tiny-llama")
    sub.add_argument("tokenizer")
    sub.add_argument("folder")
    sub = commands.add_parser("sft-rows")
    sub.add_argument("--model", required=True, help="model folder: its config and tokenizer (weights unused)")
    sub.add_argument("--gsm8k", required=True, help="folder with GSM8K's train.jsonl and test.jsonl")
    sub.add_argument("--work", required=True)
    sub.add_argument("--jsonl", required=True, help="one line per finished row is appended here")
    sub.add_argument("--rows", default=None, help="comma-separated row names (default: all, FIRST_ROWS first)")
    sub.add_argument("--steps", type=int, default=30, help="optimizer steps per row")
    sub.add_argument("--precision", default=None, help="override every row's precision (the rows: bf16-pure)")
    sub.add_argument("--batch_size", type=int, default=8, help="examples per step (the rows: 8)")
    sub.add_argument("--max_length", type=int, default=600, help="tokens per example (the rows: 600)")
    sub.add_argument("--deadline", type=float, default=math.inf, help="start no row after this time.time()")
    args = parser.parse_args(argv)
    if args.command == "sft-rows":
        sft_rows(args)
    else:
        {"gguf-to-folder": gguf_to_folder, "architecture": architecture,
         "tiny-llama": tiny_llama}[args.command](getattr(args, "gguf", None) or args.tokenizer, args.folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
