"""`unfreeze inject-pauses`: write GSM8K with pause tokens injected into the training answers.

The flags are those of the reference `gsm8k_pause_injector.py` (same names, same meanings), so its
usage line runs with the script name replaced. The injection rules are in `unfreeze.data.pauses`.

Output, in `--augm_dataset_save_location`: `train.json` (`--n_generated_samples_per_datapoint`
independently augmented copies of the training set, one after the other) and `test.json` (the test
set unchanged). Both are JSON arrays with one row per line, as `datasets.load_dataset("json", ...)`,
`json.load` and `pandas.read_json` all read them. Nothing is written until every row is ready; the
two files are written into a temporary folder beside the target and renamed into place last.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from pathlib import Path

from tqdm import tqdm

from unfreeze.data import pauses
from unfreeze.data.gsm8k import HUB_ID, gsm8k_download, load_gsm8k_split
from unfreeze.errors import UsageError
from unfreeze.files import atomic_write_folder as write_folder
from unfreeze.lifecycle import run_folder
from unfreeze.resources import free_memory_bytes
from unfreeze.recipes.inject_pauses.config import InjectPausesConfig

# ---------------------------------------------------------------- checking the flags (before any work)

EMPTY_PROBE = "a 1=\n"  # a pattern with a zero-width match at each of its 6 positions matches "everywhere"
OUTPUTS = ("train.json", "test.json")


def parse_pattern_flag(text: str) -> list[pauses.PatternRule]:
    try:
        counts = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"--n_pauses_per_patterns is not valid JSON ({err.msg}); "
                         "example: '{\"=\": 1, \"\\\\n\": 1}'") from None
    try:
        rules = pauses.compile_patterns(counts)
    except ValueError as err:
        raise UsageError(f"--n_pauses_per_patterns: {err}") from None
    for rule in rules:
        # A pattern matching the empty string at every position ('', 'x*') puts pauses between every two
        # characters of every answer: surely not meant, and the reference would do the same silently.
        if rule.n_pauses and len([m for m in rule.regex.finditer(EMPTY_PROBE) if m.start() == m.end()]) > len(EMPTY_PROBE):
            raise UsageError(f"--n_pauses_per_patterns: pattern {rule.pattern!r} matches the empty string everywhere, "
                             "so it would put pauses between every two characters; give text to match")
    return rules


def check_counts(args: InjectPausesConfig) -> None:
    for flag, value, minimum in (("--n_random_pauses", args.n_random_pauses, 0),
                                 ("--n_leading_pauses", args.n_leading_pauses, 0),
                                 ("--n_generated_samples_per_datapoint", args.n_generated_samples_per_datapoint, 1)):
        if value < minimum:
            raise UsageError(f"{flag} must be >= {minimum}, got {value}")


def check_names(args: InjectPausesConfig) -> None:
    """Text flags that would silently do something else when empty or misspelt."""
    if args.dataset_location is not None and not args.dataset_location.strip():
        raise UsageError("--dataset_location is empty: pass a folder with train/test files, or leave it out to download")
    column = args.pause_augm_col_name
    if not column or not column.strip():
        raise UsageError("--pause_augm_col_name is empty: name the column that receives the augmented answer")
    if column == "question":
        raise UsageError("--pause_augm_col_name question would overwrite the questions with augmented answers; "
                         "use 'answer' (replace the answer) or a new column name")


def check_memory(rows: list[dict], copies: int) -> None:
    """Refuse a number of copies whose rows cannot fit in memory (they are built before the write)."""
    free = free_memory_bytes()
    if free is None:
        return  # the OS does not say: no estimate
    per_copy = sum(len(row.get("question", "")) + 2 * len(row["answer"]) for row in rows)
    # Python strings, the rows' dicts and the final JSON text: peak memory measured at 5.4-5.5 bytes per
    # character (GSM8K train, 5 and 20 copies); 6 leaves a margin.
    needed = 6 * per_copy * copies
    if needed > free:
        raise UsageError(f"--n_generated_samples_per_datapoint {copies} would need about {needed / 2**30:.1f} GiB of "
                         f"memory, more than the {free / 2**30:.1f} GiB free; use fewer copies")


def check_answers(rows: list[dict], split: str, pause_token: str) -> None:
    for number, row in enumerate(rows, start=1):
        try:
            pauses.check_text_has_no_pause(row["answer"], pause_token)
        except ValueError:
            raise UsageError(f"--pause_token {pause_token!r} already occurs in the answer of {split} row "
                             f"{number}; choose a string that is not in the data") from None


def load_pause_tokenizer(name: str, pause_token: str):
    """The tokenizer whose boundaries are the random slots, with the pause added as a special token.

    Adding the pause as a special token keeps it one unbreakable token for this tokenizer, so anything
    that tokenises the augmented text (SFT) sees each pause whole, never split into sub-words.
    """
    if name in (None, "", "None", "none"):
        return None
    from unfreeze.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(name, flag="--tokenizer_hf_name")
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"--tokenizer_hf_name {name}: a fast tokenizer (tokenizer.json) is needed for "
                         "character offsets")
    tokenizer.add_tokens([pause_token], special_tokens=True)
    return tokenizer


def needed_downloads(args: InjectPausesConfig) -> list:
    """GSM8K unless --dataset_location is local; the tokenizer when random pauses use a hub one."""
    from unfreeze.models.loading import looks_local
    from unfreeze.offline import Download, hub_endpoint, hub_file_cached

    downloads = gsm8k_download(args.dataset_location, "--dataset_location FOLDER")
    name = args.tokenizer_hf_name
    if args.n_random_pauses > 0 and name not in (None, "", "None", "none") and not looks_local(name):
        downloads.append(Download(f"the tokenizer {name}", (hub_endpoint(),),
                                  hub_file_cached(name, ("tokenizer.json", "vocab.json")),
                                  "--tokenizer_hf_name FOLDER (or None: pauses between words)", hub=True))
    return downloads


# ---------------------------------------------------------------- the work

def augment_rows(rows: list[dict], plans: list[pauses.AnswerPlan], config: pauses.PauseConfig,
                 column: str, copies: int, rng: random.Random, show_progress: bool) -> tuple[list[dict], list[int]]:
    """`copies` augmented copies of all rows, in order copy by copy, and each row's pause count."""
    out_rows, counts = [], []
    with tqdm(total=copies * len(rows), desc="injecting pauses", unit="answer", disable=not show_progress,
              mininterval=0.5) as bar:
        for _copy in range(copies):
            for row, plan in zip(rows, plans):
                text, n_pauses = pauses.augment(plan, config, rng)
                # Dict order: the original columns first; "answer" is replaced in place when named.
                out_rows.append({**row, column: text})
                counts.append(n_pauses)
            bar.update(len(rows))
    return out_rows, counts


