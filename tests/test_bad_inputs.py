"""Bad input, command by command (issue #12): exit status 2, no traceback, one line that names the flag or
key at fault, and nothing written or deleted -- a finished run in --out stays byte-identical.

Every case runs `unfreeze.cli.main` in-process on tiny inputs made here; nearly all fail before a model is
built. The last tests check the other side: a rerun with --overwrite that fails keeps the old results and
logs its error, one that succeeds replaces them.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_spam_rows
from pause_helpers import save_tiny_tokenizer

from unfreeze.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = '{"n_layer":2,"n_embd":32,"n_head":2,"n_positions":128}'
FINISHED_METRICS = '{"test_acc": 0.93}\n'


# --- inputs (shared, read-only) and the output area (per test, snapshotted) ----------------------------


def _collection(path: Path, rows) -> str:
    path.write_text("".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")
    return str(path)


def _text(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _spam_csvs(folder: Path, rows, splits=("train", "validation", "test")) -> str:
    import pandas as pd

    folder.mkdir()
    frame = pd.DataFrame({"Label": [1 if l == "spam" else 0 for l, _ in rows], "Text": [t for _, t in rows]})
    for name, part in zip(("train", "validation", "test"), (frame[:48], frame[48:64], frame[64:])):
        if name in splits:
            part.to_csv(folder / f"{name}.csv", index=False)
    return str(folder)


def _gsm8k(folder: Path) -> str:
    folder.mkdir()
    for split, n in (("train", 12), ("test", 4)):
        rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(folder)


def _model_folders(root: Path) -> None:
    """A tiny GPT-2 saved whole (weights, no tokenizer), with its config only, with its weights cut short,
    and sharded with one shard missing."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128, vocab_size=64)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(root / "model_without_tokenizer")
    config.save_pretrained(root / "config_only")
    model.save_pretrained(root / "cut_weights")
    weights = root / "cut_weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    model.save_pretrained(root / "missing_shard", max_shard_size="50KB")
    sorted((root / "missing_shard").glob("model-*.safetensors"))[-1].unlink()


