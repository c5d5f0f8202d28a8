"""`unfreeze eval-gsm8k --model DIR --out DIR`: GSM8K test accuracy by greedy generation, pauses included.

Top to bottom: check the flags -> read the questions -> load the model -> generate (batched, greedy, with
a key/value cache, through the pause model's combined distribution) -> score -> `test_results.json`
(one record per question), then `metrics.json`, both written atomically, metrics last. `unfreeze sft`
calls `evaluate_model_folder` on its saved model when its config says `test: true`.

Scoring: pause tokens and other special tokens are removed from the completion, the answer is the first
match of the reference's regex `#### (\\-?[0-9\\.\\,]+)` with commas removed. Two verdicts per question:
`correct` compares that string with the ground truth's, as the PauseToken reference does (its
`test_accuracy`); `correct_numeric` compares them as numbers when both parse ("18.0" and "18" are the
same answer there), else as strings (`test_accuracy_numeric`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unfreeze.config import to_dict
from unfreeze.data.gsm8k import PROMPT_TEMPLATE, extract_answer, gsm8k_download, load_gsm8k_split
from unfreeze.data.pauses import count_pauses, strip_pauses
from unfreeze.errors import UsageError, require
from unfreeze.lifecycle import Run, run_folder
from unfreeze.models.folder_check import check_model_folder
from unfreeze.models.gguf import is_gguf, resolve_alias, split_source
from unfreeze.recipes.eval_gsm8k.config import DEFAULT_PAUSE_TOKEN, EvalConfig

RESULTS_FILE = "test_results.json"
METRICS_FILE = "metrics.json"


def run(cfg: EvalConfig) -> int:
    """Check the flags, then evaluate inside the one run lifecycle: a finished evaluation in --out (its
    metrics.json) is refused without --overwrite, and with it the old files stay until the new ones have
    succeeded; a failure after the run started ends run.log with the error."""
    require(bool(cfg.out and cfg.out.strip()), "--out is required: the folder for test_results.json and metrics.json")
    validate(cfg.limit, cfg.batch_size, cfg.max_new_tokens, cfg.pause_temperature)
    check_template(cfg.prompt_template, "--prompt_template")
    with run_folder("eval-gsm8k", cfg.out, cfg.overwrite,
                    downloads=gsm8k_download(cfg.data, "--data FILE (GSM8K test.jsonl)")) as folder:
        records, metrics = evaluate(cfg, folder)
        folder.write_json("eval_config.json", to_dict(cfg))
        folder.write_json(RESULTS_FILE, records)
        folder.finish(metrics)
    return 0


def check_template(template: str, flag: str) -> None:
    """sft's template check, imported on use: sft_data imports torch, and the CLI imports this module for --help."""
    from unfreeze.data.sft_data import check_template as check

    check(template, flag)


def validate(limit: int | None, batch_size: int, max_new_tokens: int, pause_temperature: float) -> None:
    """Reject impossible numbers before anything is loaded."""
    require(limit is None or limit >= 1, f"--limit must be at least 1 (got {limit}); leave it out to score all")
    require(batch_size >= 1, f"--batch_size must be at least 1 (got {batch_size})")
    require(max_new_tokens >= 1, f"--max_new_tokens must be at least 1 (got {max_new_tokens})")
    require(math.isfinite(pause_temperature) and pause_temperature >= 0,
            f"--pause_temperature must be a finite number >= 0 (got {pause_temperature}); "
            "0 never pauses, 1 leaves the model unchanged")


# --- scoring: pure functions --------------------------------------------------------------------------


def clean_completion(text: str, pause_tokens: Sequence[str] = (DEFAULT_PAUSE_TOKEN,),
                     special_tokens: Sequence[str] = ()) -> str:
    """The completion without pause tokens and other special tokens (e.g. `<|endoftext|>`)."""
    for token in pause_tokens:
        text = strip_pauses(text, token)
    # Longest first, so that a special token containing another is removed whole.
    for token in sorted(set(special_tokens), key=len, reverse=True):
        if token:
            text = text.replace(token, "")
    return text


