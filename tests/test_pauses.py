"""Pause injection rules (unfreeze.data.pauses) and GSM8K loading (unfreeze.data.gsm8k).

Everything here uses text made by the tests; the one tokenizer is a tiny byte-level BPE trained in a
fixture, saved as an ordinary Hugging Face folder.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from unfreeze.data import gsm8k, pauses
from unfreeze.errors import UsageError

P = "<|pause|>"


def pause_positions(augmented: str, token: str = P) -> list[int]:
    """Where each pause sits, in coordinates of the original (pause-free) text."""
    positions, offset = [], 0
    pieces = augmented.split(token)
    for piece in pieces[:-1]:
        offset += len(piece)
        positions.append(offset)
    return positions


def config(patterns: dict | None = None, **kwargs) -> pauses.PauseConfig:
    return pauses.PauseConfig(pause_token=kwargs.pop("pause_token", P),
                              rules=tuple(pauses.compile_patterns(patterns or {})), **kwargs)


def random_text(rng: random.Random) -> str:
    alphabet = "ab =\n\t<>#.,é日 " + "0123456789"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory):
    """A byte-level BPE (GPT-2 style) trained on a few sentences, saved as a tokenizer.json folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["Natalia sold 48/2 = <<48/2=24>>24 clips in May.", "She earned 0.2 x 50 = $10.\n#### 10",
              "héllo wörld 日本語 #### 1,000"] * 5
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    folder = tmp_path_factory.mktemp("tiny_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(str(folder))
    return folder


# ---------------------------------------------------------------- strip / count / token checks

def test_strip_and_count():
    assert pauses.strip_pauses(f"{P}a{P}{P} b{P}", P) == "a b"
    assert pauses.count_pauses(f"{P}a{P}{P} b{P}", P) == 4
    assert pauses.count_pauses("no pauses", P) == 0


@pytest.mark.parametrize("token", ["", "aa", "aba", "<p><p"])
def test_self_overlapping_or_empty_tokens_are_rejected(token):
    with pytest.raises(ValueError):
        pauses.check_pause_token(token)


def test_self_overlap_really_breaks_stripping():
    """Why the check exists: 'aba' inserted after 'ab' makes 'ababa'; replace() eats original text."""
    assert pauses.strip_pauses(pauses.insert_pauses("ab", {2: 1}, "aba"), "aba") != "ab"
    for token in ("<|pause|>", "<|PAUSE|>", "[PAUSE]", "<p>"):
        pauses.check_pause_token(token)


# ---------------------------------------------------------------- the round trip, exactly

@pytest.mark.parametrize("variable", [False, True])
def test_round_trip_is_exact_and_counts_are_reported(variable):
    rng = random.Random(0)
    cfg = config({"=": 1, "\n": 2, " ": 1}, n_random=4, variable=variable, n_leading=1)
    for _ in range(300):
        text = random_text(rng)
        plan = pauses.plan_answers([text], cfg)[0]
        augmented, n_pauses = pauses.augment(plan, cfg, rng)
        assert pauses.strip_pauses(augmented, P) == text
        assert pauses.count_pauses(augmented, P) == n_pauses
        # No spaces are ever added: the augmented text is the original plus pause tokens only.
        assert len(augmented) == len(text) + n_pauses * len(P)


def test_round_trip_with_tokenizer_and_pauses_only_at_token_boundaries(tiny_tokenizer_dir):
    from unfreeze.recipes.inject_pauses.recipe import load_pause_tokenizer

    tokenizer = load_pause_tokenizer(str(tiny_tokenizer_dir), P)
    texts = ["Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 24", "héllo 日本語 wörld", "", " lead and trail "]
    cfg = config({}, n_random=6)
    plans = pauses.plan_answers(texts, cfg, tokenizer)
    rng = random.Random(1)
    for text, plan in zip(texts, plans):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        boundaries = {0, len(text)} | {end for _start, end in offsets}
        assert set(plan.slots) == boundaries
        for _ in range(20):
            augmented, n_pauses = pauses.augment(plan, cfg, rng)
            assert n_pauses == 6 and pauses.strip_pauses(augmented, P) == text
            assert set(pause_positions(augmented)) <= boundaries
            # The pause is a special token of this tokenizer: each one stays a single, whole token.
            ids = tokenizer(augmented, add_special_tokens=False)["input_ids"]
            assert ids.count(tokenizer.convert_tokens_to_ids(P)) == 6


# ---------------------------------------------------------------- pattern rules

@pytest.mark.parametrize("patterns, text, expected", [
    ({"=": 2}, "a = b = c", f"a ={P}{P} b ={P}{P} c"),
    # A newline pattern also pauses at the very start; as the character or as the regex escape.
    ({"\n": 1}, "x\ny\n", f"{P}x\n{P}y\n{P}"),
    ({"\\n": 1}, "x\ny", f"{P}x\n{P}y"),
    ({"\n": 0, "=": 1}, "x\n=", f"x\n={P}"),
    # Overlap: the leftmost match wins; " = " starts before "=".
    ({"=": 1, " = ": 2}, "a = b", f"a = {P}{P}b"),
    # Same start: the longest wins; the next match starts after it.
    ({"ab": 1, "abc": 3}, "abcab", f"abc{P}{P}{P}ab{P}"),
    # Same start and length: the pattern listed first wins.
    ({"[0-9]": 1, "\\d": 2}, "7", f"7{P}"),
    # A zero-width pattern inserts at its position.
    ({"(?=x)": 1}, "axbx", f"a{P}xb{P}x"),
    # A zero count never hides another pattern's match.
    ({"abc": 0, "ab": 1}, "abc", f"ab{P}c"),
    ({}, "a = b", "a = b"),
])
def test_pattern_insertion(patterns, text, expected):
    assert pauses.augment_text(text, config(patterns), random.Random(0)) == expected


def test_leading_pauses_add_to_the_newline_rule():
    assert pauses.augment_text("a\nb", config({"\n": 1}, n_leading=2), random.Random(0)) == f"{P * 3}a\n{P}b"


def test_patterns_and_random_pauses_combine():
    text = "1 + 1 = 2\n2 * 3 = 6\n#### 6"
    cfg = config({"=": 1}, n_random=5)
    rng = random.Random(3)
    for _ in range(50):
        augmented, n_pauses = pauses.augment(pauses.plan_answers([text], cfg)[0], cfg, rng)
        assert n_pauses == 2 + 5 == pauses.count_pauses(augmented, P)
        assert augmented.count(f"={P}") == 2  # the pattern pauses are always there


@pytest.mark.parametrize("counts, message", [
    ({"(": 1}, "not a valid regular expression"),
    ({"=": -1}, ">= 0"),
    ({"=": 1.5}, "integer"),
    ({"=": True}, "integer"),
    ([1, 2], "JSON object"),
])
def test_bad_patterns_are_rejected(counts, message):
    with pytest.raises(ValueError, match=message):
        pauses.compile_patterns(counts)


# ---------------------------------------------------------------- slots and the random draws

def test_space_slots_are_both_ends_and_before_each_space():
    assert pauses.space_slots("a b  c") == [0, 1, 3, 4, 6]
    assert pauses.space_slots("") == [0]
    assert len(pauses.space_slots("w1 w2 w3")) == len("w1 w2 w3".split(" ")) + 1


def test_offset_slots_use_token_ends_and_never_split_a_character():
    # Two byte-tokens that share one character carry the same offsets: one slot, not two.
    assert pauses.offset_slots([(0, 3), (3, 5), (5, 6), (5, 6), (6, 8)], 8) == [0, 3, 5, 6, 8]


def chi_square(observed: Counter, categories: list) -> float:
    total = sum(observed[c] for c in categories)
    expected = total / len(categories)
    return sum((observed[c] - expected) ** 2 / expected for c in categories)


def test_random_positions_are_uniform_over_slots_including_both_ends():
    text = "one two three four"  # 3 spaces: slots 0, 3, 7, 13, 18
    cfg = config({}, n_random=3)
    plan = pauses.plan_answers([text], cfg)[0]
    assert plan.slots == [0, 3, 7, 13, 18]
    rng, seen = random.Random(7), Counter()
    for _ in range(4000):
        seen.update(pause_positions(pauses.augment(plan, cfg, rng)[0]))
    assert sum(seen.values()) == 12000
    # 4 degrees of freedom: 18.47 is the 0.1% critical value.
    assert chi_square(seen, plan.slots) < 18.47


def test_fixed_mode_gives_exactly_n_and_variable_mode_is_uniform_on_0_to_n():
    plan = pauses.plan_answers(["a b c"], config({}, n_random=4))[0]
    fixed, variable = config({}, n_random=4), config({}, n_random=4, variable=True)
    rng = random.Random(11)
    assert {pauses.augment(plan, fixed, rng)[1] for _ in range(200)} == {4}
    counts = Counter(pauses.augment(plan, variable, rng)[1] for _ in range(5000))
    assert set(counts) == {0, 1, 2, 3, 4}
    assert chi_square(counts, [0, 1, 2, 3, 4]) < 18.47
    mean = sum(k * v for k, v in counts.items()) / 5000
    assert abs(mean - 2.0) < 0.1  # sd of U{0..4} is 1.41, so the standard error is 0.02


def test_no_random_pauses_means_no_tokenizer_call():
    class Exploding:
        def __call__(self, *args, **kwargs):
            raise AssertionError("the tokenizer must not run without random pauses")

    plans = pauses.plan_answers(["a = b"], config({"=": 1}), Exploding())
    assert pauses.augment(plans[0], config({"=": 1}), random.Random(0)) == (f"a ={P} b", 1)


# ---------------------------------------------------------------- GSM8K: answers and loading

@pytest.mark.parametrize("text, expected", [
    ("Natalia sold 72 clips.\n#### 72", "72"),
    ("#### 1,000", "1000"),
    ("so -3.5\n#### -3.5", "-3.5"),
    ("first #### 5 then #### 6", "5"),
    ("no final answer", None),
    (None, None),
])
def test_extract_answer(text, expected):
    assert gsm8k.extract_answer(text) == expected


ROWS = [{"question": "1+1?", "answer": "1+1=2\n#### 2"}, {"question": "2*3?", "answer": "2*3=6\n#### 6"}]


def test_load_jsonl_and_json_array_folders_and_single_files(tmp_path):
    jsonl, array = tmp_path / "jsonl", tmp_path / "array"
    jsonl.mkdir(), array.mkdir()
    (jsonl / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS) + "\n", encoding="utf-8")
    (array / "train.json").write_text(json.dumps(ROWS, indent=2), encoding="utf-8")
    assert gsm8k.load_gsm8k_split(str(jsonl), "train") == ROWS
    assert gsm8k.load_gsm8k_split(str(array), "train") == ROWS
    assert gsm8k.load_gsm8k_split(str(array / "train.json"), "test") == ROWS  # a file is taken as is
    # Both present: .jsonl (the original release) is preferred.
    (jsonl / "train.json").write_text("[]", encoding="utf-8")
    assert gsm8k.load_gsm8k_split(str(jsonl), "train") == ROWS


