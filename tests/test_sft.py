"""`unfreeze sft`: data preparation, the recipe end to end, bad input, accelerate launch, real GSM8K."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pause_helpers import (GPT2_BPE, GSM8K, PAUSE, insert_pauses_between_tokens, save_tiny_tokenizer, tiny_tokenizer,
                           toy_rows, write_rows)
from unfreeze.cli import main as cli_main
from unfreeze.data import sft_data
from unfreeze.errors import UsageError
from unfreeze.recipes.sft.recipe import load_config
from unfreeze.recipes.sft.recipe import run as run_config
from unfreeze.recipes.sft.config import SFTConfig

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"n_layer": 2, "n_embd": 32, "n_head": 2}  # vocab_size follows the tokenizer


# --- data ---------------------------------------------------------------------------------------------


def _without(ids, drop):
    return [i for i in ids if i != drop]


def test_dropping_pauses_gives_the_original_tokens_tiny_tokenizer():
    tokenizer = tiny_tokenizer()
    from unfreeze.models.control.tokens import register_control_tokens

    (pause_id,) = register_control_tokens(tokenizer, [PAUSE], len(tokenizer))
    for with_pause, plain in zip(toy_rows(50, pauses=True), toy_rows(50, pauses=False)):
        a = sft_data.encode_example(tokenizer, with_pause["question"], with_pause["answer"], 600, [PAUSE])
        b = sft_data.encode_example(tokenizer, plain["question"], plain["answer"], 600)
        assert pause_id in a.input_ids
        assert _without(a.input_ids, pause_id) == b.input_ids
        assert _without(a.labels, pause_id) == b.labels


@pytest.mark.skipif(not (GPT2_BPE.is_dir() and GSM8K.is_dir()), reason="../shared/data not present")
def test_dropping_pauses_gives_the_original_tokens_gpt2_bpe_on_gsm8k():
    """Pauses inserted between BPE tokens (as inject-pauses does); prompt + answer tokenised apart."""
    from unfreeze.models.control.tokens import register_control_tokens
    from unfreeze.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(str(GPT2_BPE))
    (pause_id,) = register_control_tokens(tokenizer, [PAUSE], 50257)
    rows = sft_data.read_rows(GSM8K / "train.jsonl")[:300]
    rng = random.Random(0)
    checked = 0
    for row in rows:
        if not row["answer"].isascii():  # a pause inside a multi-byte character cannot be decoded to text
            continue
        augmented = insert_pauses_between_tokens(tokenizer, row["answer"], rng, pause_id)
        a = sft_data.encode_example(tokenizer, row["question"], augmented, 10_000, [PAUSE])
        b = sft_data.encode_example(tokenizer, row["question"], row["answer"], 10_000, [PAUSE])
        assert _without(a.input_ids, pause_id) == b.input_ids, augmented
        assert _without(a.labels, pause_id) == b.labels
        # ... and the pauses sit where the tokenizer itself would put them
        assert a.input_ids[-len(a.input_ids) + len(sft_data.encode_prompt(tokenizer, row["question"])):-1] == \
            tokenizer(augmented, add_special_tokens=False).input_ids
        checked += 1
    assert checked > 250


def test_dropping_pauses_gives_the_original_tokens_with_a_word_prefix_tokenizer():
    """SentencePiece-style tokenizers that prefix the text after every special token with a word marker
    would turn "Nat<|pause|>alia" into Nat, <|pause|>, _alia; cutting the pauses out first avoids it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from unfreeze.models.control.tokens import register_control_tokens

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    core.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    texts = [row["answer"] for row in toy_rows(200, pauses=False)]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    (pause_id,) = register_control_tokens(tokenizer, [PAUSE], len(tokenizer))
    for with_pause, plain in zip(toy_rows(30, pauses=True), toy_rows(30, pauses=False)):
        a = sft_data.encode_answer(tokenizer, with_pause["answer"], [PAUSE])
        b = sft_data.encode_answer(tokenizer, plain["answer"], [PAUSE])
        assert pause_id in a and _without(a, pause_id) == b
    # The tokenizer's own handling of the special token breaks the property inside a word:
    word = "apples"
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(word, add_special_tokens=False).input_ids)
    cut = len(pieces[0].lstrip("\u2581"))
    assert 0 < cut < len(word)
    augmented = word[:cut] + PAUSE + word[cut:]
    native = tokenizer(augmented, add_special_tokens=False).input_ids
    assert _without(native, pause_id) != tokenizer(word, add_special_tokens=False).input_ids
    ours = sft_data.encode_answer(tokenizer, augmented, [PAUSE])[:-1]
    assert ours[1] == pause_id and _without(ours, pause_id) == tokenizer(word, add_special_tokens=False).input_ids