def predicted_answer(text: str, pause_tokens: Sequence[str] = (DEFAULT_PAUSE_TOKEN,),
                     special_tokens: Sequence[str] = ()) -> str | None:
    """The number after `#### ` in the cleaned completion (commas removed), or None."""
    return extract_answer(clean_completion(text, pause_tokens, special_tokens))


def is_correct(predicted: str | None, truth: str | None, *, as_numbers: bool = True) -> bool:
    """Same answer. `as_numbers`: equal as numbers when both parse ("18.0" == "18"), else as strings;
    `as_numbers=False`: equal as strings, the PauseToken reference's definition ("18.0" != "18")."""
    if predicted is None or truth is None:
        return False
    if not as_numbers:
        return predicted == truth
    try:
        return float(predicted) == float(truth)
    except ValueError:
        return predicted == truth


def summarize(records: Sequence[dict], generation_s: float, eval_s: float) -> dict[str, Any]:
    """The metrics of a list of scored records (see `generate_and_score`).

    `test_accuracy` counts `correct` (string comparison, the reference's definition) and
    `test_accuracy_numeric` counts `correct_numeric`; a record without the latter (written before it
    existed) counts its one verdict for both.
    """
    n = len(records)
    pauses = [r["num_pauses"] for r in records]
    tokens = [r["num_generated_tokens"] for r in records]
    numeric = sum(r.get("correct_numeric", r["correct"]) for r in records)
    return {
        "test_accuracy": sum(r["correct"] for r in records) / n if n else 0.0,
        "test_accuracy_numeric": numeric / n if n else 0.0,
        "num_questions": n,
        "num_correct": sum(r["correct"] for r in records),
        "num_correct_numeric": numeric,
        "num_without_answer": sum(r["predicted_answer"] is None for r in records),
        "num_stopped_by_length": sum(not r["stopped_at_eos"] for r in records),
        "mean_pauses_per_reply": sum(pauses) / n if n else 0.0,
        "max_pauses_per_reply": max(pauses, default=0),
        "mean_generated_tokens": sum(tokens) / n if n else 0.0,
        "generated_tokens_per_s": round(sum(tokens) / generation_s, 2) if generation_s > 0 else None,
        "generation_time_s": round(generation_s, 3),
        "eval_time_s": round(eval_s, 3),
    }


def mean_pauses_per_answer(rows: Sequence[dict], pause_tokens: Sequence[str] = (DEFAULT_PAUSE_TOKEN,)) -> float:
    """Mean number of pause tokens in the "answer" field of training rows (the rate a model learned)."""
    if not rows:
        return 0.0
    return sum(count_pauses(row["answer"], token) for row in rows for token in pause_tokens) / len(rows)


# --- the evaluation -----------------------------------------------------------------------------------


