"""`unfreeze classify` against the reference's own code (LLMs-from-scratch ch06), on identical inputs.

    pip install --no-deps llms-from-scratch      # the reference's building blocks (ch04, ch06, appendix_e)
    python benchmarks/bench_vs_reference.py [--rows last_layer last_block all lora] [--epochs 5]
                                            [--subset N] [--results runs/bench_vs_reference] [--device cuda]

Both tools get exactly the same inputs:
  * the same split: `unfreeze.data.sms_spam` cuts ../shared/data/sms_spam/SMSSpamCollection as the
    reference does and writes train/validation/test.csv once; both tools read those CSVs (`--subset N`
    keeps the first N training and max(8, N/4) validation and test examples);
  * the same token ids: GPT-2 BPE from ../shared/data/gpt2_bpe, for the reference through the
    `.encode(text)` its SpamDataset calls, for unfreeze through `--tokenizer`;
  * the same weights: a GPT-2-small-shaped model with random weights (transformers' initialisation,
    seeded; no pretrained download is possible offline) saved as a Hugging Face folder for
    `unfreeze classify --model_size FOLDER --weights pretrained`, and converted into the reference's
    `GPTModel` (checked: both give the same logits, max |difference| < 1e-4, before anything runs).

Then, row by row, the reference's loop runs in this process with its own functions and the setup of
`additional_experiments.py` (freeze everything, seed 123, new `Linear(emb, 2)` head, unfreeze the
last block and final norm for last_block, everything for all, `replace_linear_with_lora` for lora;
AdamW lr 5e-5 weight decay 0.1 after reseeding 123; `train_classifier_simple` with eval_freq 50 and
eval_iter 5; then train/validation/test accuracy), and `unfreeze classify` runs as a subprocess with
the same flags. The reference's time runs from building its model to its last accuracy (the
interpreter and imports are already loaded, which favours it); unfreeze's is the whole subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
ROWS = ("last_layer", "last_block", "all", "lora")
TARGET_RATIO = {"last_layer": 10.0, "last_block": 5.0, "all": 1.5}  # issue 16; lora has none
ACCURACY_TOLERANCE = 0.005  # 0.5 point, issue 16
LOGIT_TOLERANCE = 1e-4
GPT2_SMALL = {"n_layer": 12, "n_embd": 768, "n_head": 12}
SEED = 123  # the reference's seed for the head, the optimizer and data order


# --- the same weights in both models --------------------------------------------------------------
def random_gpt2(arch: dict, seed: int, vocab_size: int = 50257, n_positions: int = 1024):
    """A GPT-2 LM with transformers' random initialisation (std 0.02), no dropout, seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = min(50256, vocab_size - 1)  # GPT-2's <|endoftext|>, kept inside a tiny test vocabulary
    config = GPT2Config(vocab_size=vocab_size, n_positions=n_positions, bos_token_id=special,
                        eos_token_id=special, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **arch)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).eval()


def reference_config(hf_config) -> dict:
    """The reference GPTModel's config dict for a transformers GPT-2 config."""
    return {"vocab_size": hf_config.vocab_size, "context_length": hf_config.n_positions,
            "emb_dim": hf_config.n_embd, "n_heads": hf_config.n_head, "n_layers": hf_config.n_layer,
            "drop_rate": 0.0, "qkv_bias": True}