def test_loss_only_on_the_completion_and_truncation_is_counted():
    tokenizer = tiny_tokenizer()
    example = sft_data.encode_example(tokenizer, "Q?", "A1", 600)
    prompt = "### INPUT: Q?\n\n ### Answer:"
    assert example.input_ids == tokenizer(prompt).input_ids + tokenizer("A1").input_ids + [tokenizer.eos_token_id]
    assert example.labels == [-100] * len(prompt) + example.input_ids[len(prompt):]
    rows = [{"question": "Q?", "answer": "A" * 50}, {"question": "Q" * 100, "answer": "A"},
            {"question": "Q", "answer": "B"}]
    encoded = sft_data.encode_rows(tokenizer, rows, max_length=40)
    assert (encoded.n_truncated, encoded.n_dropped, len(encoded.examples)) == (2, 1, 2)
    batch = sft_data.Collator(pad_id=0)(encoded.examples)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 40)
    assert batch["attention_mask"][1].sum() == len(encoded.examples[1].input_ids)


def test_data_files_rows_and_split(tmp_path):
    rows = toy_rows(30)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "train.json").write_text(json.dumps(rows, indent=2))  # the reference's JSON array
    write_rows(tmp_path / "p" / "test.json", rows[:3])
    write_rows(tmp_path / "g" / "train.jsonl", rows)
    assert sft_data.data_files(str(tmp_path / "p")) == (tmp_path / "p" / "train.json", tmp_path / "p" / "test.json")
    assert sft_data.data_files(str(tmp_path / "g")) == (tmp_path / "g" / "train.jsonl", None)
    assert sft_data.read_rows(tmp_path / "p" / "train.json") == sft_data.read_rows(tmp_path / "g" / "train.jsonl")
    train, val = sft_data.split_train_val(rows, 0.1, seed=1)
    assert (len(train), len(val)) == (27, 3)
    assert sft_data.split_train_val(rows, 0.1, seed=1) == (train, val) != sft_data.split_train_val(rows, 0.1, seed=2)
    with pytest.raises(UsageError, match="expected train.json"):
        sft_data.data_files(str(tmp_path))
    write_rows(tmp_path / "aug.json", [{"question": "q", "answer": "a", "pause_augmented_answer": f"{PAUSE}a"}])
    augmented = sft_data.read_rows(tmp_path / "aug.json", "pause_augmented_answer")
    assert augmented == [{"question": "q", "answer": f"{PAUSE}a"}]
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(UsageError, match="lacks string fields"):
        sft_data.read_rows(tmp_path / "bad.jsonl")


# --- config -------------------------------------------------------------------------------------------


def test_config_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-4\nlora: false\nprompt_column: no\nlora_r: 4\n")
    config = load_config(str(path), ["lora=true", "lr=3e-4", "pause_token=null", "test_limit=5"], out="o")
    assert (config.lora, config.lr, config.pause_token, config.test_limit, config.out) == (True, 3e-4, None, 5, "o")
    assert config.prompt_column == "no" and config.lora_rank == 4  # YAML `no` stays text; lora_r is lora_rank
    config = load_config(str(path), ["prompt_column=no", 'model_config={"n_layer": 2}', "pause_token=<|x|>",
                                     "gradient_accumulation_steps=3"])
    assert (config.prompt_column, config.model_config, config.pause_token) == ("no", '{"n_layer": 2}', "<|x|>")
    assert config.accumulation_steps == 3  # the reference's name for it
    with pytest.raises(UsageError, match="mixed_precision was replaced by precision"):
        load_config(str(path), ["mixed_precision=bf16"])
    both = tmp_path / "both.yaml"
    both.write_text("lora_r: 4\nlora_rank: 8\n")
    with pytest.raises(UsageError, match="lora_r and lora_rank in config file .* are the same option"):
        load_config(str(both))
    with pytest.raises(UsageError, match="unknown key.*learning_rate"):
        load_config(str(path), ["learning_rate=1"])
    with pytest.raises(UsageError, match="not key=value"):
        load_config(str(path), ["lora"])