def json_array_text(rows: list[dict]) -> str:
    """A JSON array with one row per line: valid JSON, diffable, and deterministic."""
    if not rows:
        return "[]\n"
    return "[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n]\n"


def summary(n_train: int, n_test: int, counts: list[int], target: Path, seconds: float) -> str:
    mean = sum(counts) / len(counts) if counts else 0.0
    low, high = (min(counts), max(counts)) if counts else (0, 0)
    return (f"wrote {n_train} training rows and {n_test} test rows to {target} in {seconds:.1f}s; "
            f"pauses per training answer: mean {mean:.3f}, min {low}, max {high}")


def run(args: InjectPausesConfig) -> int:
    started = time.perf_counter()
    # 1. Every flag is checked before the data is read and before anything is written.
    try:
        pauses.check_pause_token(args.pause_token)
    except ValueError as err:
        raise UsageError(f"--pause_token: {err}") from None
    rules = parse_pattern_flag(args.n_pauses_per_patterns)
    check_counts(args)
    check_names(args)
    # A folder holding train.json and test.json is a finished run: replaced only with --overwrite, and then
    # only when the new files are ready (write_folder renames each into place). One run per folder at a time.
    with run_folder("inject-pauses", args.augm_dataset_save_location, args.overwrite, downloads=needed_downloads(args),
                    flag="--augm_dataset_save_location", markers=OUTPUTS, log_file=False):
        return _inject(args, rules, started)


def _inject(args: InjectPausesConfig, rules: list[pauses.PatternRule], started: float) -> int:
    target = Path(args.augm_dataset_save_location).expanduser()
    if args.verbose:
        print("Summary of parameters:")
        for name, value in dataclasses.asdict(args).items():
            print(f"  {name}: {value}")
    config = pauses.PauseConfig(pause_token=args.pause_token, rules=tuple(rules), n_random=args.n_random_pauses,
                                variable=args.variable_number_of_pauses, n_leading=args.n_leading_pauses)
    # A missing seed is drawn and printed, so even an unseeded run can be repeated exactly.
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    if args.seed is None:
        print(f"no --seed given; using --seed {seed}")

    # 2. Data and tokenizer.
    location = args.dataset_location
    if location is not None and location != HUB_ID and Path(location).expanduser().is_file():
        raise UsageError(f"--dataset_location {location}: expected a folder holding train and test files")
    train = load_gsm8k_split(location, "train", flag="--dataset_location")
    test = load_gsm8k_split(location, "test", flag="--dataset_location")
    check_answers(train, "train", args.pause_token)
    check_memory(train, args.n_generated_samples_per_datapoint)
    if args.verbose:
        print(f"loaded {len(train)} training and {len(test)} test rows")
    tokenizer = load_pause_tokenizer(args.tokenizer_hf_name, args.pause_token) if config.n_random > 0 else None
    if args.verbose and config.n_random > 0:
        print("random slots: " + ("token boundaries of " + args.tokenizer_hf_name if tokenizer is not None
                                  else "before each space"))

    # 3. Each answer is tokenised once; its slots serve every copy.
    plans = pauses.plan_answers([row["answer"] for row in train], config, tokenizer)
    rng = random.Random(seed)
    show_progress = args.verbose or sys.stderr.isatty()
    augmented, counts = augment_rows(train, plans, config, args.pause_augm_col_name,
                                     args.n_generated_samples_per_datapoint, rng, show_progress)
    if args.verbose and augmented:
        print("a training row:", json.dumps(augmented[0], ensure_ascii=False))

    # 4. Publish both files together, last.
    write_folder(target, {"train.json": json_array_text(augmented), "test.json": json_array_text(test)})
    print(summary(len(augmented), len(test), counts, target, time.perf_counter() - started))
    return 0