@pytest.mark.parametrize("content, message", [
    ('{"question": "q"}\n', "row 1 has no 'answer' field"),
    ('{"question": "q", "answer": 3}\n', "row 1 has a non-text 'answer' field"),
    ('{"question": "q", "answer": "a"}\n{oops\n', "line 2 is not valid JSON"),
    ('[1]', "row 1 is not a JSON object"),
])
def test_bad_rows_name_the_flag_and_the_row(tmp_path, content, message):
    (tmp_path / "train.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(UsageError, match=message) as caught:
        gsm8k.load_gsm8k_split(str(tmp_path), "train", flag="--data")
    assert str(caught.value).startswith("--data ")


def test_missing_folder_or_file(tmp_path):
    with pytest.raises(UsageError, match="--dataset_location .*no such file or folder"):
        gsm8k.load_gsm8k_split(str(tmp_path / "absent"), "train")
    with pytest.raises(UsageError, match="has no test.jsonl or test.json"):
        gsm8k.load_gsm8k_split(str(tmp_path), "test")
    with pytest.raises(UsageError, match="no split"):
        gsm8k.load_gsm8k_split(str(tmp_path), "validation")


def test_download_tries_hub_then_github_and_explains_offline(monkeypatch):
    def offline(split):
        raise OSError("network is unreachable")

    monkeypatch.setattr(gsm8k, "_from_hub", offline)
    monkeypatch.setattr(gsm8k, "_from_github", lambda split: ROWS)
    assert gsm8k.load_gsm8k_split(None, "train") == ROWS
    monkeypatch.setattr(gsm8k, "_from_github", offline)
    with pytest.raises(UsageError) as caught:
        gsm8k.load_gsm8k_split("openai/gsm8k", "test", flag="--data")
    message = str(caught.value)
    assert "openai/gsm8k" in message and "grade-school-math" in message and "with --data" in message
    assert "\n" not in message
