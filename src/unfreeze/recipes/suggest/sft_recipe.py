"""`unfreeze suggest --task sft`: which parameters to train for generative fine-tuning, by validation loss.

check every candidate's sft config -> read the data once -> each candidate's setup (`unfreeze sft`'s own) ->
a few measured steps and one validation of each -> predict the sweep that would run (setups, steps,
validations, x --seeds) -> successive halving within the budget, ranked by validation loss on the completion ->
(--score accuracy) the finalists answer GSM8K test questions -> the table, suggestion.json, a PNG and an sft
sweep file of the top candidates.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from unfreeze.config import to_dict
from unfreeze.errors import UsageError, require
from unfreeze.files import check_output_path
from unfreeze.lifecycle import Tracking, run_folder
from unfreeze.recipes.sft import recipe as sft_recipe
from unfreeze.recipes.sft import setup as sft_setup
from unfreeze.recipes.sft.config import SFTConfig
from unfreeze.recipes.suggest import candidates as cand
from unfreeze.recipes.suggest import cost, halving, sft_output
from unfreeze.recipes.suggest.config import SFTSuggestConfig
from unfreeze.recipes.suggest.recipe import SUGGESTION, WARMUP_STEPS, parse_budget, report_round
from unfreeze.recipes.suggest.sft_arms import SFTArm
from unfreeze.training.precision import resolve as resolve_precision
from unfreeze.training.sft_loop import SFTTraining


def candidate_config(cfg: SFTSuggestConfig, name: str) -> SFTConfig:
    """The sft run a candidate is: every sft key of the command, with the candidate's choice of what trains in place
    of the config's; it writes nothing (no checkpoints, no test, no export) and validates only when suggest asks."""
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(SFTConfig)}
    switches, words = cand.split_sft_candidate(name)
    folder = Path(cfg.out or ".") / "candidates" / sft_output.row_name(name)  # the accelerator's; nothing is saved
    values.update(switches, trainable_layers=words, out=str(folder), overwrite=False, eval_every=0, save_steps=0,
                  test=False, export=None, report_to="none", resume=False)
    return SFTConfig(**values)


def validate(cfg: SFTSuggestConfig) -> list[str]:
    """The search's options and every candidate's sft config (its words against the model's structure), before
    any work; returns the candidate names."""
    names = cand.parse_sft_candidates(cfg.candidates)
    parse_budget(cfg.budget)
    require(cfg.seeds >= 1, f"--seeds must be at least 1 (got {cfg.seeds})")
    require(cfg.eta >= 2, f"--eta must be at least 2 (got {cfg.eta})")
    require(cfg.top >= 1, f"--top must be at least 1 (got {cfg.top})")
    require(cfg.score_limit >= 1, f"--score_limit must be at least 1 (got {cfg.score_limit})")
    require(cfg.export is None, "--export is not taken by suggest --task sft; export the confirmed run with "
            "`unfreeze sft ... export=DIR` or `unfreeze export`")
    if cfg.write_sweep is not None:
        target = check_output_path(cfg.write_sweep, "--write_sweep", kind="file")
        require(not target.exists() or cfg.overwrite, f"--write_sweep {cfg.write_sweep} exists; pass --overwrite to "
                "replace it, or choose another file name")
    configs = [candidate_config(cfg, name) for name in names]
    sft_recipe.check_config(configs[0])  # the model's source (and its structure against the first candidate)
    model_config = sft_recipe.model_config_of(configs[0])
    for config in configs[1:]:
        sft_recipe.check_config(config, check_model=False)
        sft_setup.check_choice(config, lambda: model_config)
    return names


