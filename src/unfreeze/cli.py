"""The `unfreeze` command: parse, then hand over to one task module.

Each sub-command lives in its own module that exposes `add_arguments(parser)` and `run(args)`.
Modules are imported lazily so that `unfreeze --help` stays fast and one command's heavy imports
never slow down another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from unfreeze.errors import UsageError

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("unfreeze.tasks.classify", "fine-tune a GPT-2 classifier on SMS spam (seed table 000)"),
    "inject-pauses": ("unfreeze.tasks.inject_pauses", "write GSM8K with <|pause|> tokens injected"),
    "sft": ("unfreeze.tasks.sft", "pause-token supervised fine-tuning on GSM8K (seed table 003)"),
    "eval-gsm8k": ("unfreeze.tasks.eval_gsm8k", "score a model on GSM8K test by greedy generation"),
    "sweep": ("unfreeze.sweep", "run every row (and seed) of a sweep file, resumably"),
    "report": ("unfreeze.report", "print the results table of a sweep folder"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unfreeze",
        description="Which parameters should I train? Run fine-tuning ablations and report the table.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen command's module is imported (for its flags).
        if name == command:
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def _requested_command(argv: list[str]) -> str | None:
    for token in argv:
        if token in COMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _requested_command(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        result = module.run(args)
    except UsageError as err:
        print(f"unfreeze {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unfreeze {args.command}: interrupted; finished results are kept, nothing half-written.",
              file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