def evaluate(config: EvalConfig, folder: Run, progress: bool = True) -> tuple[list[dict], dict]:
    """Score the model in `config.model` on GSM8K test: (one record per question, the metrics).

    `config.data` is a GSM8K test file or folder (None downloads it); `config.limit` keeps the first N
    questions. Every input is read and checked before `folder.start()` (bad input writes nothing); writing
    the results is the caller's: `unfreeze eval-gsm8k`'s own folder, or `unfreeze sft`'s when it tests.
    """
    from unfreeze.resources import resolve_device

    started = time.perf_counter()
    require(bool(config.model), "--model is required: a model folder, e.g. the <out>/final of `unfreeze sft`")
    model_path = resolve_alias(config.model)  # `smollm2`: the installed GGUF file
    folder_path = Path(model_path).expanduser()
    if is_gguf(model_path):
        split_source(model_path)  # a missing file or the missing gguf package: one line, before the data
    else:  # a file that is no .gguf, a folder without config.json or with missing or cut weights: said here
        check_model_folder(model_path, "--model", weights=True)
    rows = load_questions(config.data, config.limit)  # missing fields fail here, before the (slow) model load
    train_rows = load_gsm8k_split(config.train_stats, "train", flag="--train_stats") if config.train_stats else None
    target = resolve_device(config.device)
    model = load_model(folder_path, target)
    pause_tokens = list(model.control_tokens) if model.control_token_ids else []
    rows = with_ground_truth(rows, config.data, pause_tokens or [DEFAULT_PAUSE_TOKEN])
    if not folder.started:
        folder.start()
    log = folder.log
    log.info(f"model {folder_path} on {target}: control tokens {pause_tokens or 'none'}; "
             f"{len(rows)} questions from {config.data or 'openai/gsm8k (download)'}")
    records, generation_s = generate_and_score(
        model, rows, batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
        max_length=config.max_length, pause_temperature=config.pause_temperature, device=target,
        progress=progress, template=config.prompt_template)
    metrics = summarize(records, generation_s, time.perf_counter() - started)
    metrics.update({"pause_temperature": config.pause_temperature, "max_new_tokens": config.max_new_tokens,
                    "max_length": config.max_length, "prompt_template": config.prompt_template,
                    "batch_size": config.batch_size, "model": str(folder_path), "device": str(target)})
    if train_rows is not None:
        metrics["train_mean_pauses_per_answer"] = mean_pauses_per_answer(train_rows,
                                                                        pause_tokens or [DEFAULT_PAUSE_TOKEN])
    log.info(f"test accuracy {metrics['test_accuracy']:.4f} ({metrics['num_correct']}/{len(records)}); "
             f"pauses per reply {metrics['mean_pauses_per_reply']:.2f} (max {metrics['max_pauses_per_reply']}); "
             f"{metrics['generated_tokens_per_s']} generated tokens/s")
    return records, metrics


def load_questions(data: str | None, limit: int | None) -> list[dict]:
    """The first `limit` test rows (the loader checks that each has text "question" and "answer")."""
    rows = load_gsm8k_split(data, "test", flag="--data")
    rows = rows[:limit] if limit is not None else rows
    require(len(rows) > 0, f"--data {data}: no questions to score")
    return rows


def with_ground_truth(rows: Sequence[dict], data: str | None, pause_tokens: Sequence[str]) -> list[dict]:
    """question, answer and ground truth of each row; a row without `#### <number>` is a UsageError.

    The ground truth is read like a completion (pauses removed first), so a test file written by
    `unfreeze inject-pauses` scores the same as the original.
    """
    checked = []
    for number, row in enumerate(rows, start=1):
        truth = predicted_answer(row["answer"], pause_tokens)
        require(truth is not None, f"--data {data}: row {number}'s answer has no final '#### <number>'")
        checked.append({"question": row["question"], "answer": row["answer"], "ground_truth": truth})
    return checked


def load_model(folder: Path, device):
    """A saved pause model (`unfreeze sft`), a plain Hugging Face causal LM or a .gguf file, in eval mode on
    `device`."""
    from unfreeze.models.control.tokens import ControlTokenLM

    if not is_gguf(str(folder)) and not (folder / "config.json").exists():
        raise UsageError(f"--model {folder} is not a model folder (no config.json); pass the <out>/final "
                         f"folder of `unfreeze sft` or a Hugging Face model folder")
    model = ControlTokenLM.from_pretrained(str(folder))  # its own errors are one-line UsageErrors
    return model.to(device).eval()