def _repeated_columns(root: Path, rows) -> None:
    """Labelled data with a column (or a JSON field) named twice, and labels with a fraction."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts, labels = [t for _, t in rows], [int(label == "spam") for label, _ in rows]
    (root / "two_texts.csv").write_text("Text,Label,Text\n" + "".join(f"{t},{l},x\n" for t, l in zip(texts, labels)))
    (root / "two_labels.tsv").write_text("Label\tText\tLabel\n"
                                         + "".join(f"{l}\t{t}\t0\n" for t, l in zip(texts, labels)))
    (root / "two_texts.jsonl").write_text("".join(f'{{"Text": "{t}", "Label": {l}, "Text": "x"}}\n'
                                                  for t, l in zip(texts, labels)))
    pq.write_table(pa.table([pa.array(texts), pa.array(labels), pa.array(texts)], names=["Text", "Label", "Text"]),
                   root / "two_texts.parquet")
    (root / "fractions.csv").write_text("Label,Text\n" + "".join(f"{l + 0.5},{t}\n" for t, l in zip(texts, labels)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("inputs")
    rows = make_spam_rows(80)
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder")
    _model_folders(root)
    _repeated_columns(root, rows)
    empty_texts = _spam_csvs(root / "empty_texts", [(label, "") for label, _ in rows])
    bad_labels = Path(_spam_csvs(root / "bad_labels", rows))
    (bad_labels / "train.csv").write_text("Label,Text\nham,hello\nspam,WIN\n", encoding="utf-8")
    return SimpleNamespace(
        root=root, spam=_spam_csvs(root / "spam", rows), tok=str(save_tiny_tokenizer(root / "tok")),
        no_test=_spam_csvs(root / "no_test", rows, ("train", "validation")), bad_labels=str(bad_labels),
        empty_texts=empty_texts,
        no_spam=_collection(root / "no_spam.txt", [("ham", t) for _, t in rows]),
        few=_collection(root / "few.txt", make_spam_rows(8)),
        no_tabs=_text(root / "no_tabs.txt", ("a message without any tab character " * 20 + "\n") * 3),
        gsm=_gsm8k(root / "gsm8k"), empty=str(root / "empty"), a_file=str(root / "a_file"),
        model_without_tokenizer=str(root / "model_without_tokenizer"), config_only=str(root / "config_only"),
        cut_weights=str(root / "cut_weights"), missing_shard=str(root / "missing_shard"),
        two_texts_csv=str(root / "two_texts.csv"), two_labels_tsv=str(root / "two_labels.tsv"),
        two_texts_jsonl=str(root / "two_texts.jsonl"), two_texts_parquet=str(root / "two_texts.parquet"),
        fractions=str(root / "fractions.csv"),
    )


def _sweep_folder(folder: Path, **changes) -> None:
    sweep = {"format": 1, "command": "classify", "main_metric": "test_acc", "selected": ["a"],
             "columns": [{"label": "Test acc", "key": "test_acc", "source": "metric", "format": "percent"}],
             "rows": [{"index": 1, "name": "a", "config": {}}]}
    sweep.update(changes)
    (folder / "runs" / "a" / "seed-1").mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps(sweep), encoding="utf-8")
    (folder / "runs" / "a" / "seed-1" / "metrics.json").write_text('{"test_acc": 0.9}', encoding="utf-8")


@pytest.fixture
def work(tmp_path, inputs) -> Path:
    """The output area: finished runs of each command, sweep folders, and room for new folders."""
    area = tmp_path / "work"
    for name, files in (("done", {"metrics.json": FINISHED_METRICS, "config.json": "{}\n", "run.log": "old\n"}),
                        ("ev_done", {"metrics.json": FINISHED_METRICS, "test_results.json": "[]\n"}),
                        ("ip_done", {"train.json": "[]\n", "test.json": "[]\n"})):
        (area / name).mkdir(parents=True)
        for file, text in files.items():
            (area / name / file).write_text(text, encoding="utf-8")
    for name, changes in (("sw", {}), ("sw_no_metric", {"main_metric": None}), ("sw_no_columns", {"columns": None}),
                          ("sw_list", {})):
        _sweep_folder(area / name, **changes)
    (area / "sw_list" / "sweep.json").write_text("[1, 2]", encoding="utf-8")
    for name, file in (("sw_cut_sweep", "sweep.json"), ("sw_cut_metrics", "runs/a/seed-1/metrics.json"),
                       ("sw_cut_failed", "failed.json")):
        _sweep_folder(area / name)
        path = area / name / file
        path.write_text('{"a/seed-2": {"row": "a", "seed": 2}}' if file == "failed.json" else path.read_text())
        path.write_text(path.read_text()[:15])  # cut mid-write by an old tool or a full disk
    (area / "plots").mkdir()
    return area


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


# --- the cases --------------------------------------------------------------------------------------------


def classify(i, w, *extra):
    return ["classify", "--weights", "random", "--model_config", TINY, "--data", i.spam, "--tokenizer", i.tok,
            "--num_epochs", "1", "--out", str(w / "run"), *extra]


def inject(i, w, *extra, data=True):
    location = ["--dataset_location", i.gsm] if data else []
    return ["inject-pauses", *location, "--augm_dataset_save_location", str(w / "ip"), "--n_pauses_per_patterns",
            "{}", "--seed", "0", *extra]


def evaluate(i, w, *extra, data=True):
    return ["eval-gsm8k", "--model", i.model_without_tokenizer, *(["--data", i.gsm] if data else []),
            "--out", str(w / "ev"), *extra]


def pretrained(i, w, folder, *extra):
    return classify(i, w, "--weights", "pretrained", "--model_config", "null", "--model", folder, *extra)


def sft(i, w, *extra):
    return ["sft", str(REPO / "experiments" / "pause" / "sft.yaml"), *extra, "--out", str(w / "sft")]


def sweep(i, w, *extra):
    return ["sweep", str(REPO / "experiments" / "spam_additional.yaml"), "--rows", "1", *extra]


def tiny_sweep(i, w, *sets):
    """Rows 1-2 of the classification table on a tiny random model and local files, with `sets` on top: every
    row is checked before the first run, so a bad value fails before runs/ is made (issue 22, item 3)."""
    base = ["weights=random", f"model_config={TINY}", f"data={i.spam}", f"tokenizer={i.tok}", "num_epochs=1"]
    return ["sweep", str(REPO / "experiments" / "spam_additional.yaml"), "--rows", "1-2", "--out", str(w / "sw_new"),
            *[item for value in [*base, *sets] for item in ("--set", value)]]


CASES = {
    # classify: numbers
    "lr negative": (lambda i, w: classify(i, w, "--lr", "-1"), "--lr"),
    "lr zero": (lambda i, w: classify(i, w, "--lr", "0"), "--lr"),
    "weight decay negative": (lambda i, w: classify(i, w, "--weight_decay", "-0.1"), "--weight_decay"),
    "cache budget negative": (lambda i, w: classify(i, w, "--cache_budget_gb", "-1"), "--cache_budget_gb"),
    "batch size zero": (lambda i, w: classify(i, w, "--batch_size", "0"), "--batch_size"),
    "batch larger than data": (lambda i, w: classify(i, w, "--batch_size", "1000"), "--batch_size"),
    "epochs zero": (lambda i, w: classify(i, w, "--num_epochs", "0"), "--num_epochs"),
    "no padding batch 2": (lambda i, w: classify(i, w, "--no_padding", "--batch_size", "2"), "--no_padding"),
    "context too long": (lambda i, w: classify(i, w, "--context_length", "5000"), "--context_length"),
    "context not a number": (lambda i, w: classify(i, w, "--context_length", "long"), "--context_length"),
    "lora alpha zero": (lambda i, w: classify(i, w, "--trainable_layers", "lora", "--lora_alpha", "0"), "--lora_alpha"),
    "unknown preset": (lambda i, w: classify(i, w, "--trainable_layers", "middle"), "trainable_layers"),
    "integer flag with a fraction": (lambda i, w: classify(i, w, "--num_epochs", "1.5"), "num_epochs"),
    "misspelt flag": (lambda i, w: classify(i, w, "--num_epocs", "2"), "num_epocs"),
    "device that does not exist": (lambda i, w: classify(i, w, "--device", "tpu"), "--device"),
    "seed beyond 64 bits": (lambda i, w: classify(i, w, "--seed", str(10**20)), "--seed"),
    "longest example beyond the model": (lambda i, w: classify(i, w, "--model_config", '{"n_positions":16}'),
                                         "--context_length 16"),
    # classify: the model
    "width not divisible by heads": (lambda i, w: classify(i, w, "--model_config", '{"n_embd":30,"n_head":4}'),
                                     "--model_config"),
    "zero layers": (lambda i, w: classify(i, w, "--model_config", '{"n_layer":0}'), "--model_config"),
    "layers as text": (lambda i, w: classify(i, w, "--model_config", '{"n_layer":"2"}'), "--model_config"),
    "unknown architecture key": (lambda i, w: classify(i, w, "--model_config", '{"n_layers":2}'), "--model_config"),
    "model config not json": (lambda i, w: classify(i, w, "--model_config", "{n_layer: 2"), "--model_config"),
    "vocabulary without padding row": (lambda i, w: classify(i, w, "--model_config", '{"vocab_size":300}'), "vocab_size"),
    "model folder without tokenizer": (lambda i, w: classify(i, w, "--weights", "pretrained", "--model_config", "null",
                                                             "--tokenizer", "null", "--model_size",
                                                             i.model_without_tokenizer), "--tokenizer"),
    "model beyond memory": (lambda i, w: classify(i, w, "--model_config", '{"n_embd":100000,"n_head":1,"n_layer":1}'),
                            "--model_config"),
    "model folder missing": (lambda i, w: classify(i, w, "--model_size", str(i.root / "gone")), "--model_size"),
    "model folder without config": (lambda i, w: classify(i, w, "--model_size", i.empty), "--model_size"),
    "tokenizer is a file": (lambda i, w: classify(i, w, "--tokenizer", i.a_file), "--tokenizer"),
    "tokenizer folder empty": (lambda i, w: classify(i, w, "--tokenizer", i.empty), "--tokenizer"),
    # classify: the data
    "no spam rows": (lambda i, w: classify(i, w, "--data", i.no_spam), "no spam"),
    "no tabs": (lambda i, w: classify(i, w, "--data", i.no_tabs), "--data"),
    "too few messages": (lambda i, w: classify(i, w, "--data", i.few), "--data"),
    "data empty string": (lambda i, w: classify(i, w, "--data", ""), "--data"),
    "data missing": (lambda i, w: classify(i, w, "--data", str(i.root / "gone.txt")), "--data"),
    "csv folder without test.csv": (lambda i, w: classify(i, w, "--data", i.no_test), "--data"),
    "csv texts all empty": (lambda i, w: classify(i, w, "--data", i.empty_texts), "--data"),
    "csv labels as words": (lambda i, w: classify(i, w, "--data", i.bad_labels), "--data"),
    "offline first run": (lambda i, w: ["classify", "--out", str(w / "run")], "--tokenizer FOLDER"),
    "offline data download": (lambda i, w: ["classify", "--data", "sms_spam:download", "--out", str(w / "run")],
                              "--data PATH/SMSSpamCollection"),
    # classify: --out
    "out is a file": (lambda i, w: classify(i, w, "--out", i.a_file), "--out"),
    "out under a file": (lambda i, w: classify(i, w, "--out", i.a_file + "/run"), "--out"),
    "out empty string": (lambda i, w: classify(i, w, "--out", ""), "--out"),
    "rerun into a finished run": (lambda i, w: classify(i, w, "--out", str(w / "done")), "--overwrite"),
    "finished run and a typo": (lambda i, w: classify(i, w, "--out", str(w / "done"), "--lr=1e-3x"), "lr"),
    "overwrite with a bad number": (lambda i, w: classify(i, w, "--out", str(w / "done"), "--overwrite",
                                                          "--lr", "-1"), "--lr"),
    "overwrite with bad data": (lambda i, w: classify(i, w, "--out", str(w / "done"), "--overwrite",
                                                      "--data", i.no_spam), "--data"),
    # inject-pauses
    "save location under a file": (lambda i, w: inject(i, w, "--augm_dataset_save_location", i.a_file + "/x"),
                                   "--augm_dataset_save_location"),
    "save location empty": (lambda i, w: inject(i, w, "--augm_dataset_save_location", ""),
                            "--augm_dataset_save_location"),
    "save location finished": (lambda i, w: inject(i, w, "--augm_dataset_save_location", str(w / "ip_done")),
                               "--overwrite"),
    "overwrite with a bad pattern": (lambda i, w: inject(i, w, "--augm_dataset_save_location", str(w / "ip_done"),
                                                         "--overwrite", "--n_pauses_per_patterns", "{bad"),
                                     "--n_pauses_per_patterns"),
    "column question": (lambda i, w: inject(i, w, "--pause_augm_col_name", "question"), "--pause_augm_col_name"),
    "column empty": (lambda i, w: inject(i, w, "--pause_augm_col_name", ""), "--pause_augm_col_name"),
    "pattern matching everywhere": (lambda i, w: inject(i, w, "--n_pauses_per_patterns", '{"": 1}'),
                                    "--n_pauses_per_patterns"),
    "dataset location empty": (lambda i, w: inject(i, w, "--dataset_location", ""), "--dataset_location"),
    "copies beyond memory": (lambda i, w: inject(i, w, "--n_generated_samples_per_datapoint", str(10**12)),
                             "--n_generated_samples_per_datapoint"),
    "tokenizer folder without tokenizer": (lambda i, w: inject(i, w, "--n_random_pauses", "2", "--tokenizer_hf_name",
                                                               i.model_without_tokenizer), "--tokenizer_hf_name"),
    "negative random pauses": (lambda i, w: inject(i, w, "--n_random_pauses", "-1"), "--n_random_pauses"),
    "offline gsm8k": (lambda i, w: inject(i, w, data=False), "--dataset_location"),
    # eval-gsm8k (each fails before the model is read)
    "eval out is a file": (lambda i, w: evaluate(i, w, "--out", i.a_file), "--out"),
    "eval out empty": (lambda i, w: evaluate(i, w, "--out", ""), "--out"),
    "eval finished": (lambda i, w: evaluate(i, w, "--out", str(w / "ev_done")), "--overwrite"),
    "eval overwrite with limit 0": (lambda i, w: evaluate(i, w, "--out", str(w / "ev_done"), "--overwrite",
                                                          "--limit", "0"), "--limit"),
    "eval batch size zero": (lambda i, w: evaluate(i, w, "--batch_size", "0"), "--batch_size"),
    "eval no new tokens": (lambda i, w: evaluate(i, w, "--max_new_tokens", "0"), "--max_new_tokens"),
    "eval negative temperature": (lambda i, w: evaluate(i, w, "--pause_temperature", "-1"), "--pause_temperature"),
    "eval model missing": (lambda i, w: evaluate(i, w, "--model", str(i.root / "gone")), "--model"),
    "eval offline gsm8k": (lambda i, w: evaluate(i, w, data=False), "--data"),
    # issue 22, item 4: a LoRA rank the layers cannot use
    "lora rank beyond the width": (lambda i, w: classify(i, w, "--trainable_layers", "lora", "--lora_rank", "1000"),
                                   "--lora_rank 1000 exceeds the width of layer h.0.attn.c_attn (32 in, 96 out)"),
    "merged lora rank one beyond": (lambda i, w: classify(i, w, "--trainable_layers", "lora_alternative",
                                                          "--lora_rank", "33"), "use --lora_rank 32 or less"),
    # issue 22, item 5: a column twice; labels that are no class
    "csv with two Text columns": (lambda i, w: classify(i, w, "--data", i.two_texts_csv), "two columns are named 'Text'"),
    "tsv with two Label columns": (lambda i, w: classify(i, w, "--data", i.two_labels_tsv), "named 'Label'"),
    "jsonl row with two Text fields": (lambda i, w: classify(i, w, "--data", i.two_texts_jsonl), "named 'Text'"),
    "parquet with two Text columns": (lambda i, w: classify(i, w, "--data", i.two_texts_parquet), "named 'Text'"),
    "labels with a fraction": (lambda i, w: classify(i, w, "--data", i.fractions), "a number with a fraction"),
    # issue 22, item 6: a model folder that cannot be loaded is named, not blamed on the network
    "model folder without weights": (lambda i, w: pretrained(i, w, i.config_only), "has config.json but no weights"),
    "model folder with cut weights": (lambda i, w: pretrained(i, w, i.cut_weights),
                                      "model.safetensors is truncated or corrupt"),
    "model folder missing a shard": (lambda i, w: pretrained(i, w, i.missing_shard), "is missing; copy every shard"),
    "eval model without weights": (lambda i, w: evaluate(i, w, "--model", i.config_only), "no weights"),
    "eval model with cut weights": (lambda i, w: evaluate(i, w, "--model", i.cut_weights), "truncated or corrupt"),
    # issue 22, item 8: union-typed keys read like the others
    "sft precision fp33": (lambda i, w: sft(i, w, "precision=fp33"),
                           "precision='fp33': invalid choice, not one of: fp32, bf16-mixed, bf16-pure"),
    "sft train_limit a word": (lambda i, w: sft(i, w, "train_limit=two"), "train_limit='two' is not a valid int"),
    "balance maybe": (lambda i, w: classify(i, w, "--balance", "maybe"), "balance='maybe' is not a valid bool; use true"),
    "trainable layers blocks colon": (lambda i, w: classify(i, w, "--trainable_layers", "blocks:"),
                                      "trainable_layers='blocks:': invalid choice"),
    "cache budget a word": (lambda i, w: classify(i, w, "--cache_budget_gb", "lots"), "cache_budget_gb='lots'"),
    "eval limit a word": (lambda i, w: evaluate(i, w, "--limit", "many"), "limit='many' is not a valid int"),
    "inject seed a word": (lambda i, w: inject(i, w, "--seed", "abc"), "seed='abc' is not a valid int"),
    # issue 22, item 9: a file that is neither a folder nor a .gguf
    "eval model is a csv file": (lambda i, w: evaluate(i, w, "--model", i.two_texts_csv),
                                 "is a file (.csv), not a model folder or a .gguf file"),
    # sweep
    "sweep out is a file": (lambda i, w: sweep(i, w, "--out", i.a_file), "--out"),
    "sweep out under a file": (lambda i, w: sweep(i, w, "--out", i.a_file + "/sw"), "--out"),
    "sweep out empty": (lambda i, w: sweep(i, w, "--out", ""), "--out"),
    "sweep out holds a cut sweep.json": (lambda i, w: sweep(i, w, "--out", str(w / "sw_cut_sweep")), "sweep.json"),
    "sweep out holds a cut failed.json": (lambda i, w: sweep(i, w, "--out", str(w / "sw_cut_failed")), "failed.json"),
    "sweep row that does not exist": (lambda i, w: sweep(i, w, "--out", str(w / "sw_new"), "--rows", "99"), "--rows"),
    # issue 22, item 3: values checked for every row before the first run (not only their types)
    "sweep negative epochs": (lambda i, w: tiny_sweep(i, w, "num_epochs=-1"),
                              "row 'reference': --num_epochs must be at least 1 (got -1)"),
    "sweep model_config not json": (lambda i, w: tiny_sweep(i, w, "model_config={not json"),
                                    "row 'reference': --model_config is not valid JSON"),
    "sweep data with one class": (lambda i, w: tiny_sweep(i, w, f"data={i.no_spam}"), "row 'reference': --data"),
    "sweep second row's lora rank": (lambda i, w: tiny_sweep(i, w, "first_token:trainable_layers=lora",
                                                             "first_token:lora_rank=1000"),
                                     "row 'first_token': --lora_rank 1000 exceeds"),
    # report
    "report cut sweep.json": (lambda i, w: ["report", str(w / "sw_cut_sweep")], "sweep.json"),
    "report cut metrics.json": (lambda i, w: ["report", str(w / "sw_cut_metrics")], "metrics.json"),
    "report cut failed.json": (lambda i, w: ["report", str(w / "sw_cut_failed")], "failed.json"),
    "report sweep.json not an object": (lambda i, w: ["report", str(w / "sw_list")], "sweep.json"),
    "report sweep.json without columns": (lambda i, w: ["report", str(w / "sw_no_columns")], "'columns'"),
    "plot without suffix": (lambda i, w: ["report", str(w / "sw"), "--plot", str(w / "plots" / "chart")], "--plot"),
    "plot unknown suffix": (lambda i, w: ["report", str(w / "sw"), "--plot", str(w / "plots" / "c.xyz")], "--plot"),
    "plot into a folder": (lambda i, w: ["report", str(w / "sw"), "--plot", str(w / "plots")], "--plot"),
    "plot under a file": (lambda i, w: ["report", str(w / "sw"), "--plot", i.a_file + "/c.png"], "--plot"),
    "plot without a main metric": (lambda i, w: ["report", str(w / "sw_no_metric"), "--plot",
                                                 str(w / "plots" / "c.png")], "--plot"),
}


@pytest.fixture
def no_downloads(tmp_path, monkeypatch):
    """Offline (as the tests always are) with empty caches, so every download is missing."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNFREEZE_CACHE", str(tmp_path / "no-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "no-hub-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(tmp_path / "no-hf-home"))


