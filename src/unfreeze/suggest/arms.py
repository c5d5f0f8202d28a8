"""One candidate's training run, resumable in slices: the loop of `unfreeze classify`, step for step.

An `Arm` holds a candidate's model, optimizer and position in its epochs. `advance(n)` runs n more
optimizer steps; `evaluate()` scores the validation split. The arm keeps its own copy of torch's global
random state and draws from it exactly what `classify.train` draws (data order, and the loader passes
of its periodic evaluations, whose batches we skip computing), so arms can be interleaved and a
candidate trained to its last step has seen the batches, in the order, of `unfreeze classify`.

Inputs come from the shared disk cache where the candidate's frozen prefix allows (pooled features
when only the head trains, hidden states at its start boundary when stored), as classify's in-memory
cache would give them; otherwise from token ids.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from unfreeze.tasks.classify import IndexDataset


class CachedForward:
    """Class logits for a batch of example indices, from the disk cache where the frozen prefix ends."""

    def __init__(self, model, tokens, cache, start: int, device: torch.device, autocast_dtype):
        self.model, self.tokens, self.cache, self.start = model, tokens, cache, start
        self.device, self.autocast_dtype = device, autocast_dtype
        final = model.final_stage
        self.kind = ("pooled" if cache is not None and start == final + 1 else
                     "hidden" if cache is not None and 2 <= start <= final and start in cache.boundaries else "none")

    def __call__(self, split: str, indices: torch.Tensor) -> torch.Tensor:
        index = indices.tolist()
        ids = torch.stack([self.tokens[split][i] for i in index]).to(self.device)
        ids = ids[:, :self.model.needed_length(ids)]  # as classify's Forward: only the positions pooling reads
        with torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            if self.kind == "none":
                return self.model(ids).float()
            if self.kind == "pooled":
                return self.model.head(self.cache.pooled(split, self.start, index).to(self.device)).float()
            stored = self.cache.hidden(split, self.start, index)[:, :ids.shape[1]].to(self.device)
            # as classify's Forward: the last block at the pooled position only (`pooled_features`)
            pooled = self.model.pooled_features(stored.to(self.model.head.weight.dtype), self.start, ids)
            return self.model.head(pooled).float()


def _draw_like_a_pass(loader: DataLoader, batches: int) -> None:
    """Consume the random draws of `zip(range(batches), loader)` without computing anything."""
    for _ in zip(range(batches), loader):
        pass


class Arm:
    """A candidate in training. `steps_done` of `total_steps`; `history` of (steps, val_acc, val_loss)."""

    def __init__(self, name: str, model, summary, forward: CachedForward, labels: dict, classify_cfg, device):
        self.name, self.model, self.summary, self.forward, self.device = name, model, summary, forward, device
        self.cfg = classify_cfg
        self.labels = labels
        self.train_loader = DataLoader(IndexDataset(labels["train"]), batch_size=classify_cfg.batch_size,
                                       shuffle=True, drop_last=True)
        self.val_loader = DataLoader(IndexDataset(labels["validation"]), batch_size=classify_cfg.batch_size)
        self.total_steps = classify_cfg.num_epochs * len(self.train_loader)
        self.steps_done = 0
        self.step_seconds: list[float] = []
        self.eval_seconds_per_example: float | None = None
        self.history: list[tuple[int, float, float]] = []
        saved = torch.get_rng_state()
        torch.manual_seed(classify_cfg.seed)  # classify.train reseeds before its optimizer
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=classify_cfg.lr, weight_decay=classify_cfg.weight_decay,
                                           fused=device.type in ("cpu", "cuda"))
        self._rng = torch.get_rng_state()
        torch.set_rng_state(saved)
        self._steps = self._loop()

    @property
    def done(self) -> bool:
        return self.steps_done >= self.total_steps

    @contextmanager
    def _own_random_state(self):
        saved = torch.get_rng_state()
        torch.set_rng_state(self._rng)
        try:
            yield
        finally:
            self._rng = torch.get_rng_state()
            torch.set_rng_state(saved)

    def _loop(self):
        cfg, global_step = self.cfg, -1
        for _epoch in range(cfg.num_epochs):
            self.model.train()
            for indices, labels in self.train_loader:
                begin = time.perf_counter()
                logits = self.forward("train", indices)
                loss = F.cross_entropy(logits, labels.to(self.device), ignore_index=cfg.ignore_index)
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.step_seconds.append(time.perf_counter() - begin)
                global_step += 1
                if global_step % cfg.eval_freq == 0:  # classify's periodic train/val loss passes
                    _draw_like_a_pass(self.train_loader, cfg.eval_iter)
                    _draw_like_a_pass(self.val_loader, cfg.eval_iter)
                yield
            _draw_like_a_pass(self.train_loader, cfg.eval_iter)  # classify's end-of-epoch accuracies
            _draw_like_a_pass(self.val_loader, cfg.eval_iter)

    def advance(self, steps: int) -> None:
        """Run up to `steps` more optimizer steps (fewer at the end of the last epoch)."""
        with self._own_random_state():
            for _ in range(min(steps, self.total_steps - self.steps_done)):
                next(self._steps)
                self.steps_done += 1
            if self.done:  # finish the generator: the last epoch's accuracy passes draw too
                next(self._steps, None)

    @torch.no_grad()
    def evaluate(self, split: str = "validation") -> tuple[float, float]:
        """(accuracy, mean loss) over the whole split, in order; recorded in `history` for validation
        (a validation score of the same step count is reused, not recomputed)."""
        if split == "validation" and self.history and self.history[-1][0] == self.steps_done:
            return self.history[-1][1], self.history[-1][2]
        self.model.eval()
        labels = torch.tensor(self.labels[split])
        begin = time.perf_counter()
        correct, loss = 0, 0.0
        for start in range(0, len(labels), self.cfg.batch_size):
            indices = torch.arange(start, min(start + self.cfg.batch_size, len(labels)))
            logits = self.forward(split, indices)
            target = labels[indices].to(self.device)
            correct += int((logits.argmax(-1) == target).sum())
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
        self.eval_seconds_per_example = (time.perf_counter() - begin) / max(len(labels), 1)
        self.model.train()
        accuracy, mean_loss = correct / max(len(labels), 1), loss / max(len(labels), 1)
        if split == "validation":
            self.history.append((self.steps_done, accuracy, mean_loss))
        return accuracy, mean_loss

    def step_cost(self) -> float:
        """Seconds per optimizer step: the median of the measured steps after the first (warm-up)."""
        measured = sorted(self.step_seconds[1:] or self.step_seconds)
        return measured[len(measured) // 2] if measured else float("nan")

    def eval_cost(self) -> float:
        """Seconds of one validation pass (measured by the last `evaluate`)."""
        return (self.eval_seconds_per_example or 0.0) * len(self.labels["validation"])

    def release(self) -> None:
        """Free the model and optimizer of an eliminated arm (its history stays)."""
        self.model = self.optimizer = self.forward = self._steps = None