def generate_and_score(model, rows: Sequence[dict], *, batch_size: int, max_new_tokens: int | None,
                       pause_temperature: float, device, progress: bool = True,
                       max_length: int | None = None, template: str = PROMPT_TEMPLATE) -> tuple[list[dict], float]:
    """Greedy completions of every question, scored; returns (records in input order, generation seconds).

    Each answer may take `max_new_tokens` tokens and the question with its answer `max_length` tokens
    (either may be None, not both); the tighter limit wins for each question.
    """
    from tqdm.auto import tqdm

    from unfreeze.data.sft_data import encode_prompt
    from unfreeze.models.generation import greedy_generate, step_function

    tokenizer = model.tokenizer
    eos_id = tokenizer.eos_token_id
    require(eos_id is not None, "the model's tokenizer has no EOS token; generation could never stop early")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    pause_ids = list(model.control_token_ids)
    pause_tokens = tokenizer.convert_ids_to_tokens(pause_ids) if pause_ids else []
    special = [t for t in tokenizer.all_special_tokens if t not in pause_tokens]
    prompts = [encode_prompt(tokenizer, row["question"], template) for row in rows]
    check_generation_budget(model, [len(p) for p in prompts], max_new_tokens, max_length)

    # Longest prompts first: similar lengths share a batch (less padding), and memory peaks at once.
    order = sorted(range(len(rows)), key=lambda i: -len(prompts[i]))
    step = step_function(model)
    records: list[dict | None] = [None] * len(rows)
    generation_s, n_correct, n_done = 0.0, 0, 0
    bar = tqdm(total=len(rows), desc="eval-gsm8k", unit="q", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        began = time.perf_counter()
        outputs = greedy_generate(step, [prompts[i] for i in batch], eos_id=eos_id, pad_id=pad_id,
                                  max_new_tokens=max_new_tokens, max_length=max_length, pause_ids=pause_ids,
                                  pause_temperature=pause_temperature, device=device)
        generation_s += time.perf_counter() - began  # .tolist() inside waited for the device
        for index, output in zip(batch, outputs):
            records[index] = score_generation(tokenizer, rows[index], index, output, pause_ids, pause_tokens, special)
            n_correct += records[index]["correct"]
        n_done += len(batch)
        bar.update(len(batch))
        bar.set_postfix(acc=f"{n_correct / n_done:.3f}")
    bar.close()
    return records, generation_s


def check_generation_budget(model, prompt_lengths: Sequence[int], max_new_tokens: int | None,
                            max_length: int | None) -> None:
    """One-line UsageErrors for limits no question can meet or that run past the model's positions."""
    from unfreeze.models.generation import max_positions, row_budgets

    require(max_new_tokens is not None or max_length is not None,
            "set --max_new_tokens, --max_length or both: generation needs a length limit")
    require(max_new_tokens is None or max_new_tokens >= 1, f"--max_new_tokens must be at least 1 (got {max_new_tokens})")
    longest = max(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i])
    require(max_length is None or prompt_lengths[longest] < max_length,
            f"question {longest + 1} has a {prompt_lengths[longest]}-token prompt, which leaves no room under "
            f"--max_length {max_length}; raise --max_length")
    limit = max_positions(model)
    budgets = row_budgets(prompt_lengths, max_new_tokens, max_length)
    worst = max(range(len(prompt_lengths)), key=lambda i: prompt_lengths[i] + budgets[i])
    if limit is not None and prompt_lengths[worst] + budgets[worst] > limit:
        raise UsageError(f"question {worst + 1} has a {prompt_lengths[worst]}-token prompt; with --max_new_tokens "
                         f"{max_new_tokens} and --max_length {max_length} it exceeds the model's {limit} positions; "
                         f"lower --max_new_tokens or set --max_length {limit}")


def score_generation(tokenizer, row: dict, index: int, output, pause_ids: Sequence[int],
                     pause_tokens: Sequence[str], special: Sequence[str]) -> dict:
    """One question's record: the raw completion (EOS dropped), its answer and both verdicts."""
    tokens = output.tokens[:-1] if output.stopped_at_eos else output.tokens
    text = tokenizer.decode(tokens, skip_special_tokens=False)
    predicted = predicted_answer(text, pause_tokens, special)
    return {
        "index": index, "question": row["question"], "generated_text": text,
        "predicted_answer": predicted, "ground_truth": row["ground_truth"],
        "correct": is_correct(predicted, row["ground_truth"], as_numbers=False),
        "correct_numeric": is_correct(predicted, row["ground_truth"]),
        "num_pauses": sum(tok in pause_ids for tok in output.tokens),
        "num_generated_tokens": output.num_generated, "stopped_at_eos": output.stopped_at_eos,
    }
