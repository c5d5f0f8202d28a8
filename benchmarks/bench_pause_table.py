"""The pause table (seed 003), reduced to a real small model on this machine: the exhaustive sweep of
`experiments/pause_warmup.yaml` against `unfreeze suggest --task sft --candidates pause_table`.

    python benchmarks/bench_pause_table.py [--model smollm2] [--train_limit 48] [--val_fraction 0.1] [--test_rows 8]
        [--max_length 256] [--batch_size 4] [--budget 0.2] [--out runs/bench_pause_table]

1. a GSM8K subset (`--train_limit` training rows) and its random-pause copy (`unfreeze inject-pauses`, one
   sample per question, pauses between words);
2. the sweep of every row of experiments/pause_warmup.yaml (seed 42, one seed): the step-1 LoRA model, the
   2-epoch baseline, and the 19 pause rows from the step-1 model, with the rows' own settings except those a
   CPU and this size need: fp32, the subset, max_length, batch size, no test generation (eval loss is the
   column that can separate rows at this size), no checkpoints, keep=last;
3. `unfreeze suggest --task sft --candidates pause_table` from the same step-1 model with the same settings
   (experiments/pause/sft.yaml), its budget a share of those 18 rows' sweep;
4. both tables in the seed's layout, Spearman of suggest's order against the sweep's eval loss, regret, and
   suggest's wall time against the 18 rows' sweep.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suggest import drive_timed  # noqa: E402

from unfreeze.cli import main as cli  # noqa: E402
from unfreeze.config import parse_args  # noqa: E402
from unfreeze.files import read_json  # noqa: E402
from unfreeze.recipes.suggest import cost  # noqa: E402
from unfreeze.recipes.suggest.config import SFTSuggestConfig  # noqa: E402
from unfreeze.recipes.suggest.sft_recipe import run as run_suggest  # noqa: E402
from unfreeze.recipes.suggest.signals import spearman  # noqa: E402
from unfreeze.sweep.executors import final_dir  # noqa: E402
from unfreeze.sweep.spec import load_sweep, parse_overrides  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k"
SEED = 42


def row_of(candidate: str) -> str:
    """A pause_table candidate -> the seed table's row name (the rows as their names mean)."""
    terms = set(candidate.split("+"))
    pause = {frozenset({"pause_embedding", "pause_head"}): "sft", frozenset({"pause_embedding"}): "sft_fr_phead",
             frozenset({"pause_head"}): "sft_fr_pembed"}[frozenset(terms & {"pause_embedding", "pause_head"})]
    lm = "_unfr_lm_head_embed" if "lm_embeddings" in terms else "_unfr_lm_head" if "lm_head" in terms else ""
    return pause + lm + ("_peft" if "peft" in terms else "")


