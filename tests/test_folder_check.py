"""A local model folder without weights, with a missing shard, or with cut or corrupt weight files is named
plainly, from file names and headers alone (issue 22, item 6)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from unfreeze.errors import UsageError
from unfreeze.models.folder_check import check_model_folder


def tiny_gpt2(folder: Path, **save) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, vocab_size=64)
    GPT2LMHeadModel(config).save_pretrained(folder, **save)
    return folder


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def refused(folder: Path, *fragments: str) -> str:
    with pytest.raises(UsageError) as raised:
        check_model_folder(folder, "--model")
    message = str(raised.value)
    assert "\n" not in message and "offline" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_complete_folder_passes_in_every_layout(tmp_path):
    check_model_folder(tiny_gpt2(tmp_path / "single"), "--model")
    check_model_folder(tiny_gpt2(tmp_path / "sharded", max_shard_size="8KB"), "--model")
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 1
    pickled = tiny_gpt2(tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(3)}, pickled / "pytorch_model.bin")
    check_model_folder(pickled, "--model")


def test_config_without_weights_says_so_and_is_fine_when_weights_are_not_needed(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=16, n_head=2).save_pretrained(tmp_path)
    refused(tmp_path, f"--model {tmp_path} has config.json but no weights (none of model.safetensors",
            "copy the weight files into it")
    check_model_folder(tmp_path, "--model", weights=False)  # --weights random takes the architecture only


@pytest.mark.parametrize("keep", [4, 20, -100])
def test_a_cut_safetensors_file_is_truncated_or_corrupt(tmp_path, keep):
    folder = tiny_gpt2(tmp_path)
    weights = folder / "model.safetensors"
    cut(weights, keep if keep > 0 else weights.stat().st_size + keep)
    refused(folder, f"--model {folder}: model.safetensors is truncated or corrupt (", "copy or download it again")


def test_a_safetensors_header_that_is_not_json_is_corrupt(tmp_path):
    folder = tiny_gpt2(tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    weights.write_bytes(data[:8] + b"x" * length + data[8 + length:])
    refused(folder, "model.safetensors is truncated or corrupt (its header is not the JSON")


def test_a_longer_safetensors_file_does_not_match_its_header(tmp_path):
    folder = tiny_gpt2(tmp_path)
    with open(folder / "model.safetensors", "ab") as handle:
        handle.write(b"\0" * 16)
    refused(folder, "model.safetensors is truncated or corrupt (", "where the header describes")


def test_a_sharded_folder_names_its_missing_and_its_cut_shards(tmp_path):
    folder = tiny_gpt2(tmp_path, max_shard_size="8KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    shards[-1].unlink()
    refused(folder, f"model.safetensors.index.json names {len(shards)} weight file(s), but {shards[-1].name} "
                    "is missing")
    folder = tiny_gpt2(tmp_path / "cut", max_shard_size="8KB")
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    cut(shard, shard.stat().st_size // 2)
    refused(folder, f"{shard.name} is truncated or corrupt")
    index = folder / "model.safetensors.index.json"
    cut(index, 10)
    refused(folder, "model.safetensors.index.json is truncated or corrupt")


def test_a_cut_pytorch_model_bin_is_truncated_or_corrupt(tmp_path):
    folder = tiny_gpt2(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"w": torch.zeros(1000)}, folder / "pytorch_model.bin")
    cut(folder / "pytorch_model.bin", 1000)
    refused(folder, "pytorch_model.bin is truncated or corrupt (not a readable torch.save archive")


def test_a_file_and_a_missing_folder_say_what_they_are(tmp_path):
    data = tmp_path / "some.csv"
    data.write_text("Label,Text\n")
    refused(data, f"--model {data} is a file (.csv), not a model folder or a .gguf file; pass the folder")
    refused(tmp_path / "gone", "no such folder")
    (tmp_path / "empty").mkdir()
    refused(tmp_path / "empty", "is not a model folder (no config.json)")