def run(cfg: SFTSuggestConfig) -> dict:
    """Check -> arms -> measured steps -> successive halving -> (accuracy of the finalists) -> outputs, in the one
    run lifecycle: an --out holding a suggestion is refused without --overwrite. Returns suggestion.json's content."""
    clock = cost.WorkClock()
    names = validate(cfg)
    with run_folder("suggest", cfg.out, cfg.overwrite, markers=(SUGGESTION,), tracking=Tracking.of(cfg)) as folder:
        log = folder.log
        read = sft_setup.read_data(candidate_config(cfg, names[0]), log)  # once: every candidate reads the same rows
        questions = test_questions(cfg) if cfg.score == "accuracy" else None  # a missing test file: said now
        arms = start_arms(cfg, names, read, log)
        clock.use_cpu = all(arm.uses_cpu_time for arm in arms)
        log.info(f"measuring: {WARMUP_STEPS} steps and a validation of each candidate ...")
        for arm in arms:  # what the plan's costs are measured on
            arm.advance(WARMUP_STEPS)
            arm.evaluate()
            log.info(f"candidate {arm.name}: {arm.step_cost():.2f}s per step, {arm.eval_cost():.1f}s per validation")
        planned = predict_sweep(cfg, arms)
        kind, value = parse_budget(cfg.budget)
        budget_s = value * planned["total_s"] if kind == "share" else value
        spent = clock if kind == "share" else clock.wall
        budget_name = f"{cfg.budget} ({budget_s:.1f}s in all)"
        halving.first_rung_steps(arms, budget_s - spent(), cfg.eta, budget_name)  # too small: one line, nothing written
        folder.start(to_dict(cfg))
        log.info(f"halving: {len(arms)} candidates, {budget_s - spent():.0f}s of the budget left; rounds keep "
                 f"1/{cfg.eta}, ranked by validation loss")
        result = halving.successive_halving(arms, budget_s - spent(), cfg.eta, budget_name, clock=spent,
                                            on_rung=lambda rung: report_round(rung, folder, log, by_loss=True),
                                            on_round=lambda count, target: log.info(
                                                f"round: training {count} candidate(s) to {target} steps ..."))
        sweep = predict_sweep(cfg, arms)  # again, from every step measured
        rows = sft_output.ranked_rows(arms, sweep["candidates"], result)
        if questions is not None:
            rows = score_finalists(cfg, rows, arms, questions, log)
        for arm in arms:
            arm.free()
        outcome = sft_output.outcome(cfg, rows, result, sweep, planned, budget_s, kind, clock)
        print(sft_output.render_table(rows))
        print(sft_output.summary_lines(outcome))
        if cfg.write_sweep is not None:
            text = sft_output.sweep_text(rows, cfg, cfg.top)
            sft_output.write_sweep(cfg.write_sweep, text)
            print(f"written: {cfg.write_sweep} (unfreeze sweep {cfg.write_sweep})")
        if folder.out is not None:
            sft_output.plot(rows, folder.out / "suggestion.png")
            folder.finish(outcome, file=SUGGESTION)
            print(f"written: {folder.out / SUGGESTION}, {folder.out / 'suggestion.png'}")
    return outcome


def start_arms(cfg: SFTSuggestConfig, names: list[str], read, log: logging.Logger) -> list[SFTArm]:
    """Each candidate's sft setup and loop, as `unfreeze sft` makes them (seeded alike), with its setup timed."""
    precision = resolve_precision(cfg.precision)
    quiet = candidate_logger(log)
    arms = []
    for name in names:
        config = candidate_config(cfg, name)
        accelerator = sft_recipe.accelerator_for(config, Path(config.out))
        log.info(f"candidate {name}: setting up its sft run")
        run, wall, cpu = cost.timed(lambda: sft_recipe.setup(config, accelerator, quiet, precision, None, read),
                                    accelerator.device.type != "cuda")
        loop = SFTTraining(run, sft_recipe.schedule(config), accelerator, quiet, progress=False)
        arms.append(SFTArm.start(name, config, loop, cost.work_seconds(wall, cpu), cfg.score == "accuracy"))
        log.info(f"candidate {name}: {run.trainable.trainable_params:,} trainable parameters, {run.total_steps} "
                 f"steps, cache {run.cache_info['kind']}")
    return arms


