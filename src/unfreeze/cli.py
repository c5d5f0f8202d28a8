"""The `unfreeze` command: parse a sub-command's options into its config and run it.

The recipes' tasks come from the registry (`unfreeze.registry`); `sweep` and `report`, which run or read
other tasks, are added here, at the top of the import graph.
"""

from __future__ import annotations

import sys

from unfreeze.config import parse_args
from unfreeze.errors import UsageError
from unfreeze.registry import TASKS, Task, suggest_task
from unfreeze.reporting.table import ReportConfig
from unfreeze.sweep.config import SweepConfig


def run_sweep(config: SweepConfig) -> int:
    from unfreeze.sweep.runner import run

    return run(config)


def run_report(config: ReportConfig) -> int:
    from unfreeze.reporting.table import run

    return run(config)


SWEEP = Task("sweep", "run every row (and seed) of a sweep file, resumably", SweepConfig, run_sweep,
             positional=("file",))
REPORT = Task("report", "print the results table of a sweep folder", ReportConfig, run_report, positional=("dir",))


def commands() -> dict[str, Task]:
    """Every sub-command, in the order `unfreeze --help` lists them (plug-ins registered later included)."""
    listed = dict(TASKS)
    suggest = listed.pop("suggest", None)
    return {**listed, SWEEP.name: SWEEP, REPORT.name: REPORT, **({"suggest": suggest} if suggest else {})}


def usage() -> str:
    tasks = commands()
    width = max(len(name) for name in tasks)
    lines = ["usage: unfreeze COMMAND [options]   (unfreeze COMMAND --help for its options)", "",
             "Which parameters should I train? Run fine-tuning ablations and report the table.", "", "commands:"]
    lines += [f"  {name:<{width}}  {task.summary}" for name, task in tasks.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    task = commands().get(name)
    if name == "suggest" and task is not None:  # classify's or sft's form, from --task or the arguments
        task = suggest_task(rest)
    if task is None:
        print(f"unfreeze: error: unknown command {name!r}\n{usage()}", file=sys.stderr)
        return 2
    try:
        config = parse_args(task.config, rest, prog=f"unfreeze {name}", positional=task.positional)
        result = task.run(config)
    except UsageError as err:
        print(f"unfreeze {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unfreeze {name}: interrupted; finished results are kept, nothing half-written.", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