SEED_FLAGS = ("unfreeze_pause_embedding", "unfreeze_pause_head", "unfreeze_lm_head", "unfreeze_lm_embeddings", "lora")


def test_experiment_files_match_the_seed_table():
    folder = REPO / "experiments" / "pause"
    files = sorted(p.stem for p in folder.glob("*.yaml"))
    assert len(files) == 20 and {"step_1_sft", "step_1_sft_2epochs"} <= set(files)
    for name in files:
        config = load_config(str(folder / f"{name}.yaml"), out="x")
        if name.startswith("step_1"):
            assert config.pause_token is None and config.lora and config.merge_lora
            assert config.num_epochs == (2 if "2epochs" in name else 1)
            continue
        expected = ("fr_pembed" not in name, "fr_phead" not in name, "unfr_lm_head" in name,
                    "lm_head_embed" in name, name.endswith("peft"))
        assert tuple(getattr(config, flag) for flag in SEED_FLAGS) == expected, name
        assert config.pause_token == PAUSE and config.lr == 5e-5 and config.batch_size == 8


# --- the recipe -----------------------------------------------------------------------------------------


def _tiny_config(tmp_path: Path, data: Path, **overrides) -> Path:
    tokenizer = tmp_path / "tok"
    if not tokenizer.exists():
        save_tiny_tokenizer(tokenizer)
    values = {"model": "gpt2", "weights": "random", "model_config": json.dumps(TINY_MODEL),
              "tokenizer": str(tokenizer), "data": str(data), "pause_token": PAUSE,
              "unfreeze_pause_embedding": True, "unfreeze_pause_head": True, "batch_size": 4, "lr": 1e-2,
              "eval_every": 3, "log_every": 2, "max_length": 256}
    values.update(overrides)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_sft_end_to_end_writes_metrics_last_and_a_loadable_model(tmp_path, pause_data, capsys):
    from unfreeze.models.control.tokens import ControlTokenLM

    out = tmp_path / "run"
    assert cli_main(["sft", str(_tiny_config(tmp_path, pause_data)), "eval_at_start=true", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("eval_loss", "eval_lm_loss", "eval_pause_loss", "train_time_s", "trainable_params",
                "total_params", "trainable_tensors", "n_train", "n_val"):
        assert key in metrics
    assert (metrics["n_train"], metrics["n_val"]) == (36, 4)
    assert metrics["trainable_tensors"] == ["control_embeddings", "pause_head.weight", "pause_head.bias"]
    assert metrics["trainable_params"] == 32 + 2 * 32 + 2
    # The LM loss is recorded per normal-token label (the reference's), the others per labelled position.
    assert 0 < metrics["eval_normal_tokens"] < metrics["eval_tokens"]
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_lm_loss"] * metrics["eval_normal_tokens"]
                                                 / metrics["eval_tokens"] + metrics["eval_pause_loss"])
    for record in metrics["train_history"]:  # logged the same way; the loss trained on is unchanged
        assert record["train_lm_loss"] > record["train_loss"] - record["train_pause_loss"] + 1e-4
    assert metrics["eval_pause_loss"] < metrics["initial_eval_pause_loss"]
    assert json.loads((out / "config.json").read_text())["lr"] == 1e-2
    log = (out / "run.log").read_text()
    assert "trainable: pause_embedding, pause_head -> 3 tensors" in log and "control_embeddings [1, 32]" in log
    model = ControlTokenLM.from_pretrained(str(out / "final"))
    assert model.control_tokens == [PAUSE] and not model.has_lora


def test_step_1_lora_merged_then_step_2_from_its_folder(tmp_path, pause_data):
    plain = tmp_path / "gsm8k"
    write_rows(plain / "train.jsonl", toy_rows(24, pauses=False))
    step1 = tmp_path / "step1"
    config = SFTConfig(**{**yaml.safe_load(_tiny_config(tmp_path, plain).read_text()), "pause_token": None,
                          "unfreeze_pause_embedding": False, "unfreeze_pause_head": False, "lora": True,
                          "merge_lora": True, "lora_rank": 4, "out": str(step1)})
    metrics = run_config(config)
    assert metrics["eval_pause_loss"] == 0.0 and all(".lora_" in name for name in metrics["trainable_tensors"])
    assert not (step1 / "final" / "adapter").exists()  # merged
    assert json.loads((step1 / "final" / "control_tokens.json").read_text())["control_tokens"] == []
    step2 = tmp_path / "step2"
    path = _tiny_config(tmp_path, pause_data, model=str(step1 / "final"), weights="pretrained",
                        model_config=None, tokenizer=None, unfreeze_pause_embedding=False, lora=True, lora_rank=4)
    metrics = run_config(load_config(str(path), out=str(step2)))
    assert "pause_head.weight" in metrics["trainable_tensors"]
    assert "control_embeddings" not in metrics["trainable_tensors"]
    assert (step2 / "final" / "adapter").is_dir()


def test_test_metrics_are_merged_and_metrics_json_comes_last(tmp_path, pause_data, monkeypatch):
    """`test: true` calls the GSM8K evaluation on <out>/final (a stub here) before metrics.json exists."""
    import types

    from unfreeze.recipes.eval_gsm8k.recipe import EvalConfig

    calls = []

    def evaluate(config, folder, **kwargs):
        calls.append((config.model, config.data, config.limit, config.batch_size, config.max_new_tokens))
        assert (Path(config.model) / "control_tokens.json").exists()
        assert not (Path(config.out) / "metrics.json").exists()
        return [{"question": "q"}], {"test_accuracy": 0.25, "num_correct": 1}

    stub = types.ModuleType("unfreeze.recipes.eval_gsm8k.recipe")
    stub.evaluate, stub.EvalConfig, stub.RESULTS_FILE = evaluate, EvalConfig, "test_results.json"
    monkeypatch.setitem(sys.modules, "unfreeze.recipes.eval_gsm8k.recipe", stub)
    out = tmp_path / "run"
    path = _tiny_config(tmp_path, pause_data, test=True, test_limit=3, max_new_tokens=7, test_batch_size=2,
                        train_limit=12)
    metrics = run_config(load_config(str(path), out=str(out)))
    assert calls == [(str(out / "final"), str(pause_data / "test.json"), 3, 2, 7)]
    assert json.loads((out / "test_results.json").read_text()) == [{"question": "q"}]
    assert metrics["test_accuracy"] == 0.25 and metrics["test_num_correct"] == 1
    assert json.loads((out / "metrics.json").read_text()) == metrics


@pytest.mark.parametrize("overrides, message", [
    (["learning_rate=1"], "unknown key"),
    (["unfreeze_pause_embedding=false", "unfreeze_pause_head=false"], "nothing left to train"),
    (["pause_token=null"], "need a control token"),
    (["lora_target_modules=q_proj"], "lora_target_modules"),
    (["model=MISSING/final", "weights=pretrained", "model_config=null"], "final: no such folder"),
    (["report_to=comet"], "not one of"),
    (["precision=bf16-pure", "mixed_precision=bf16"], "mixed_precision was replaced by precision"),
    (["dtype=bfloat16"], "dtype was replaced by precision"),
    (["keep=first"], "not one of"),
])
def test_bad_input_exits_2_without_metrics(tmp_path, pause_data, capsys, overrides, message):
    if overrides[-1] == "lora_target_modules=q_proj":
        overrides = ["lora=true", *overrides]
    overrides = [o.replace("MISSING", str(tmp_path / "missing")) for o in overrides]
    out = tmp_path / "run"
    assert cli_main(["sft", str(_tiny_config(tmp_path, pause_data)), *overrides, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "metrics.json").exists()


def test_corrupt_model_folder_exits_2(tmp_path, pause_data, capsys):
    from pause_helpers import tiny_model

    folder = tmp_path / "saved"
    tiny_model().save_pretrained(folder)
    (folder / "control_tokens.json").write_text("{")
    path = _tiny_config(tmp_path, pause_data, model=str(folder), weights="pretrained", model_config=None,
                        tokenizer=None)
    assert cli_main(["sft", str(path), "--out", str(tmp_path / "run")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_gradient_clipping_is_applied(tmp_path, pause_data):
    """Clipped to a norm far below AdamW's eps, every update shrinks to ~lr * 1e-4 and the model stays
    where it started; unclipped, the same run moves."""
    moved = {}
    for norm in (0.0, 1e-12):
        path = _tiny_config(tmp_path, pause_data, max_grad_norm=norm, eval_at_start=True, eval_every=0,
                            train_limit=20)
        metrics = run_config(load_config(str(path), out=str(tmp_path / f"clip_{norm}")))
        moved[norm] = abs(metrics["eval_loss"] - metrics["initial_eval_loss"])
    assert moved[0.0] > 0.05 and moved[1e-12] < 1e-4, moved


def test_the_learning_rate_follows_the_linear_schedule(tmp_path, pause_data):
    """The rate the optimizer uses after each step: warm-up to lr over 2 steps, then linear decay to 0."""
    path = _tiny_config(tmp_path, pause_data, warmup_steps=2, log_every=1, eval_every=0, train_limit=20)
    metrics = run_config(load_config(str(path), out=str(tmp_path / "run")))
    total = metrics["optimizer_steps"]
    assert total == 5  # 18 training examples / 4 per batch
    expected = [1e-2 * (step / 2 if step < 2 else (total - step) / (total - 2)) for step in range(1, total + 1)]
    assert [record["lr"] for record in metrics["train_history"]] == pytest.approx(expected, abs=1e-12)


def test_stored_numbers_of_a_tiny_run(tmp_path, pause_data):
    """The whole recipe (LoRA + pause embedding + pause head + LM head, accumulation, warm-up, clipping,
    dropout) on a tiny random model with a fixed seed gives these final losses; any change to the
    recipe's arithmetic shows up here."""
    path = _tiny_config(tmp_path, pause_data, lora=True, lora_r=2, unfreeze_lm_head=True, warmup_steps=1,
                        gradient_accumulation_steps=2, max_grad_norm=0.5, eval_every=0, seed=7)
    metrics = run_config(load_config(str(path), out=str(tmp_path / "run")))
    stored = {"eval_loss": 5.406735514546488, "eval_lm_loss": 4.890365862165178, "eval_pause_loss": 0.7044606470799708}
    assert {key: metrics[key] for key in stored} == pytest.approx(stored, rel=1e-5)


def test_data_without_pauses_warns(tmp_path, capsys):
    plain = tmp_path / "gsm8k"
    write_rows(plain / "train.jsonl", toy_rows(12, pauses=False))
    out = tmp_path / "run"
    assert cli_main(["sft", str(_tiny_config(tmp_path, plain)), "max_length=100", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "contains '<|pause|>'" in err and "will only learn never to pause" in err
    assert "are longer than max_length=100 tokens and were cut" in err
    assert json.loads((out / "metrics.json").read_text())["n_truncated"] > 0


def test_accelerate_launch_two_cpu_processes(tmp_path, pause_data):
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    if accelerate is None:
        pytest.skip("accelerate launcher not installed")
    out = tmp_path / "run"
    path = _tiny_config(tmp_path, pause_data, lora=True, lora_r=4, train_limit=24, eval_every=0)
    # `accelerate launch --cpu` alone starts ONE process unless MPI is set up; torchrun-style launching
    # (--multi_gpu) with ACCELERATE_USE_CPU gives two real processes talking over gloo.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
         "no", "--dynamo_backend", "no", "-m", "unfreeze", "sft", str(path), "--out", str(out)],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_processes"] == 2 and metrics["n_train"] == 22
    assert metrics["optimizer_steps"] == 3  # 22 rows / (4 per batch x 2 processes), rounded up


@pytest.mark.integration
@pytest.mark.skipif(not GSM8K.is_dir(), reason="../shared/data not present")
def test_pause_loss_falls_on_pause_injected_gsm8k(tmp_path):
    """`unfreeze sft` on a few hundred real GSM8K rows with random pauses between tokens, a tiny random
    GPT-2 and the byte-level tokenizer (a 50k-token LM head would dominate the run time on 2 CPU cores)."""
    from unfreeze.models.control.tokens import register_control_tokens

    tokenizer = tiny_tokenizer()
    (pause_id,) = register_control_tokens(tokenizer, [PAUSE], len(tokenizer))
    rng = random.Random(42)
    rows = [r for r in sft_data.read_rows(GSM8K / "train.jsonl")[:300] if r["answer"].isascii()][:240]
    data = tmp_path / "pauses"
    write_rows(data / "train.json", [
        {"question": r["question"], "answer": insert_pauses_between_tokens(tokenizer, r["answer"], rng, pause_id)}
        for r in rows])
    out = tmp_path / "run"
    path = _tiny_config(tmp_path, data, batch_size=8, lr=0.05, eval_every=0, eval_at_start=True, max_length=600)
    assert cli_main(["sft", str(path), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_dropped"] == 216
    assert metrics["eval_pause_loss"] < 0.5 * metrics["initial_eval_pause_loss"], metrics