class _Once(logging.Filter):
    """Lets each message through once (every candidate reads the same data: its warnings are said once)."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        new = record.getMessage() not in self.seen
        self.seen.add(record.getMessage())
        return new


def candidate_logger(log: logging.Logger) -> logging.Logger:
    """The candidates' setups speak through suggest's log, warnings only and each once (their info lines, such as
    every trainable tensor, would repeat per candidate)."""
    quiet = log.getChild("candidate")
    quiet.setLevel(logging.WARNING)
    quiet.filters = [_Once()]
    return quiet


def evaluations_of_run(cfg: SFTConfig, total_steps: int) -> int:
    """Validation passes a full sft run makes: at the start (eval_at_start), every eval_every steps before the
    last, and after training."""
    periodic = (total_steps - 1) // cfg.eval_every if cfg.eval_every else 0
    return int(cfg.eval_at_start) + periodic + 1


def predict_sweep(cfg: SFTSuggestConfig, arms: list[SFTArm]) -> dict:
    """The exhaustive sft sweep (every candidate x --seeds): per run its setup, steps and validations (the test
    generation, when the config asks for it, is not predicted)."""
    per = {}
    for arm in arms:
        evals = evaluations_of_run(cfg, arm.total_steps)
        parts = {"setup_s": round(arm.setup_s, 3), "steps_s": round(arm.total_steps * arm.step_cost(), 3),
                 "evals_s": round(evals * arm.eval_cost(), 3), "evaluations": evals}
        per[arm.name] = {"run_s": round(parts["setup_s"] + parts["steps_s"] + parts["evals_s"], 3),
                         "parts": parts, "step_s": round(arm.step_cost(), 5)}
    total = cfg.seeds * sum(p["run_s"] for p in per.values())
    return {"candidates": per, "total_s": round(total, 2), "runs": cfg.seeds * len(arms), "seeds": cfg.seeds}


def test_questions(cfg: SFTSuggestConfig) -> list[dict]:
    """The GSM8K test questions the finalists answer (with their ground truth), read before any work."""
    from unfreeze.data.sft_data import data_files
    from unfreeze.recipes.eval_gsm8k.recipe import DEFAULT_PAUSE_TOKEN, load_questions, with_ground_truth

    beside = data_files(cfg.data)[1]
    data = cfg.test_data or (str(beside) if beside else None)
    if data is None:
        raise UsageError("--score accuracy needs GSM8K test questions: set test_data=FILE (or put test.jsonl beside "
                         "the training file)")
    rows = load_questions(data, cfg.score_limit)
    return with_ground_truth(rows, data, [cfg.pause_token or DEFAULT_PAUSE_TOKEN])


def score_finalists(cfg: SFTSuggestConfig, rows: list[dict], arms: list[SFTArm], questions: list[dict],
                    log: logging.Logger) -> list[dict]:
    """The --top rows by loss answer the test questions greedily with their current weights; they are then ordered
    by accuracy (ties: loss), ahead of the rest."""
    from unfreeze.recipes.eval_gsm8k.recipe import generate_and_score

    by_name = {arm.name: arm for arm in arms}
    finalists = rows[:cfg.top]
    for row in finalists:
        arm = by_name[row["name"]]
        model = arm.model.eval()
        with torch.no_grad():
            records, seconds = generate_and_score(model, questions, batch_size=cfg.test_batch_size,
                                                  max_new_tokens=cfg.max_new_tokens, max_length=cfg.test_max_length,
                                                  pause_temperature=0.0, device=arm.loop.accelerator.device,
                                                  progress=False, template=cfg.prompt_template)
        model.train()
        row["test_accuracy"] = round(sum(r["correct"] for r in records) / len(records), 4)
        row["test_questions"] = len(records)
        log.info(f"{row['name']}: test accuracy {row['test_accuracy']:.3f} on {len(records)} questions "
                 f"({seconds:.0f}s of generation)")
    finalists.sort(key=lambda r: (-r["test_accuracy"], r["val_loss"]))
    ranked = finalists + rows[cfg.top:]
    for rank, row in enumerate(ranked, start=1):
        row["rank"] = rank
    return ranked
