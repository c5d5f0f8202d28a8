"""`pause_tokenization`: "exact" keeps the answer's own tokens around a pause; "reference" registers the pause
like the PauseToken reference (AddedToken lstrip/rstrip), so it swallows the whitespace next to it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unfreeze.data.sft_data import (
    encode_answer,
    encode_rows,
    reference_tokenization_changes,
)
from unfreeze.errors import UsageError
from unfreeze.models.control.tokens import (
    ControlTokenLM,
    register_control_tokens,
    registered_tokenization,
)
from unfreeze.recipes.eval_gsm8k.recipe import clean_completion, predicted_answer

PAUSE = "<|pause|>"
EOT = "<|endoftext|>"
BPE = Path(__file__).resolve().parents[2] / "shared" / "data" / "gpt2_bpe"


@pytest.fixture
def gpt2_tokenizer():
    """GPT-2's real BPE (the reference's effect is about its merges); skipped when the files are absent."""
    if not (BPE / "encoder.json").exists() and not (BPE / "vocab.json").exists():
        pytest.skip("../shared/data/gpt2_bpe not present")
    from unfreeze.models.tokenizers import load_tokenizer

    return load_tokenizer(str(BPE), flag="tokenizer")


def byte_tokenizer():
    """One token per byte (0-255) and <|endoftext|> = 256: enough to build, save and load a tiny model."""
    from transformers import GPT2TokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()} | {EOT: 256}
    return GPT2TokenizerFast(vocab=vocab, merges=[])


def tokens_of(tokenizer, answer: str, mode: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(encode_answer(tokenizer, answer, [PAUSE], mode)[:-1])  # EOS dropped


def test_reference_pause_swallows_the_space_so_clips_becomes_another_token(gpt2_tokenizer):
    register_control_tokens(gpt2_tokenizer, [PAUSE], 50257, "reference")
    answer = f"She sold 48{PAUSE} clips"
    assert tokens_of(gpt2_tokenizer, answer, "exact") == ["She", "Ġsold", "Ġ48", PAUSE, "Ġclips"]
    assert tokens_of(gpt2_tokenizer, answer, "reference") == ["She", "Ġsold", "Ġ48", PAUSE, "clips"]
    # It is the tokenizer's own behaviour, as in the reference (which tokenised the whole text at once).
    whole = gpt2_tokenizer(answer, add_special_tokens=False).input_ids
    assert whole == encode_answer(gpt2_tokenizer, answer, [PAUSE], "reference")[:-1]
    # Whitespace on the left goes too, newlines included.
    assert tokens_of(gpt2_tokenizer, f"May.\n{PAUSE}####", "reference") == ["May", ".", PAUSE, "####"]
    assert reference_tokenization_changes(gpt2_tokenizer, answer, [PAUSE])
    assert not reference_tokenization_changes(gpt2_tokenizer, f"48{PAUSE}72 clips", [PAUSE])  # no space touched


def test_exact_registration_keeps_the_texts_tokens_even_in_the_tokenizer(gpt2_tokenizer):
    register_control_tokens(gpt2_tokenizer, [PAUSE], 50257, "exact")
    assert registered_tokenization(gpt2_tokenizer, PAUSE) == "exact"
    ids = gpt2_tokenizer(f"48{PAUSE} clips", add_special_tokens=False).input_ids
    assert gpt2_tokenizer.convert_ids_to_tokens(ids) == ["48", PAUSE, "Ġclips"]


def test_scoring_strips_reference_text_the_way_the_reference_does(gpt2_tokenizer):
    """The reference decodes with skip_special_tokens=True: the swallowed spaces stay lost, so a pause between
    '####' and the number leaves '####72', which its regex cannot read. Exact tokens strip back to the text."""
    register_control_tokens(gpt2_tokenizer, [PAUSE], 50257, "reference")
    answer = f"24{PAUSE} clips in{PAUSE} May.\n####{PAUSE} 72"
    original = answer.replace(PAUSE, "")
    for mode, expected in (("exact", original), ("reference", "24clips inMay.\n####72")):
        ids = encode_answer(gpt2_tokenizer, answer, [PAUSE], mode)[:-1]
        text = clean_completion(gpt2_tokenizer.decode(ids, skip_special_tokens=False), [PAUSE], [EOT])
        assert text == expected == gpt2_tokenizer.decode(ids, skip_special_tokens=True), mode
    exact_ids = encode_answer(gpt2_tokenizer, answer, [PAUSE], "exact")[:-1]
    reference_ids = encode_answer(gpt2_tokenizer, answer, [PAUSE], "reference")[:-1]
    assert predicted_answer(gpt2_tokenizer.decode(exact_ids), [PAUSE], [EOT]) == "72"
    assert predicted_answer(gpt2_tokenizer.decode(reference_ids), [PAUSE], [EOT]) is None


def tiny_model(mode: str) -> ControlTokenLM:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=257, n_positions=64,
                                    bos_token_id=256, eos_token_id=256))
    return ControlTokenLM.from_base(lm, byte_tokenizer(), [PAUSE], pause_tokenization=mode)


def test_the_setting_is_saved_with_the_model_and_loaded_back(tmp_path):
    model = tiny_model("reference")
    assert registered_tokenization(model.tokenizer, PAUSE) == "reference"
    model.save_pretrained(tmp_path / "final")
    loaded = ControlTokenLM.from_pretrained(str(tmp_path / "final"))
    assert loaded.pause_tokenization == "reference"
    assert registered_tokenization(loaded.tokenizer, PAUSE) == "reference"
    assert loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer("a \n" + PAUSE + " b").input_ids) == ["a", PAUSE, "b"]
    # Asked for another tokenisation, the tokens are re-registered that way (same id).
    exact = ControlTokenLM.from_pretrained(str(tmp_path / "final"), pause_tokenization="exact")
    assert exact.pause_tokenization == "exact" and exact.control_token_ids == [257]
    assert registered_tokenization(exact.tokenizer, PAUSE) == "exact"
    # Folders saved before the setting existed are "exact" (their tokens were registered without strip flags).
    tiny_model("exact").save_pretrained(tmp_path / "old")
    assert ControlTokenLM.from_pretrained(str(tmp_path / "old")).pause_tokenization == "exact"


def test_encode_rows_needs_a_tokenizer_registered_the_same_way():
    model = tiny_model("exact")
    rows = [{"question": "q", "answer": f"a{PAUSE} b"}]
    with pytest.raises(UsageError, match="pause_tokenization"):
        encode_rows(model.tokenizer, rows, 64, [PAUSE], "reference")
    with pytest.raises(UsageError, match="pause_tokenization"):
        encode_rows(model.tokenizer, rows, 64, [PAUSE], "loose")
    reference = tiny_model("reference")
    encoded = encode_rows(reference.tokenizer, rows, 64, [PAUSE], "reference").examples[0]
    completion = [i for i in encoded.labels if i != -100]
    assert completion == [ord("a"), 257, ord("b"), 256]  # the space after the pause is gone
    with pytest.raises(UsageError, match="pause_tokenization"):
        tiny_model("both sides")
