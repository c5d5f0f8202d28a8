"""The classifier's training loop: one object that `unfreeze classify`, `unfreeze suggest` and sweeps drive.

`ClassifierTraining` is the reference's loop (`additional_experiments.py`): AdamW, gradient accumulation,
the training and validation loss on `eval_batches` batches every `eval_every` steps, the accuracy on
`eval_batches` batches after each epoch. It runs in slices: `advance(n)` trains n more optimizer steps and
returns; `advance()` trains to the end. classify runs it to the end; a suggest candidate is the same loop
stopped early (and continued in later rounds), so a candidate trained to its last step *is* classify's run.

Random state. The reference reseeds torch before its optimizer, and its data order (and that of the
loader passes of the periodic evaluations) comes from torch's global generator. The loop keeps its own
copy of that generator's state and swaps it in while it runs, so loops can be interleaved (suggest's
rounds) and the caller's random state does not matter. The periodic evaluations draw the same numbers
whether their scores are computed (`periodic_scores=True`, classify) or not (suggest, where only the
weights matter): the loaders are iterated either way.

Where inputs come from is `ClassifierInputs`: token ids through the whole model, or the activations of a
cache (`cache.protocol.ActivationReader`, in memory or on disk) through the stages after the frozen prefix.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from unfreeze.cache.protocol import ActivationReader, holds_pooled

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Schedule:
    """How a classifier trains (classify's options of the same meaning)."""

    num_epochs: int = 5
    batch_size: int = 8
    accumulation_steps: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.1
    eval_every: int = 50  # optimizer steps between the periodic loss evaluations
    eval_batches: int = 5  # batches per periodic evaluation
    ignore_index: int = -100
    seed: int = 123  # reseeded before the optimizer: data order and the evaluations' loader passes


class ClassifierInputs:
    """Class logits for a batch of example indices: from token ids, or from a cache's stored activations."""

    def __init__(self, model, tokens: dict, reader: ActivationReader | None, device: torch.device,
                 autocast_dtype: torch.dtype | None):
        self.model, self.tokens, self.reader = model, tokens, reader
        self.device, self.autocast_dtype = device, autocast_dtype

    @property
    def start_stage(self) -> int:
        """The first stage a batch runs (0: the whole model; past the final norm: only the head)."""
        return 0 if self.reader is None else self.reader.start_stage

    def __call__(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        index = [int(i) for i in indices]
        ids = torch.stack([self.tokens[split][i] for i in index]).to(self.device)
        # Positions after the furthest one the pooling reads change nothing (causal mask; under an attention
        # mask, padding): run only up to it. The caches store the same positions.
        ids = ids[:, :self.model.needed_length(ids)]
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.reader is None:
                return self.model(ids).float()
            stored = self.reader.rows(split, index).to(self.device)
            if holds_pooled(self.reader, self.model.final_stage):
                return self.model.head(stored).float()
            stored = stored[:, :ids.shape[1]].to(self.model.head.weight.dtype)
            return self.model.head(self.model.pooled_features(stored, self.reader.start_stage, ids)).float()


class IndexDataset(torch.utils.data.Dataset):
    """Yields (example index, label): inputs are fetched per batch by `ClassifierInputs`."""

    def __init__(self, labels: list[int]):
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return index, self.labels[index]


class ClassifierTraining:
    """A classifier's training run, resumable in slices (see the module docstring)."""

    def __init__(self, model, inputs: ClassifierInputs, labels: dict[str, list[int]], schedule: Schedule,
                 device: torch.device, *, log=None, periodic_scores: bool = True, progress: bool = False,
                 record: Callable[[dict, int], None] | None = None):
        """`record(numbers, step)` receives the periodic losses and accuracies as they are computed (a tracker)."""
        self.model, self.inputs, self.labels, self.schedule, self.device = model, inputs, labels, schedule, device
        self.log, self.periodic_scores, self.progress, self.record = log, periodic_scores, progress, record
        batch = schedule.batch_size
        # Like the reference: the training loader shuffles and drops the last incomplete batch.
        self.loaders = {"train": DataLoader(IndexDataset(labels["train"]), batch_size=batch, shuffle=True, drop_last=True),
                        **{split: DataLoader(IndexDataset(labels[split]), batch_size=batch)
                           for split in SPLITS[1:] if split in labels}}
        self.batches_per_epoch = len(self.loaders["train"])
        self.total_steps = schedule.num_epochs * self.batches_per_epoch  # batches; optimizer steps with accumulation 1
        self.steps_done = 0
        self.history = {"train_loss": [], "val_loss": [], "train_acc": [], "val_acc": [], "examples_seen": 0}
        self.step_seconds: list[float] = []  # wall time of each training batch (forward, backward, update)
        # ... and the process's CPU time over the same span: load from other processes stretches wall time but
        # adds none of their CPU time to ours, so suggest's cost model reads both (`recipes/suggest/cost.py`).
        self.step_cpu_seconds: list[float] = []
        saved = torch.get_rng_state()
        torch.manual_seed(schedule.seed)  # the reference reseeds before its optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        # The fused kernel updates every tensor in one pass (benchmarks/bench_train_step.py measures it).
        self.optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=schedule.weight_decay,
                                           fused=device.type in ("cpu", "cuda"))
        self._rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        self._steps = self._loop()

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    @contextlib.contextmanager
    def random_state(self):
        """Run with this loop's copy of torch's global random state (see the module docstring)."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(saved)

    def advance(self, steps: int | None = None) -> None:
        """Train `steps` more batches (all that are left when None; fewer at the end of the last epoch)."""
        left = self.total_steps - self.steps_done
        with self.random_state(), self._bar(left if steps is None else min(steps, left)) as bar:
            for _ in range(left if steps is None else min(steps, left)):
                next(self._steps)
                self.steps_done += 1
                bar.update(1)
            if self.done:  # finish the generator: the last epoch's accuracy passes run (and draw) too
                next(self._steps, None)

    def _bar(self, total: int):
        return tqdm(total=total, desc="training", unit="batch", disable=not self.progress)

    # --- the reference's loop -------------------------------------------------------------------------------
    def _loop(self):
        schedule, history, loader = self.schedule, self.history, self.loaders["train"]
        global_step = -1
        for epoch in range(schedule.num_epochs):
            self.model.train()
            for batch_index, (indices, labels) in enumerate(loader):
                begin, begin_cpu = time.perf_counter(), time.process_time()
                loss = self._loss("train", indices, labels) / schedule.accumulation_steps
                loss.backward()
                if (batch_index + 1) % schedule.accumulation_steps == 0 or batch_index + 1 == len(loader):
                    self.optimizer.step()
                    self.optimizer.zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.step_seconds.append(time.perf_counter() - begin)
                self.step_cpu_seconds.append(time.process_time() - begin_cpu)
                history["examples_seen"] += len(labels)
                global_step += 1
                if global_step % schedule.eval_every == 0:
                    self._periodic_losses(epoch, global_step)
                yield
            self._epoch_accuracies(epoch)

    def _loss(self, split: str, indices, labels) -> torch.Tensor:
        return F.cross_entropy(self.inputs(split, indices), labels.to(self.device),
                               ignore_index=self.schedule.ignore_index)

    def _first_batches(self, split: str):
        """The first `eval_batches` batches of a loader pass (a new pass: the training loader reshuffles)."""
        return (batch for _, batch in zip(range(self.schedule.eval_batches), self.loaders[split]))

    @torch.no_grad()
    def _periodic_losses(self, epoch: int, step: int) -> None:
        self.model.eval()
        losses = {}
        for split, key in (("train", "train_loss"), ("validation", "val_loss")):
            values = [self._loss(split, i, l).item() if self.periodic_scores else 0.0
                      for i, l in self._first_batches(split)]
            losses[key] = sum(values) / len(values) if values else float("nan")
        self.model.train()
        if self.periodic_scores:
            for key, value in losses.items():
                self.history[key].append(value)
            if self.record is not None:
                self.record(losses, step + 1)
            if self.log is not None:
                self.log.info(f"Ep {epoch + 1} (step {step:06d}): train loss {losses['train_loss']:.3f}, "
                              f"val loss {losses['val_loss']:.3f}")

    @torch.no_grad()
    def _epoch_accuracies(self, epoch: int) -> None:
        self.model.eval()
        scores = {}
        for split, key in (("train", "train_acc"), ("validation", "val_acc")):
            correct = seen = 0
            for indices, labels in self._first_batches(split):
                if self.periodic_scores:
                    correct += int((self.inputs(split, indices).argmax(dim=-1).cpu() == labels).sum())
                seen += len(labels)
            scores[key] = correct / seen if seen else float("nan")
        if self.periodic_scores:
            for key, value in scores.items():
                self.history[key].append(value)
            if self.record is not None:
                self.record(scores, self.steps_done + 1)
            if self.log is not None:
                self.log.info(f"Ep {epoch + 1}: training accuracy {scores['train_acc'] * 100:.2f}% | "
                              f"validation accuracy {scores['val_acc'] * 100:.2f}%")

    # --- scores -----------------------------------------------------------------------------------------
    @torch.inference_mode()  # nothing after a final pass backpropagates: skip autograd's bookkeeping too
    def predictions(self, split: str, desc: str | None = None) -> tuple[list[int], list[int]]:
        """(true, predicted) classes of a whole loader pass over `split`, as the reference's final accuracy
        counts them: the training loader keeps its shuffling and `drop_last` (drawn from this loop's state)."""
        self.model.eval()
        true, predicted = [], []
        with self.random_state():
            loader = self.loaders[split]
            for indices, labels in tqdm(loader, total=len(loader), desc=desc, leave=False, disable=desc is None):
                predicted += self.inputs(split, indices).argmax(dim=-1).cpu().tolist()
                true += labels.tolist()
        return true, predicted

    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> tuple[float, float]:
        """(accuracy, mean loss) over every example of `split`, in order; draws no random numbers."""
        self.model.eval()
        labels = torch.tensor(self.labels[split])
        correct, loss = 0, 0.0
        for start in range(0, len(labels), self.schedule.batch_size):
            indices = torch.arange(start, min(start + self.schedule.batch_size, len(labels)))
            logits = self.inputs(split, indices)
            target = labels[indices].to(self.device)
            correct += int((logits.argmax(-1) == target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
        self.model.train()
        return correct / max(len(labels), 1), loss / max(len(labels), 1)
