"""The README's notebook example ("In a notebook"), run as written: its code block is read from README.md and
executed in a fresh folder beside `../shared/data` (a link to the real one), so a change that breaks the example
breaks this test."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def notebook_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("### In a notebook", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_runs(shared_data, tmp_path, monkeypatch):
    (tmp_path / "shared").symlink_to(shared_data.parent)
    work = tmp_path / "notebook"
    work.mkdir()
    monkeypatch.chdir(work)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(notebook_example(), "README.md (In a notebook)", "exec"), {"__name__": "__readme__"})
    said = printed.getvalue()
    assert "trainable: last_blocks:2 -> 20 tensors, 146,240 of 292,416 parameters" in said  # the comment's numbers
    assert "^model.layers.2." in said and "input_layernorm" in said and '"lora_alpha": 64' in said
    assert "trainable_layers='middle' in unfreeze.classify(...): invalid choice" in said
    final = work / "runs" / "notebook" / "final"
    assert (final / "config.json").is_file() and (final / "README.md").is_file()
    assert (work / "runs" / "notebook" / "export" / "axolotl.yaml").is_file()
    assert "'label': 'spam'" in said or "'label': 'ham'" in said


def test_import_unfreeze_stays_light():
    """`import unfreeze` (and so `unfreeze --help`) loads neither torch nor transformers: the API resolves lazily."""
    code = "import sys, unfreeze; unfreeze.__version__; print('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    assert done.stdout.split() == ["False", "False"], done.stderr
    import unfreeze

    for name in unfreeze.__all__:
        assert getattr(unfreeze, name) is not None
    with pytest.raises(AttributeError):
        unfreeze.nothing_of_that_name  # noqa: B018
