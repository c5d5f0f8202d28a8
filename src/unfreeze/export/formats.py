"""Every export form by name, and `--export DIR`: each form that can hold the choice, and why the others cannot."""

from __future__ import annotations

from pathlib import Path

from unfreeze.errors import UsageError
from unfreeze.export import axolotl, llamafactory, names, peft
from unfreeze.export.plan import TrainPlan
from unfreeze.files import atomic_write_json, atomic_write_text

FORMATS = {"peft": peft.render, "axolotl": axolotl.render, "llamafactory": llamafactory.render, "names": names.render}
FILE_NAMES = {"peft": "adapter_config.json", "axolotl": "axolotl.yaml", "llamafactory": "llamafactory.yaml",
              "names": "trainable_parameters.txt"}
_NOTES = {"peft": peft.notes, "axolotl": axolotl.notes}


def render(plan: TrainPlan, to: str) -> str:
    """The text of `plan` in form `to`; a UsageError (one line) where that form cannot hold it."""
    if to not in FORMATS:
        raise UsageError(f"--to {to!r}: choose one of {', '.join(FORMATS)}")
    if to != "names" and not (plan.trained or plan.lora or plan.token_rows):
        raise UsageError(f"--to {to}: {plan.choice} trains nothing another stack has "
                         f"({'; '.join(plan.untranslatable) or 'no parameters'})")
    return FORMATS[to](plan)


def notes(plan: TrainPlan, to: str) -> list[str]:
    """What a user of form `to` must know: the choice's own notes, what the form leaves out or changes."""
    said = list(plan.notes) + _NOTES.get(to, lambda _plan: [])(plan)
    said += [f"note: {part} is unfreeze's own and is not in this export" for part in plan.untranslatable]
    return said


def write_all(plan: TrainPlan, folder: Path) -> dict:
    """Every form that can hold `plan` into `folder` (each file atomically), and `export.json`: what was written,
    what was not and why, the notes. Returns export.json's content."""
    written, skipped, said = {}, {}, []
    for to in FORMATS:
        try:
            text = render(plan, to)
        except UsageError as err:
            skipped[to] = str(err)
            continue
        atomic_write_text(folder / FILE_NAMES[to], text)
        written[to] = FILE_NAMES[to]
        said += [note for note in notes(plan, to) if note not in said]
    record = {"choice": plan.choice, "model": plan.base_model or plan.model_type, "task": plan.task,
              "written": written, "not_written": skipped, "notes": said}
    atomic_write_json(folder / "export.json", record)
    return record
