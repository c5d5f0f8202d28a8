"""Experiment trackers behind one small interface: `--report_to none|trackio|wandb|mlflow|tensorboard`.

    check_tracker(report_to)                     # before any work: one line naming the extra to install
    with open_tracker(report_to, name, folder, config, group=sweep) as tracker:
        tracker.log({"train_loss": 0.41, "val_loss": 0.52}, step=50)
        tracker.log_final({"test_acc": 0.95})
        tracker.link("model", out / "final")
    metrics["tracker_run"] = tracker.reference()  # where the run lives, for `unfreeze report`

The local default is **trackio**: no account, no server, no network; every run of a project in one
SQLite file; a dashboard (`trackio show`); what TRL recommends; and a light install (15 small packages,
38 MB, no gradio) against MLflow's 58 for a local store with a UI. docs/tracking.md has the measurements
and why it is a core dependency.

Where a run is written, unless the tracker's own setting says otherwise (TRACKIO_DIR, WANDB_DIR,
MLFLOW_TRACKING_URI):
* trackio:     <folder>/trackio/unfreeze.db   (view: TRACKIO_DIR=<folder>/trackio trackio show)
* wandb:       <folder>/wandb/(offline-)run-* (WANDB_MODE=offline works without an account)
* mlflow:      sqlite:///<folder>/mlflow.db   (view: mlflow ui --backend-store-uri ...)
* tensorboard: <folder>/tensorboard/<run name>/
`folder` is the sweep's folder for a sweep's runs (a run's own folder is renamed when it finishes)
and the run's `--out` otherwise. Runs are named `<sweep>/<row>/seed-<s>` (or the run folder's name)
and grouped by sweep (`names_for`), all in the project `unfreeze`.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import netrc
import os
import sys
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from unfreeze.errors import UsageError

TRACKERS = ("none", "trackio", "wandb", "mlflow", "tensorboard")
ReportTo = Literal["none", "trackio", "wandb", "mlflow", "tensorboard"]  # the type of every --report_to
LOCAL_DEFAULT = "trackio"
PROJECT = "unfreeze"
# The modules each tracker imports, and the extra of unfreeze that installs them.
NEEDS: dict[str, tuple[tuple[str, ...], str]] = {
    "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow", "sqlalchemy", "alembic"), "mlflow"),  # a local SQLite store needs the last two
    "tensorboard": (("tensorboard", "torch.utils.tensorboard"), "tensorboard"),
}
OFFLINE_WANDB_MODES = ("offline", "disabled", "dryrun")


def names_for(out: str | Path | None, sweep: str | Path | None = None, row: str | None = None,
              seed: int | None = None) -> tuple[str, str | None]:
    """(run name, group): `<sweep>/<row>/seed-<s>` grouped by the sweep, or a lone run's folder name."""
    if sweep is not None and row is not None and seed is not None:
        sweep_name = Path(sweep).resolve().name
        return f"{sweep_name}/{row}/seed-{seed}", sweep_name
    if out is not None:
        return Path(out).resolve().name, None
    return f"run-{time.strftime('%Y%m%d-%H%M%S')}", None


# --- checking, before any work -----------------------------------------------------------------------


def check_tracker(report_to: str, flag: str = "--report_to") -> None:
    """Raise a one-line UsageError unless `report_to` names a tracker that is installed and can start."""
    if report_to not in TRACKERS:
        raise UsageError(f"{flag} {report_to!r}: choose one of {', '.join(TRACKERS)}")
    if report_to == "none":
        return
    modules, extra = NEEDS[report_to]
    if report_to == "mlflow" and os.environ.get("MLFLOW_TRACKING_URI"):
        modules = modules[:1]  # a tracking server keeps the store: no local database packages needed
    install = f'pip install "unfreeze[{extra}]"'
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            missing = (err.name or module).split(".")[0]
            raise UsageError(f"{flag} {report_to} needs the {missing} package, which is not installed; "
                             f"{install}") from None
        except Exception as err:  # an install that is broken (a dependency missing, a version clash)
            said = " ".join(f"{type(err).__name__}: {err}".split())[:160]
            raise UsageError(f"{flag} {report_to}: {module} cannot be imported ({said}); {install}") from None
    if report_to == "wandb":
        _check_wandb_login(flag)


