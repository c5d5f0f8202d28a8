"""Is this local folder a model that can be loaded? Checked from file names and headers, before any work.

A folder saved by `save_pretrained` holds `config.json` and its weights in one of these layouts:

* `model.safetensors`, or `model.safetensors.index.json` naming its shards (`model-00001-of-00002.safetensors`, ...);
* `pytorch_model.bin`, or `pytorch_model.bin.index.json` naming its shards (the older pickle format).

What can be checked without reading the tensors is checked: that the files exist; that each safetensors
file's header (8 bytes giving the header's length, then that much JSON) parses and that the file is as
long as the header says (a copy cut short fails here); that each `.bin` file opens as the zip archive
`torch.save` writes (a cut archive has no readable central directory at its end). A loader that then
fails has a real problem with the contents, not a missing or half-copied file.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

from unfreeze.errors import UsageError

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
WEIGHT_LAYOUTS = (SAFETENSORS, SAFETENSORS_INDEX, PICKLE, PICKLE_INDEX)  # the order transformers prefers
LARGEST_HEADER = 100 * 2**20  # the safetensors format's own limit on its JSON header
COPY_WEIGHTS = "copy the weight files into it"
PICKLE_PROTOCOL_2 = b"\x80\x02"  # how the pre-zip `torch.save` format (torch < 1.6) begins


def check_model_folder(source: str | Path, flag: str, weights: bool = True,
                       without_weights: str = COPY_WEIGHTS) -> Path:
    """`source` is a model folder with config.json and (when `weights`) complete weight files; else one
    UsageError line that names the folder and what is missing, cut or corrupt. `without_weights` is the fix
    said for a folder with no weights (a command with random weights adds its flag for them)."""
    folder = Path(source).expanduser()
    if not folder.exists():
        raise UsageError(f"{flag} {source}: no such folder; pass a model folder (config.json and its weights)")
    if not folder.is_dir():
        raise UsageError(f"{flag} {source} is a file{_kind(folder)}, not a model folder or a .gguf file; pass the "
                         "folder that holds config.json and the weights (saved by save_pretrained), or a .gguf file")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {source} is not a model folder (no config.json); pass a folder saved by "
                         "save_pretrained")
    if weights:
        check_weights(folder, flag, without_weights)
    return folder


def _kind(path: Path) -> str:
    return f" ({path.suffix})" if path.suffix else ""


def check_weights(folder: Path, flag: str, without_weights: str = COPY_WEIGHTS) -> None:
    """The folder's weights exist in one of `WEIGHT_LAYOUTS` and none is missing, cut short or unreadable."""
    present = [name for name in WEIGHT_LAYOUTS if (folder / name).is_file()]
    if not present:
        raise UsageError(f"{flag} {folder} has config.json but no weights (none of {', '.join(WEIGHT_LAYOUTS)}); "
                         f"{without_weights}")
    layout = present[0]
    files = _shards(folder, layout, flag) if layout.endswith(".index.json") else [folder / layout]
    for path in files:
        problem = safetensors_problem(path) if path.suffix == ".safetensors" else pickle_problem(path)
        if problem:
            raise UsageError(f"{flag} {folder}: {path.name} is truncated or corrupt ({problem}); copy or download "
                             "it again")


def _shards(folder: Path, index_name: str, flag: str) -> list[Path]:
    """The shard files an index names, each of which must exist."""
    index = folder / index_name
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UsageError(f"{flag} {folder}: {index_name} is truncated or corrupt ({type(err).__name__}); copy or "
                         "download it again") from None
    if not names or not all(isinstance(name, str) for name in names):
        raise UsageError(f"{flag} {folder}: {index_name} names no weight files; copy or download it again")
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UsageError(f"{flag} {folder}: {index_name} names {len(names)} weight file(s), but {missing[0]}{more} "
                         "is missing; copy every shard into the folder")
    return [folder / name for name in names]


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing (None: the header parses and the size matches)."""
    size = path.stat().st_size
    if size < 8:
        return f"{size} bytes, shorter than the 8-byte header length"
    with open(path, "rb") as handle:
        (header_length,) = struct.unpack("<Q", handle.read(8))
        if header_length > min(LARGEST_HEADER, size - 8):
            return f"the header claims {header_length} bytes of a {size}-byte file"
        raw = handle.read(header_length)
    try:
        header = json.loads(raw.decode("utf-8"))
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return "its header is not the JSON a safetensors file starts with"
    expected = 8 + header_length + max(ends, default=0)
    if expected != size:
        return f"{size} bytes where the header describes {expected}"
    return None


def pickle_problem(path: Path) -> str | None:
    """What is wrong with a `torch.save` file's framing (None: the zip archive opens, or it is the old format)."""
    with open(path, "rb") as handle:
        start = handle.read(2)
    if start == PICKLE_PROTOCOL_2:
        return None  # the pre-zip format has no framing to check without unpickling it
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        return f"not a readable torch.save archive: {err}"
    return None
