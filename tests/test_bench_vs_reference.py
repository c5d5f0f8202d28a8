"""benchmarks/bench_vs_reference.py loads the same weights into the reference's GPTModel as into HF GPT-2.

The benchmark's comparison means something only if both tools start from identical weights, so the
HF -> reference conversion is checked here on a tiny 2-layer model (skipped without llms_from_scratch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("llms_from_scratch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_vs_reference as bench  # noqa: E402

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 4}


@pytest.fixture(scope="module")
def tiny():
    hf_model = bench.random_gpt2(TINY, seed=0, vocab_size=100, n_positions=16)
    return hf_model, bench.reference_config(hf_model.config), bench.reference_state(hf_model)


def test_converted_weights_give_the_same_logits(tiny):
    hf_model, ref_cfg, state = tiny
    ref_model = bench.reference_model(ref_cfg, state)
    ids = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    assert bench.max_logit_difference(hf_model, ref_model, ids) < bench.LOGIT_TOLERANCE
    # The check can fail: the logits differ once one projection is left untransposed.
    broken = dict(state)
    name = "trf_blocks.1.ff.layers.0.weight"
    broken[name] = torch.randn_like(state[name])
    assert bench.max_logit_difference(hf_model, bench.reference_model(ref_cfg, broken), ids) > 1e-3


def test_conversion_covers_every_weight(tiny):
    _, ref_cfg, state = tiny
    incomplete = {name: tensor for name, tensor in state.items() if name != "trf_blocks.0.att.W_key.bias"}
    with pytest.raises(RuntimeError, match="W_key.bias"):
        bench.reference_model(ref_cfg, incomplete)


@pytest.mark.parametrize("row, extra", [("last_layer", 0), ("last_block", "block"), ("all", "all")])
def test_reference_setup_trains_what_the_reference_trains(tiny, row, extra):
    _, ref_cfg, state = tiny
    model = bench.reference_setup(row, ref_cfg, state, lora_rank=4, lora_alpha=8)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = 32 * 2 + 2
    block = sum(p.numel() for p in model.trf_blocks[-1].parameters()) + 2 * 32  # + final norm
    expected = {0: head, "block": head + block, "all": sum(p.numel() for p in model.parameters())}[extra]
    assert trainable == expected


@pytest.mark.parametrize("preset", ["lora", "lora_alternative"])
def test_classify_draws_the_references_lora_adapters(tiny, tmp_path, preset):
    """`unfreeze classify`'s model setup and the reference's start from bit-identical LoRA A matrices.

    The reference seeds, creates the head and calls `replace_linear_with_lora`, which draws every A from the
    global generator in module order (query, key, value, out_proj, ff in, ff out per block, then the head);
    classify must draw the same numbers in the same order, or the same weights train differently.
    """
    from llms_from_scratch.appendix_e import LoRALayer as ReferenceLoRA

    from unfreeze.models.lora import LoRAUpdate
    from unfreeze.recipes.classify.config import ClassifyConfig
    from unfreeze.recipes.classify.model import body_config, build_trainable_model, model_source

    hf_model, ref_cfg, state = tiny
    hf_model.save_pretrained(tmp_path / "model")
    cfg = ClassifyConfig(model_size=str(tmp_path / "model"), weights="pretrained", trainable_layers=preset,
                         lora_rank=4, lora_alpha=8, seed=bench.SEED)
    source = model_source(cfg)
    ours, _ = build_trainable_model(cfg, source, body_config(source))
    ours_a = [m.A for m in ours.modules() if isinstance(m, LoRAUpdate)]

    reference = bench.reference_setup("lora", ref_cfg, state, lora_rank=4, lora_alpha=8)
    reference_a = [m.A for m in reference.modules() if isinstance(m, ReferenceLoRA)]
    assert len(ours_a) == len(reference_a) == 2 * 6 + 1
    for index, (mine, theirs) in enumerate(zip(ours_a, reference_a)):
        assert torch.equal(mine, theirs), f"A matrix {index} differs"
    torch.manual_seed(0)  # another stream: the comparison above can fail
    other_cfg = ClassifyConfig(**{**vars(cfg), "seed": 7})
    other, _ = build_trainable_model(other_cfg, source, body_config(source))
    assert not torch.equal(next(m.A for m in other.modules() if isinstance(m, LoRAUpdate)), ours_a[0])