@pytest.fixture
def no_work(monkeypatch):
    """Bad input is caught before the work starts: reaching it fails the test (and never allocates the
    memory that, say, 10**12 copies of GSM8K would take)."""
    from unfreeze.recipes.classify import recipe as classify
    from unfreeze.recipes.eval_gsm8k import recipe as eval_gsm8k
    from unfreeze.recipes.inject_pauses import recipe as inject_pauses

    def reached(*args, **kwargs):
        pytest.fail("the command started working on bad input")

    monkeypatch.setattr(classify, "build_trainable_model", reached)
    monkeypatch.setattr(inject_pauses, "augment_rows", reached)
    monkeypatch.setattr(eval_gsm8k, "load_model", reached)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_nothing_changes(case, inputs, work, no_downloads, no_work, capsys):
    build, fragment = CASES[case]
    argv = build(inputs, work)
    before = snapshot(work)
    assert main(argv) == 2, case
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"unfreeze {argv[0]}: error:"), captured.err
    assert fragment in lines[0] and "Traceback" not in captured.err, lines[0]
    assert len(lines[0]) < 600, lines[0]  # bad input is quoted briefly, never dumped
    assert snapshot(work) == before  # nothing written, nothing deleted: a finished run stays byte-identical


class _Text(str):
    def __truediv__(self, other: str) -> _Text:
        return _Text(f"{self}/{other}")