def make_data(folder: Path, train_rows: int, test_rows: int) -> tuple[Path, Path]:
    plain = folder / "gsm8k"
    plain.mkdir(parents=True)
    for name, count in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        lines = (GSM8K / name).read_text(encoding="utf-8").splitlines()[:count]
        (plain / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    pauses = folder / "pauses"
    code = cli(["inject-pauses", "--dataset_location", str(plain), "--pause_token", "<|pause|>",
                "--n_pauses_per_patterns", "{}", "--augm_dataset_save_location", str(pauses),
                "--pause_augm_col_name", "answer", "--n_random_pauses", "10", "--variable_number_of_pauses",
                "--n_generated_samples_per_datapoint", "1", "--seed", str(SEED)])
    if code:
        raise SystemExit("inject-pauses failed")
    return plain, pauses


def shared_settings(args) -> list[str]:
    return ["precision=fp32", f"val_fraction={args.val_fraction}", f"max_length={args.max_length}",
            f"batch_size={args.batch_size}",
            f"eval_batch_size={args.batch_size}", "test=false", "eval_every=0", "save_steps=0", "keep=last",
            "report_to=none"]


def run_sweep(args, model: str, plain: Path, pauses: Path, out: Path) -> dict:
    overrides = parse_overrides([*shared_settings(args), f"step1_sft:model={model}",
                                 f"baseline_peft_2_epochs:model={model}", f"step1_sft:data={plain}",
                                 f"baseline_peft_2_epochs:data={plain}", f"sft*:data={pauses}"])
    sweep = load_sweep(REPO / "experiments" / "pause_warmup.yaml", overrides, seeds=[SEED])

    (times, counts), wall, _ = cost.timed(lambda: drive_timed(sweep, out))
    if counts["failed"]:
        raise SystemExit(f"the sweep had {counts['failed']} failed run(s): see {out}/failed.json")
    rows = {}
    for row in sweep.rows:
        metrics = read_json(final_dir(out, row.name, SEED) / "metrics.json")
        rows[row.name] = {"eval_loss": metrics["eval_loss"], "wall_s": times[(row.name, SEED)][0],
                          "switches": {k: row.config.get(k) for k in ("unfreeze_pause_embedding",
                                       "unfreeze_pause_head", "unfreeze_lm_head", "unfreeze_lm_embeddings", "lora")},
                          "published": row.published}
    return {"rows": rows, "wall_s": wall}


def run_suggestion(args, pauses: Path, step1: Path, out: Path) -> dict:
    base = yaml.safe_load((REPO / "experiments" / "pause" / "sft.yaml").read_text())
    base.update(model=str(step1), data=str(pauses))
    path = out.parent / "suggest_base.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False), encoding="utf-8")
    cfg = parse_args(SFTSuggestConfig, [str(path), *shared_settings(args), "--candidates", "pause_table", "--seeds",
                                        "1", "--budget", args.budget, "--out", str(out)], "unfreeze suggest",
                     positional=("config",))
    result, wall, cpu = cost.timed(lambda: run_suggest(cfg))
    result["bench_wall_s"] = wall
    return result


def tables(sweep: dict, result: dict) -> str:
    mark = {True: "✓", False: "", None: ""}
    lines = ["| Unfreeze Pause Embedding | Unfreeze Pause Head | Unfreeze LM head | Unfreeze LM Embeddings | LORA | "
             "Eval Loss (sweep) | suggest rank | suggest val loss (steps) | published eval loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    by_row = {row_of(r["name"]): r for r in result["candidates"]}
    for name, row in sweep["rows"].items():
        s, pick = row["switches"], by_row.get(name)
        ranked = (f"{pick['rank']} | {pick['val_loss']:.4f} ({pick['steps']}/{pick['total_steps']})" if pick
                  else "- | -")
        published = row["published"].get("eval_loss", "-") if row["published"] else "-"
        lines.append(f"| {' | '.join(mark[s[k]] for k in s)} | {row['eval_loss']:.4f} | {ranked} | {published} |"
                     f" <!-- {name} -->")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--train_limit", type=int, default=48)
    parser.add_argument("--val_fraction", type=float, default=0.1)
    parser.add_argument("--test_rows", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--budget", default="0.2")
    parser.add_argument("--out", default="runs/bench_pause_table")
    args = parser.parse_args()
    from unfreeze.models.gguf import resolve_alias

    folder = Path(args.out).resolve()
    if folder.exists():
        raise SystemExit(f"--out {folder} exists; choose a new folder (the benchmark times fresh runs)")
    plain, pauses = make_data(folder / "data", args.train_limit, args.test_rows)
    sweep = run_sweep(args, resolve_alias(args.model), plain, pauses, folder / "sweep")
    result = run_suggestion(args, pauses, final_dir(folder / "sweep", "step1_sft", SEED) / "final",
                            folder / "suggest")
    names = [r["name"] for r in result["candidates"]]
    swept = {n: sweep["rows"][row_of(n)]["eval_loss"] for n in names}
    rank = {r["name"]: r["rank"] for r in result["candidates"]}
    best = min(swept.values())
    eighteen_s = sum(sweep["rows"][row_of(n)]["wall_s"] for n in names)
    summary = {"spearman": round(spearman([rank[n] for n in names], [swept[n] for n in names]), 4),
               "pick": result["pick"], "pick_row": row_of(result["pick"]),
               "sweep_best_row": row_of(min(swept, key=swept.get)),
               "regret": round((swept[result["pick"]] - best) / best, 5),
               "suggest_wall_s": round(result["bench_wall_s"], 1), "sweep_18_rows_wall_s": round(eighteen_s, 1),
               "compute_ratio": round(result["bench_wall_s"] / eighteen_s, 4),
               "sweep_all_rows_wall_s": round(sweep["wall_s"], 1)}
    print("\n" + tables(sweep, result))
    print("\n" + json.dumps(summary, indent=1))
    (folder / "bench.json").write_text(json.dumps({"summary": summary, "sweep": sweep, "suggest": result},
                                                  indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