def _check_wandb_login(flag: str) -> None:
    """Online W&B needs a key; without one wandb.init would stop to ask for it (or fail) mid-run."""
    if os.environ.get("WANDB_MODE", "").lower() in OFFLINE_WANDB_MODES or os.environ.get("WANDB_API_KEY"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
    with contextlib.suppress(OSError, netrc.NetrcParseError):
        if netrc.netrc(path).authenticators(host):
            return  # `wandb login` wrote it
    raise UsageError(f"{flag} wandb: not logged in to W&B (no WANDB_API_KEY, no `wandb login`); log in, or set "
                     "WANDB_MODE=offline to write the run locally and `wandb sync` it later")


# --- the interface --------------------------------------------------------------------------------------


class Tracker:
    """One run in one tracker. The base class is the `none` tracker: every call does nothing."""

    backend = "none"

    def __init__(self, run_name: str, group: str | None, project: str = PROJECT):
        self.run_name, self.group, self.project = run_name, group, project
        self.last_step = 0
        self.links: dict[str, str] = {}
        self.finished = False

    # what a recipe calls
    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Numbers at an optimizer step (non-numbers and NaN are left out: trackers plot numbers)."""
        numbers = numeric(metrics)
        self.last_step = max(self.last_step, int(step))
        if numbers:
            self._log(numbers, int(step))

    def log_final(self, metrics: dict[str, Any]) -> None:
        """The run's final metrics (test accuracy, training time, ...), at its last step."""
        numbers = numeric(metrics)
        if numbers:
            self._final(numbers)

    def link(self, name: str, path: str | Path) -> None:
        """Record where something of the run lives (its folder, model folder, predictions file)."""
        self.links[name] = str(path)
        self._link(name, str(path))

    def finish(self, failed: bool = False) -> None:
        if not self.finished:
            self.finished = True
            self._finish(failed)

    def reference(self) -> dict[str, Any] | None:
        """Where the run lives (what metrics.json keeps as `tracker_run` and the report links)."""
        return None

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        self.finish(failed=exc_type is not None)

    # what a backend implements
    def _log(self, numbers: dict[str, float], step: int) -> None: ...
    def _final(self, numbers: dict[str, float]) -> None: ...
    def _link(self, name: str, path: str) -> None: ...
    def _finish(self, failed: bool) -> None: ...

    def _reference(self, location: str, view: str, url: str | None = None, run_id: str | None = None) -> dict:
        return {"backend": self.backend, "project": self.project, "group": self.group, "run": self.run_name,
                "id": run_id, "location": location, "url": url, "view": view}


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def open_tracker(report_to: str, run_name: str, folder: str | Path | None, config: dict[str, Any] | None = None,
                 group: str | None = None, project: str = PROJECT,
                 links: dict[str, str | Path] | None = None) -> Tracker:
    """Start a run in the tracker `report_to` (checked first), writing under `folder` (see module doc)."""
    check_tracker(report_to)
    folder = Path(folder).resolve() if folder is not None else None
    config = json.loads(json.dumps(config or {}, default=str))  # paths and enums as text, for every backend
    backends = {"none": Tracker, "trackio": TrackioTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
                "tensorboard": TensorboardTracker}
    if report_to == "none":
        tracker = Tracker(run_name, group, project)
    else:
        tracker = backends[report_to](run_name, group, project, folder, config)
    for name, path in (links or {}).items():
        tracker.link(name, path)
    return tracker


# --- trackio (the local default) --------------------------------------------------------------------------

_open_trackio_store: list[Path] = []  # the store of the trackio run now open in this process, if any


def trackio_store(folder: Path | None) -> Path:
    """TRACKIO_DIR when the user set it, else <folder>/trackio, else trackio's own default."""
    if os.environ.get("TRACKIO_DIR"):
        return Path(os.environ["TRACKIO_DIR"]).expanduser().resolve()
    if folder is not None:
        return folder / "trackio"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "trackio"


def point_trackio_at(store: Path, project: str) -> None:
    """trackio reads its folder once, at import, into module globals; point every loaded trackio module at
    `store` (we never set TRACKIO_DIR, so a later run in this process can choose another folder)."""
    if _open_trackio_store and _open_trackio_store[0] != store:
        raise RuntimeError(f"a trackio run is still open in {_open_trackio_store[0]}; finish it first")
    import trackio  # noqa: F401 -- loads the modules rebound below
    from trackio.sqlite_storage import SQLiteStorage

    places = {"TRACKIO_DIR": store, "MEDIA_DIR": store / "media", "ARTIFACTS_DIR": store / "artifacts"}
    for name, module in list(sys.modules.items()):
        if module is not None and (name == "trackio" or name.startswith("trackio.")):
            for attribute, value in places.items():
                if isinstance(getattr(module, attribute, None), Path):
                    setattr(module, attribute, value)
    if SQLiteStorage.get_project_db_path(project).parent != store:  # a trackio that keeps its folder elsewhere
        raise UsageError(f"--report_to trackio: this trackio version cannot be pointed at {store}; set "
                         f"TRACKIO_DIR={store} before starting, or pip install \"unfreeze[trackio]\"")


class TrackioTracker(Tracker):
    backend = "trackio"

    def __init__(self, run_name: str, group: str | None, project: str, folder: Path | None, config: dict):
        super().__init__(run_name, group, project)
        import trackio

        self.store = trackio_store(folder)
        self.store.mkdir(parents=True, exist_ok=True)
        point_trackio_at(self.store, project)
        with contextlib.redirect_stdout(sys.stderr):  # its banner must not mix into a command's printed table
            self.run = trackio.init(project=project, name=run_name, group=group, config=config, embed=False,
                                    auto_log_cpu=False, auto_log_gpu=False)
        _open_trackio_store[:] = [self.store]

    def _log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def _final(self, numbers: dict[str, float]) -> None:
        self.run.log(numbers, step=self.last_step)

    def _link(self, name: str, path: str) -> None:
        import trackio

        # The config is stored with the first logged step; a link made later is a text entry of the run.
        if not getattr(self.run, "_config_logged", True):
            self.run.config.setdefault("links", {})[name] = path
        else:
            self.run.log({f"link/{name}": trackio.Markdown(path)}, step=self.last_step)

    def _finish(self, failed: bool) -> None:
        import trackio
        from trackio import context_vars

        try:
            with contextlib.redirect_stdout(sys.stderr):
                if context_vars.current_run.get() is self.run:
                    trackio.finish()
                else:
                    self.run.finish()
        finally:
            _open_trackio_store.clear()

    def reference(self) -> dict[str, Any]:
        return self._reference(str(self.store / f"{self.project}.db"),
                               f'TRACKIO_DIR={self.store} trackio show --project "{self.project}"',
                               run_id=getattr(self.run, "id", None))


# --- Weights & Biases -------------------------------------------------------------------------------------


class WandbTracker(Tracker):
    backend = "wandb"

    def __init__(self, run_name: str, group: str | None, project: str, folder: Path | None, config: dict):
        super().__init__(run_name, group, project)
        import wandb

        directory = None if os.environ.get("WANDB_DIR") or folder is None else folder
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        self.project = os.environ.get("WANDB_PROJECT", project)
        self.run = wandb.init(project=self.project, name=run_name, group=group, config=config,
                              dir=None if directory is None else str(directory))

    def _log(self, numbers: dict[str, float], step: int) -> None:
        self.run.log(numbers, step=step)

    def _final(self, numbers: dict[str, float]) -> None:
        self.run.summary.update(numbers)

    def _link(self, name: str, path: str) -> None:
        self.run.config.update({f"link/{name}": path}, allow_val_change=True)

    def _finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def run_folder(self) -> Path:
        return Path(self.run.dir).parent  # wandb/(offline-)run-<time>-<id>/, holding files/ and the .wandb log

    def reference(self) -> dict[str, Any]:
        url = self.run.url if not self.run.offline else None
        view = f"wandb sync {self.run_folder()}" if self.run.offline else (url or "")
        return self._reference(str(self.run_folder()), view, url=url, run_id=self.run.id)


# --- MLflow -----------------------------------------------------------------------------------------------


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, run_name: str, group: str | None, project: str, folder: Path | None, config: dict):
        super().__init__(run_name, group, project)
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(folder or Path.cwd()) / 'mlflow.db'}"
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(project)
        tags = {"mlflow.runName": run_name, **({"group": group} if group else {})}
        self.run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags).info.run_id
        params = [Param(key[:250], str(value)[:6000]) for key, value in flatten(config).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def _experiment(self, project: str) -> str:
        found = self.client.get_experiment_by_name(project)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(project)
        except Exception:  # another process of the sweep created it first
            found = self.client.get_experiment_by_name(project)
            if found is None:
                raise
            return found.experiment_id

    def _metrics(self, numbers: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in numbers.items()])

    def _log(self, numbers: dict[str, float], step: int) -> None:
        self._metrics(numbers, step)

    def _final(self, numbers: dict[str, float]) -> None:
        self._metrics(numbers, self.last_step)

    def _link(self, name: str, path: str) -> None:
        self.client.set_tag(self.run_id, f"link.{name}", path)

    def _finish(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")

    def reference(self) -> dict[str, Any]:
        url = None
        if self.uri.startswith(("http://", "https://")):
            url = f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return self._reference(self.uri, f"mlflow ui --backend-store-uri {self.uri}", url=url, run_id=self.run_id)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow parameters are flat."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- TensorBoard ------------------------------------------------------------------------------------------


class TensorboardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, run_name: str, group: str | None, project: str, folder: Path | None, config: dict):
        super().__init__(run_name, group, project)
        from torch.utils.tensorboard import SummaryWriter

        self.root = (folder or Path.cwd()) / "tensorboard"
        self.log_dir = self.root / run_name
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2) + "\n```")

    def _log(self, numbers: dict[str, float], step: int) -> None:
        for key, value in numbers.items():
            self.writer.add_scalar(key, value, step)

    def _final(self, numbers: dict[str, float]) -> None:
        self._log(numbers, self.last_step)

    def _link(self, name: str, path: str) -> None:
        self.writer.add_text(f"link/{name}", path)

    def _finish(self, failed: bool) -> None:
        self.writer.close()

    def reference(self) -> dict[str, Any]:
        return self._reference(str(self.log_dir), f"tensorboard --logdir {self.root}")