class _AnyPath(SimpleNamespace):
    """Stands in for `inputs` when only the command name of each case is wanted."""

    def __getattr__(self, name: str) -> _Text:
        return _Text(name)


def test_enough_cases_across_the_commands():
    commands = [build(_AnyPath(), Path("w"))[0] for build, _ in CASES.values()]
    assert len(commands) >= 45
    assert set(commands) == {"classify", "inject-pauses", "eval-gsm8k", "sweep", "report", "sft"}


def test_a_quoted_file_is_cut_to_a_readable_length(inputs, work, capsys):
    assert main(classify(inputs, work, "--data", inputs.no_tabs)) == 2
    line = capsys.readouterr().err.strip()
    assert "a message without any tab" in line and len(line) < 80 + 200


# --- a rerun into a finished run with --overwrite -----------------------------------------------------------


def quick_classify(inputs, out: Path, *extra: str) -> list[str]:
    return classify(inputs, out.parent, "--out", str(out), "--batch_size", "16", "--eval_freq", "100",
                    "--eval_iter", "1", "--lr", "1e-3", *extra)


def test_overwrite_that_fails_while_training_keeps_the_old_results_and_logs_why(inputs, work, monkeypatch, capsys):
    from unfreeze.recipes.classify import recipe as classify_task

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU fell off the bus")

    monkeypatch.setattr(classify_task.ClassifierTraining, "advance", broken)
    done = work / "done"
    with pytest.raises(RuntimeError):
        main(quick_classify(inputs, done, "--overwrite"))
    assert (done / "metrics.json").read_text() == FINISHED_METRICS and (done / "config.json").read_text() == "{}\n"
    log = (done / "run.log").read_text()
    assert log.startswith("old\n") and "FAILED: RuntimeError: the GPU fell off the bus" in log
    assert "trainable:" in log  # the messages of the failed run itself are kept too