def reference_state(hf_model) -> dict[str, torch.Tensor]:
    """The HF GPT-2 weights under the reference's (ch04) names.

    HF's Conv1D stores (in, out) and nn.Linear (out, in): every projection is transposed; the fused
    c_attn is split column-wise into query | key | value. The LM head is tied to the token embedding.
    """
    body = hf_model.transformer
    state = {"tok_emb.weight": body.wte.weight, "pos_emb.weight": body.wpe.weight,
             "final_norm.scale": body.ln_f.weight, "final_norm.shift": body.ln_f.bias,
             "out_head.weight": hf_model.lm_head.weight}
    for i, block in enumerate(body.h):
        p = f"trf_blocks.{i}."
        q, k, v = block.attn.c_attn.weight.t().chunk(3, dim=0)
        qb, kb, vb = block.attn.c_attn.bias.chunk(3)
        for name, weight, bias in (("W_query", q, qb), ("W_key", k, kb), ("W_value", v, vb),
                                   ("out_proj", block.attn.c_proj.weight.t(), block.attn.c_proj.bias)):
            state[f"{p}att.{name}.weight"], state[f"{p}att.{name}.bias"] = weight, bias
        for index, conv in ((0, block.mlp.c_fc), (2, block.mlp.c_proj)):
            state[f"{p}ff.layers.{index}.weight"], state[f"{p}ff.layers.{index}.bias"] = conv.weight.t(), conv.bias
        for norm, ln in (("norm1", block.ln_1), ("norm2", block.ln_2)):
            state[f"{p}{norm}.scale"], state[f"{p}{norm}.shift"] = ln.weight, ln.bias
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def reference_model(ref_cfg: dict, state: dict[str, torch.Tensor]):
    """The reference's GPTModel holding `state`; every parameter must come from it."""
    from llms_from_scratch.ch04 import GPTModel

    model = GPTModel(ref_cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    # Only the attention modules' causal-mask buffers are not weights.
    missing = [name for name in missing if not name.endswith("att.mask")]
    if missing or unexpected:
        raise RuntimeError(f"weight conversion incomplete: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


@torch.no_grad()
def max_logit_difference(hf_model, ref_model, ids: torch.Tensor) -> float:
    """Largest |difference| between the two models' LM logits on the same token ids."""
    return float((hf_model(ids).logits - ref_model(ids)).abs().max())


# --- the same split and token ids -----------------------------------------------------------------
def write_split(folder: Path, spam_file: Path, subset: int | None) -> dict[str, int]:
    """train/validation/test.csv of the reference's split (or its first `subset` training examples)."""
    from unfreeze.data import sms_spam

    splits = sms_spam.load_splits(str(spam_file))
    frames = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    if subset:
        frames = {"train": splits.train[:subset], "validation": splits.validation[: max(8, subset // 4)],
                  "test": splits.test[: max(8, subset // 4)]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    return {name: len(frame) for name, frame in frames.items()}


class BpeEncoder:
    """What the reference's SpamDataset calls (`tokenizer.encode(text) -> list[int]`), from local BPE files."""

    def __init__(self, folder: Path):
        from unfreeze.models.tokenizers import load_tokenizer

        self.tokenizer = load_tokenizer(str(folder))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


# --- the reference's loop, in this process, with its own functions --------------------------------
def reference_loaders(data: Path, encoder: BpeEncoder, batch_size: int = 8) -> dict:
    """The reference's datasets (padded to the longest training example) and loaders."""
    from llms_from_scratch.ch06 import SpamDataset
    from torch.utils.data import DataLoader

    train = SpamDataset(data / "train.csv", encoder, max_length=None)
    others = {name: SpamDataset(data / f"{name}.csv", encoder, max_length=train.max_length)
              for name in ("validation", "test")}
    return {"train": DataLoader(train, batch_size=batch_size, shuffle=True, drop_last=True),
            **{name: DataLoader(ds, batch_size=batch_size, drop_last=False) for name, ds in others.items()},
            "max_length": train.max_length}


def reference_setup(row: str, ref_cfg: dict, state: dict, lora_rank: int, lora_alpha: int):
    """additional_experiments.py's model setup for `--trainable_layers row`."""
    from llms_from_scratch.appendix_e import replace_linear_with_lora

    model = reference_model(ref_cfg, state)
    for param in model.parameters():
        param.requires_grad = False
    torch.manual_seed(SEED)
    model.out_head = torch.nn.Linear(ref_cfg["emb_dim"], 2)
    if row == "last_block":
        for module in (model.trf_blocks[-1], model.final_norm):
            for param in module.parameters():
                param.requires_grad = True
    elif row == "all":
        for param in model.parameters():
            param.requires_grad = True
    elif row == "lora":
        replace_linear_with_lora(model, rank=lora_rank, alpha=lora_alpha)
    elif row != "last_layer":
        raise ValueError(f"--rows: {row!r} is not one of {', '.join(ROWS)}")
    return model


def run_reference(row: str, ref_cfg: dict, state: dict, data: Path, encoder: BpeEncoder, epochs: int,
                  lora_rank: int, lora_alpha: int, device_name: str = "cpu") -> dict:
    from llms_from_scratch.ch06 import calc_accuracy_loader, train_classifier_simple

    begin = time.perf_counter()
    device = torch.device(device_name)
    # additional_experiments.py moves its model to the device after the setup; its loops move the batches.
    model = reference_setup(row, ref_cfg, state, lora_rank, lora_alpha).to(device)
    loaders = reference_loaders(data, encoder)
    train_begin = time.perf_counter()
    torch.manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.1)
    train_classifier_simple(model, loaders["train"], loaders["validation"], optimizer, device,
                            num_epochs=epochs, eval_freq=50, eval_iter=5)
    train_s = time.perf_counter() - train_begin
    eval_begin = time.perf_counter()
    acc = {name: calc_accuracy_loader(loaders[name], model, device) for name in ("train", "validation", "test")}
    end = time.perf_counter()
    return {"wall_s": end - begin, "train_s": train_s, "eval_s": end - eval_begin,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "max_length": loaders["max_length"],
            "train_acc": acc["train"], "val_acc": acc["validation"], "test_acc": acc["test"]}


# --- unfreeze classify, as a subprocess with the same flags ----------------------------------------
def unfreeze_command(row: str, model_dir: Path, data: Path, tokenizer: Path, out: Path, epochs: int,
                     lora_rank: int, lora_alpha: int, device: str = "cpu") -> list[str]:
    command = [sys.executable, "-m", "unfreeze", "classify", "--model_size", str(model_dir),
               "--weights", "pretrained", "--trainable_layers", row, "--num_epochs", str(epochs),
               "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(out), "--seed", str(SEED),
               "--device", device, "--precision", "fp32"]
    if row == "lora":
        command += ["--lora_rank", str(lora_rank), "--lora_alpha", str(lora_alpha)]
    return command


def run_unfreeze(command: list[str], out: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    begin = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall_s = time.perf_counter() - begin
    if done.returncode != 0:
        raise RuntimeError(f"unfreeze classify failed ({done.returncode}): {done.stderr[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("train_acc", "val_acc", "test_acc", "train_time_s", "cache_build_s", "train_loop_s", "eval_time_s",
            "total_time_s", "trainable_params", "max_length")
    # The cache build's throughput against the matmul peak measured in the same run (issue 16, item 3).
    build = {key: metrics["cache"][key] for key in ("gflops", "matmul_peak_gflops", "fraction_of_peak",
                                                    "examples_per_s", "repeated_examples") if key in metrics["cache"]}
    return {"wall_s": wall_s, **{key: metrics[key] for key in keep}, "cache": metrics["cache"].get("kind"),
            "cache_build": build}


# --- the table ------------------------------------------------------------------------------------
def compare(row: str, epochs: int, ref: dict, ours: dict) -> dict:
    ratio = ref["wall_s"] / ours["wall_s"]
    gap = max(abs(ref[key] - ours[key]) for key in ("train_acc", "val_acc", "test_acc"))
    target = TARGET_RATIO.get(row)
    return {"row": row, "epochs": epochs, "reference": ref, "unfreeze": ours, "ratio": ratio,
            "target_ratio": target, "speed_ok": None if target is None else ratio >= target,
            "max_accuracy_gap": gap, "accuracy_ok": gap <= ACCURACY_TOLERANCE}


def markdown_table(results: list[dict]) -> str:
    def acc(side: dict) -> str:
        return " / ".join(f"{side[key] * 100:.2f}" for key in ("train_acc", "val_acc", "test_acc"))

    lines = ["| row | epochs | reference s | unfreeze s | ratio (target) | reference acc % train/val/test "
             "| unfreeze acc % train/val/test | max gap (pt) | unfreeze cache / loop / eval s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ref, ours = r["reference"], r["unfreeze"]
        target = "-" if r["target_ratio"] is None else f"≥ {r['target_ratio']:g}×, {'met' if r['speed_ok'] else 'MISSED'}"
        lines.append(
            f"| {r['row']} | {r['epochs']} | {ref['wall_s']:.1f} | {ours['wall_s']:.1f} | {r['ratio']:.2f}× ({target}) "
            f"| {acc(ref)} | {acc(ours)} | {r['max_accuracy_gap'] * 100:.2f} {'ok' if r['accuracy_ok'] else 'MISSED'} "
            f"| {ours['cache_build_s']:.1f} / {ours['train_loop_s']:.1f} / {ours['eval_time_s']:.1f} |")
    return "\n".join(lines)


def write_results(folder: Path, setting: dict, results: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"setting": setting, "rows": results}, indent=2))
    described = ", ".join(f"{key}: {value}" for key, value in setting.items())
    (folder / "results.md").write_text(f"Setting: {described}\n\n{markdown_table(results)}\n")


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="trainable_layers rows to run")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs for every row (the reference: 5)")
    parser.add_argument("--subset", type=int, default=0,
                        help="first N training examples (and max(8, N/4) validation and test); 0 = the full split")
    parser.add_argument("--lora_rank", type=int, default=16, help="the seed table's LoRA row: 16")
    parser.add_argument("--lora_alpha", type=int, default=8, help="the seed table's LoRA row: 8")
    parser.add_argument("--arch", default=json.dumps(GPT2_SMALL), help="GPT-2 shape as JSON (default: GPT-2 small)")
    parser.add_argument("--weights_seed", type=int, default=0, help="seed of the random weights both models share")
    parser.add_argument("--data", type=Path, default=SHARED / "sms_spam" / "SMSSpamCollection")
    parser.add_argument("--tokenizer", type=Path, default=SHARED / "gpt2_bpe")
    parser.add_argument("--results", type=Path, default=ROOT / "runs" / "bench_vs_reference",
                        help="folder for results.json and results.md")
    parser.add_argument("--device", default="cpu", help="where both tools run: cpu or cuda (fp32 on both)")
    return parser.parse_args(argv)


def prepare(args, work: Path) -> tuple[dict, dict, Path, Path, BpeEncoder, dict]:
    """Split CSVs, the shared random weights (HF folder + reference state dict), and the logit check."""
    sizes = write_split(work / "data", args.data, args.subset or None)
    hf_model = random_gpt2(json.loads(args.arch), args.weights_seed)
    hf_model.save_pretrained(work / "model")
    state, ref_cfg = reference_state(hf_model), reference_config(hf_model.config)
    encoder = BpeEncoder(args.tokenizer)
    train = reference_loaders(work / "data", encoder)["train"].dataset
    ids = torch.stack([train[i][0] for i in range(min(4, len(train)))])
    difference = max_logit_difference(hf_model, reference_model(ref_cfg, state), ids)
    print(f"weights: same logits in both models on {tuple(ids.shape)} ids, max |difference| {difference:.2e}")
    if not difference < LOGIT_TOLERANCE:
        raise SystemExit(f"the converted weights disagree (max |difference| {difference:.2e} ≥ {LOGIT_TOLERANCE})")
    return state, ref_cfg, work / "data", work / "model", encoder, {"split_sizes": sizes, "logit_difference": difference}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import llms_from_scratch  # noqa: F401  (the reference's code)
    except ImportError:
        raise SystemExit("needs the reference's code: pip install --no-deps llms-from-scratch") from None
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_vs_reference_") as tmp:
        state, ref_cfg, data, model_dir, encoder, checks = prepare(args, Path(tmp))
        if args.device != "cpu":  # the GPU's first-use costs (context, matmul library) outside the first row
            x = torch.randn(64, 64, device=args.device)
            (x @ x).sum().item()
        split = f"subset: first {args.subset} training examples" if args.subset else "the full reference split"
        setting = {"epochs": args.epochs, "split": split, **checks, "arch": args.arch, "precision": "fp32",
                   "device": args.device, "torch_threads": torch.get_num_threads(),
                   "lora": f"rank {args.lora_rank}, alpha {args.lora_alpha}"}
        print("setting: " + ", ".join(f"{k}: {v}" for k, v in setting.items()), flush=True)
        for row in args.rows:
            print(f"[{row}] reference ...", flush=True)
            ref = run_reference(row, ref_cfg, state, data, encoder, args.epochs, args.lora_rank, args.lora_alpha,
                                args.device)
            print(f"[{row}] reference {ref['wall_s']:.1f} s; unfreeze classify ...", flush=True)
            out = Path(tmp) / "runs" / row
            ours = run_unfreeze(unfreeze_command(row, model_dir, data, args.tokenizer, out, args.epochs,
                                                 args.lora_rank, args.lora_alpha, args.device), out)
            results.append(compare(row, args.epochs, ref, ours))
            print(f"[{row}] unfreeze {ours['wall_s']:.1f} s: ratio {results[-1]['ratio']:.2f}×", flush=True)
            if ours["cache_build"]:
                build = ours["cache_build"]
                print(f"[{row}] unfreeze's cache build: {build['gflops']:.1f} GFLOP/s, "
                      f"{build['fraction_of_peak']:.0%} of the {build['matmul_peak_gflops']:.1f} GFLOP/s matmul peak "
                      "measured in the same run", flush=True)
            write_results(args.results, setting, results)  # a partial table survives an interrupted run
    print("\n" + markdown_table(results))
    print(f"\nwritten to {args.results}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
