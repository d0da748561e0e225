"""The LoRA training loop: batches drawn by file weight, AdamW with warmup and
cosine decay, checkpoints on disk that a restarted job resumes from.

Everything a step depends on is a function of the step number (its batch is
drawn from a generator seeded with it), so resuming from the checkpoint of step
N continues exactly as if the run had never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine import Checkpoint
from .dataset import Example
from .lora import LoraModel, LoraSpec

STATE_FILE = "trainer_state.pt"
# A checkpoint's StepMetrics: whoever records the job's progress reads them from
# the checkpoint itself, even when the process that trained it is gone.
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class TrainingPlan:
    steps: int
    learning_rate: float
    weight_decay: float
    warmup_fraction: float
    seq_len: int
    batch_size: int
    checkpoint_every: int
    lora: LoraSpec = field(default_factory=LoraSpec)
    seed: int = 0


@dataclass(frozen=True)
class StepMetrics:
    step: int
    train_loss: float
    valid_loss: float | None
    valid_mean_token_accuracy: float | None


@dataclass(frozen=True)
class WeightedExamples:
    """Training examples, each with the probability weight of being drawn."""

    examples: list[Example]
    weights: list[float]

    @classmethod
    def from_files(cls, files: Sequence[tuple[list[Example], float]]) -> WeightedExamples:
        """A file's weight is its share of the draws, spread evenly over its examples."""
        examples, weights = [], []
        for file_examples, weight in files:
            examples.extend(file_examples)
            weights.extend([weight / len(file_examples)] * len(file_examples))
        return cls(examples, weights)

    def probabilities(self) -> torch.Tensor:
        weights = torch.tensor(self.weights, dtype=torch.float64)
        return weights / weights.sum()


def collate(examples: Sequence[Example], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [B, L] and the mask [B, L-1] of positions whose next token is trained."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.zeros(len(examples), length, dtype=torch.long)
    trained = torch.zeros(len(examples), length, dtype=torch.bool)
    for row, example in enumerate(examples):
        ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        trained[row, : len(example.trained)] = torch.tensor(example.trained)
    return ids.to(device), trained[:, 1:].to(device)


def loss_and_accuracy(
    model: LoraModel, examples: Sequence[Example], device: torch.device
) -> tuple[torch.Tensor, float]:
    """Mean cross-entropy over the trained tokens, and how many of them greedy
    prediction gets right. Only those positions go through the vocabulary head."""
    ids, predicts = collate(examples, device)
    hidden = model.hidden_states(ids)[:, :-1][predicts]
    targets = ids[:, 1:][predicts]
    logits = model.logits(hidden)
    loss = F.cross_entropy(logits, targets)
    accuracy = (logits.argmax(-1) == targets).float().mean().item() if len(targets) else 0.0
    return loss, accuracy


@torch.no_grad()
def evaluate(
    model: LoraModel, examples: Sequence[Example], device: torch.device, batch_size: int
) -> tuple[float, float]:
    """(mean loss, mean token accuracy) over `examples`, weighted by trained tokens."""
    total_loss = total_correct = total_tokens = 0.0
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        tokens = sum(sum(e.trained[1:]) for e in batch)
        loss, accuracy = loss_and_accuracy(model, batch, device)
        total_loss += loss.item() * tokens
        total_correct += accuracy * tokens
        total_tokens += tokens
    return total_loss / max(total_tokens, 1), total_correct / max(total_tokens, 1)


class Trainer:
    def __init__(
        self,
        checkpoint: Checkpoint,
        plan: TrainingPlan,
        train: WeightedExamples,
        valid: list[Example],
        workdir: Path,
        device: torch.device,
    ):
        self.plan = plan
        self.train = train
        self.valid = valid
        self.workdir = workdir
        self.device = device
        self.base_model = checkpoint.name
        torch.manual_seed(plan.seed)  # the initial A factors
        self.model = LoraModel(checkpoint, plan.lora, plan.seq_len).to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=plan.learning_rate, weight_decay=plan.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.trained_tokens = 0

    @property
    def checkpoints_dir(self) -> Path:
        return self.workdir / "checkpoints"

    def _lr_factor(self, step: int) -> float:
        warmup = int(self.plan.warmup_fraction * self.plan.steps)
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, self.plan.steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def _batch(self, step: int) -> list[Example]:
        generator = torch.Generator().manual_seed(self.plan.seed * 1_000_003 + step)
        chosen = torch.multinomial(
            self.train.probabilities(), self.plan.batch_size, replacement=True, generator=generator
        )
        return [self.train.examples[i] for i in chosen.tolist()]

    def resume(self) -> int:
        """Loads the newest complete checkpoint, if any; returns the step it was taken at."""
        done = sorted(self.checkpoints_dir.glob("step-*/" + STATE_FILE)) if self.checkpoints_dir.exists() else []
        if not done:
            return 0
        state = torch.load(done[-1], map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.trained_tokens = int(state["trained_tokens"])
        return self.step

    def run(self, on_checkpoint: Callable[[StepMetrics, Path], None], should_stop: Callable[[], bool]) -> bool:
        """Trains until the plan's last step (True) or until `should_stop` (False),
        checkpointing every `checkpoint_every` steps and at the end."""
        self.model.train()
        losses: list[float] = []
        while self.step < self.plan.steps:
            if should_stop():
                return False
            batch = self._batch(self.step)
            loss, _ = loss_and_accuracy(self.model, batch, self.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            self.trained_tokens += sum(len(e.input_ids) for e in batch)
            losses.append(loss.item())
            if self.step % self.plan.checkpoint_every == 0 or self.step == self.plan.steps:
                metrics = self._metrics(sum(losses) / len(losses))
                losses.clear()
                on_checkpoint(metrics, self._save(metrics))
        return True

    def _metrics(self, train_loss: float) -> StepMetrics:
        if not self.valid:
            return StepMetrics(self.step, train_loss, None, None)
        valid_loss, accuracy = evaluate(self.model, self.valid, self.device, self.plan.batch_size)
        return StepMetrics(self.step, train_loss, valid_loss, accuracy)

    def _save(self, metrics: StepMetrics) -> Path:
        """Writes the adapter and the optimizer state under step-N, atomically:
        a crash mid-write leaves no checkpoint that `resume` would pick."""
        final = self.checkpoints_dir / f"step-{self.step:06d}"
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        self.model.save_adapter(partial, self.base_model)
        trainable = {k: v for k, v in self.model.state_dict().items() if "lora_" in k}
        state = {
            "model": trainable,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": self.step,
            "trained_tokens": self.trained_tokens,
        }
        torch.save(state, partial / STATE_FILE)
        (partial / METRICS_FILE).write_text(json.dumps(dataclasses.asdict(metrics)))
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        return final