def test_overwrite_that_succeeds_replaces_the_results(inputs, work):
    done = work / "done"
    assert main(quick_classify(inputs, done, "--overwrite", "--trainable_layers", "last_layer")) == 0
    metrics = json.loads((done / "metrics.json").read_text())
    assert metrics["n_train"] == 48 and json.loads((done / "config.json").read_text())["overwrite"] is True
    assert not [p for p in done.iterdir() if p.name.startswith(".")]
    # and the next plain rerun is refused again, leaving the new result as it is
    assert main(quick_classify(inputs, done)) == 2
    assert json.loads((done / "metrics.json").read_text()) == metrics


# --- issue 22, item 4 in sft: its LoRA rank is checked when the adapter is added --------------------------


def _sft_with_rank(inputs, tmp_path: Path, pause_data: Path, rank: int) -> list[str]:
    import yaml
    from pause_helpers import PAUSE

    values = {"model": "gpt2", "weights": "random", "model_config": TINY, "tokenizer": inputs.tok,
              "data": str(pause_data), "pause_token": PAUSE, "lora": True, "lora_rank": rank, "batch_size": 4,
              "max_length": 128, "test": False}
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return ["sft", str(path), "--out", str(tmp_path / "work" / "sft")]


def test_sft_lora_r_beyond_the_width_is_one_line_exit_2(inputs, tmp_path, pause_data, capsys):
    assert main(_sft_with_rank(inputs, tmp_path, pause_data, 1000)) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("unfreeze sft: error: lora_rank 1000 exceeds the width of layer transformer.h.0.attn.c_attn "
                           "(32 in, 96 out)") and last.endswith("use lora_rank 32 or less") and "Traceback" not in err


def test_sft_lora_r_beyond_the_width_says_only_that_and_writes_nothing(inputs, tmp_path, pause_data, capsys):
    (tmp_path / "work").mkdir()
    assert main(_sft_with_rank(inputs, tmp_path, pause_data, 1000)) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list((tmp_path / "work").iterdir()) == []


# --- the same cases through the real command line: a new process, its exit status and its stderr ---------

REAL_CLI = ["lora rank beyond the width", "csv with two Text columns", "model folder with cut weights",
            "sft precision fp33", "eval model is a csv file"]  # one of each item of issue 22 this file grew by


@pytest.mark.parametrize("case", REAL_CLI)
def test_the_real_command_line_is_one_line_exit_2_and_writes_nothing(case, inputs, work, no_downloads):
    import subprocess
    import sys

    build, fragment = CASES[case]
    argv = build(inputs, work)
    before = snapshot(work)
    result = subprocess.run([sys.executable, "-m", "unfreeze", *argv], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"unfreeze {argv[0]}: error:") and fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr and snapshot(work) == before
