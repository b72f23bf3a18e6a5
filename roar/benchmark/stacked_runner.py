"""Train several cells of the ROAR grid at once, as one stacked model (``benchmark.stack``).

Hooker et al. (NeurIPS 2019) retrain one architecture for every (method, threshold, seed, mode)
cell. A small network leaves the device idle, so ``benchmark.stack: N`` trains N cells together
with :class:`~roar.models.stacked.StackedNetworks`, and each member reproduces the run that
:func:`roar.benchmark.runner.execute_run` would make of it alone:

* its own initialisation: ``seed_everything(seed)``, then the datamodule and the classifier are
  built exactly as ``execute_run`` builds them;
* its own random stream: the global generator's state after that is kept per member and swapped
  in for every draw the separate run's Trainer makes, in the same order: each epoch's train
  loader iterator (its base seed) and ``RandomSampler`` (its data order), fresh random masks and
  the augmentation of each batch, every validation's and the test's loader iterator (one draw
  each) and fresh masks; the sanity check draws nothing (Lightning runs it under ``isolate_rng``);
* its own masks (its datamodule's ``mask``), optimiser state (one SGD/AdamW over the stacked
  tensors is elementwise, so per member) and the same warm-up + cosine schedule
  (:func:`~roar.models.classifier.build_optimizer`), and BatchNorm statistics per member.

With ``vmap`` (CUDA) only the floating-point order of the batched kernels differs, so results
equal separate training within float tolerance; on CPU the members run their own kernels in
one loop and one optimiser step, and equal separate training to the last bit in our tests
(``tests/test_stacked_training.py``). Trainer settings whose
effect is not reproduced here (gradient clipping, accumulation, callbacks...) make the grid run
one by one, with the reason logged. Stacked members log their per-epoch training loss, each
validation's ``val/loss`` and ``val/acc`` and the final ``test/loss`` and ``test/acc`` at the steps a
run alone logs them, not Lightning's per-step training curves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything

from roar.benchmark.cell import _classifier, _datamodule, _finish_loggers, _loggers, run_config, run_directory
from roar.benchmark.plan import RunSpec
from roar.benchmark.provenance import TRAINER_DEFAULTS
from roar.benchmark.stack_settings import unstackable_reason
from roar.models.classifier import build_optimizer
from roar.models.stacked import StackedNetworks


def _device(cfg: Any) -> torch.device:
    accelerator = cfg.trainer.get("accelerator", "auto")
    return torch.device("cuda" if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()) else "cpu")


class MemberRandom:
    """One member's global random state (CPU, and CUDA when used), swapped in around its draws."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda else None
        self.device = device

    @contextmanager
    def active(self) -> Iterator[None]:
        outer_cpu = torch.get_rng_state()
        outer_cuda = torch.cuda.get_rng_state(self.device) if self.cuda else None
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)
        try:
            yield
        finally:
            self.cpu_state = torch.get_rng_state()
            torch.set_rng_state(outer_cpu)
            if self.cuda:
                self.cuda_state = torch.cuda.get_rng_state(self.device)
                torch.cuda.set_rng_state(outer_cuda, self.device)


class Member:
    """One cell of the stack: its spec, datamodule, classifier (for its hyperparameters and checkpoint) and random state."""

    def __init__(self, spec: RunSpec, cfg: Any, out: Path, base_ckpt: Path, device: torch.device) -> None:
        self.spec = spec
        method = None if spec.method == "unmasked" else spec.method
        mode = "roar" if spec.mode == "reference" else spec.mode
        # Exactly execute_run's sequence of draws: seed, datamodule, classifier (the initialisation).
        seed_everything(spec.seed, workers=True, verbose=False)
        self.dm = _datamodule(cfg, out, base_ckpt, method=method, threshold=spec.threshold, mode=mode, fill=spec.fill)
        self.model = _classifier(cfg, self.dm)
        self.dm.prepare_data()  # what Trainer.fit calls first: ranks are read, nothing is drawn
        self.dm.setup("fit")
        self.random = MemberRandom(device)
        self.device = device

    def eval_pass(self, split: str, limit: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A Trainer's pass over an evaluation split, in the member's random stream: masked batches."""
        loader = getattr(self.dm, f"{split}_dataloader")()
        with self.random.active():
            batches = iter(loader)  # the DataLoader iterator draws its base seed, as under the Trainer
        for k, (images, labels, indices) in enumerate(batches):
            if limit is not None and k >= limit:
                break
            with self.random.active():
                images = self.dm.mask(images.to(self.device), indices.to(self.device))
            yield images, labels.to(self.device)

    def train_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One training epoch in the member's random stream: its data order, masks and augmentation."""
        with self.random.active():
            batches = iter(self.dm.train_dataloader())
        while True:
            with self.random.active():
                batch = next(batches, None)  # the first draws RandomSampler's seed: the epoch's order
                if batch is None:
                    return
                images, labels, indices = batch
                images = self.dm.mask(images.to(self.device), indices.to(self.device))
                images = self.dm.augment_batch(images)
            yield images, labels.to(self.device)


def _loss(logits: torch.Tensor, labels: torch.Tensor, hp: Any, train: bool = True) -> torch.Tensor:
    """ImageClassifier._step's loss: label smoothing only in training, as a run alone logs val/test loss."""
    if hp.loss == "least_squares":
        return F.mse_loss(logits, F.one_hot(labels, logits.shape[1]).to(logits.dtype))
    return F.cross_entropy(logits, labels, label_smoothing=hp.label_smoothing if train else 0.0)


@torch.no_grad()
def evaluate(stack: StackedNetworks, members: list[Member], split: str) -> tuple[list[float], list[float]]:
    """Each member's loss and accuracy on its own masked ``split`` (a Trainer's val or test pass, its draws in its stream).

    What a run alone logs as ``{split}/loss`` and ``{split}/acc``: the loss averaged over samples as
    Lightning's on-epoch mean weighted by batch size accumulates it (float32 ``sum(loss * n) / sum(n)``),
    the accuracy as torchmetrics' MulticlassAccuracy divides it (float32 ``correct / n``).
    """
    training = stack.skeleton.training
    stack.eval()
    try:
        hp = members[0].model.hparams
        normalize = members[0].model.normalize.to(members[0].device)
        loss_sums = torch.zeros(len(members), dtype=torch.float32)
        correct = torch.zeros(len(members), dtype=torch.long)
        total = 0
        for step_batches in zip(*(m.eval_pass(split) for m in members), strict=True):
            logits = stack(torch.stack([normalize(x) for x, _ in step_batches]))
            for i, (_, labels) in enumerate(step_batches):
                loss_sums[i] = loss_sums[i] + _loss(logits[i], labels, hp, train=False).float().cpu() * len(labels)
                correct[i] += int((logits[i].argmax(dim=1) == labels).sum())
            total += len(step_batches[0][1])
    finally:
        stack.train(training)
    n = torch.tensor(max(1, total))
    # float32, as the separate run divides: the same predictions must record the same number, or a
    # stacked grid's tables differ from the serial grid's in the 8th digit (float64 236/359 =
    # 0.65738161..., float32 0.65738159...)
    return (loss_sums / n).tolist(), (correct.float() / float(n)).tolist()


def train_stack(
    members: list[Member],
    cfg: Any,
    on_epoch: Callable[[int, list[float]], None] | None = None,
    vectorize: bool | None = None,
    on_validation: Callable[[int, list[float], list[float]], None] | None = None,
) -> tuple[StackedNetworks, int]:
    """Train the members together, as each would be trained by ``Trainer.fit`` alone; returns the stack and the epochs.

    ``on_epoch(epoch, train losses)`` after each epoch's training, ``on_validation(epoch, val losses,
    val accuracies)`` after each validation (every ``check_val_every_n_epoch``), per member.
    ``vectorize``: see :class:`~roar.models.stacked.StackedNetworks` (None: ``vmap`` on CUDA, a loop on CPU).
    """
    device = members[0].device
    hp = members[0].model.hparams
    normalize = members[0].model.normalize.to(device)  # one split, one statistic: equal for every member
    stack = StackedNetworks([m.model.net for m in members], vectorize=vectorize).to(device)
    epochs = int(cfg.trainer.get("max_epochs") or TRAINER_DEFAULTS["max_epochs"])
    batches = len(members[0].dm.train_dataloader())
    optimizer, scheduler = build_optimizer(stack.named_parameters(), hp, batches * epochs, epochs, member_dims=1)
    # Lightning's sanity check runs under isolate_rng (Trainer._run_stage): it draws nothing from the stream.
    every = cfg.trainer.get("check_val_every_n_epoch", 1) or 1
    has_val = len(members[0].dm.val_indices) > 0
    for epoch in range(epochs):
        stack.train()
        losses = torch.zeros(len(members), device=device)
        for step_batches in zip(*(m.train_batches() for m in members), strict=True):
            images = torch.stack([normalize(x) for x, _ in step_batches])
            labels = [y for _, y in step_batches]
            logits = stack(images)
            per_member = torch.stack([_loss(logits[i], labels[i], hp) for i in range(len(members))])
            optimizer.zero_grad(set_to_none=True)
            per_member.sum().backward()  # member i's gradient is its own loss's: the others do not depend on it
            optimizer.step()
            scheduler.step()
            losses += per_member.detach()
        if on_epoch is not None:
            on_epoch(epoch, (losses / batches).tolist())
        if has_val and (epoch + 1) % every == 0:
            losses, accuracies = evaluate(stack, members, "val")
            if on_validation is not None:
                on_validation(epoch, losses, accuracies)
    return stack, epochs


def _torch_flags(deterministic: bool | str | None, benchmark: bool | None) -> None:
    """The process-wide flags a Lightning Trainer sets from ``deterministic`` and ``benchmark`` (its documented meaning)."""
    if deterministic is not None:
        torch.use_deterministic_algorithms(bool(deterministic), warn_only=deterministic == "warn")
        if deterministic:  # cuBLAS needs a fixed workspace to be deterministic
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if benchmark is not None or deterministic:  # deterministic with benchmark unset turns the autotuner off
        torch.backends.cudnn.benchmark = bool(benchmark) if benchmark is not None else False


def execute_stack(specs: list[RunSpec], cfg: Any, out: Path, base_ckpt: Path, vectorize: bool | None = None) -> list[dict[str, Any]]:
    """Train and test the specs' cells as one stack; one :func:`~roar.benchmark.runner.execute_run`-like outcome per spec.

    ``seconds`` of each outcome is its share of the stack's wall time.
    """
    reason = unstackable_reason(cfg)
    if reason:
        raise ValueError(f"these runs cannot be stacked: {reason}")
    start = time.perf_counter()
    # What Trainer(deterministic=..., benchmark=...) sets process-wide: a worker that runs only
    # stacks never builds a Trainer, so without this CUDA ran its nondeterministic kernels
    _torch_flags(cfg.trainer.get("deterministic"), cfg.trainer.get("benchmark"))
    device = _device(cfg)
    members = [Member(spec, cfg, out, base_ckpt, device) for spec in specs]
    folders = [run_directory(out, s) for s in specs]
    loggers, failed = [], True
    for spec, folder in zip(specs, folders, strict=True):  # _loggers empties and makes each folder
        loggers.append(_loggers(cfg, out, folder, spec.name, spec.mode, run_config(cfg, spec)))
    try:
        # Logged against the optimiser step, as Lightning logs a run alone: the same x axis
        # (trainer/global_step in W&B, step in metrics.csv) for a stacked and an unstacked run.
        batches = len(members[0].dm.train_dataloader())

        def on_epoch(epoch: int, losses: list[float]) -> None:
            for member_loggers, loss in zip(loggers, losses, strict=True):
                for logger in member_loggers:
                    logger.log_metrics({"train/loss": loss, "epoch": epoch}, step=(epoch + 1) * batches - 1)

        def on_validation(epoch: int, losses: list[float], accuracies: list[float]) -> None:
            # Lightning validates before it counts the epoch's last step: the same step as that epoch's end
            for member_loggers, loss, acc in zip(loggers, losses, accuracies, strict=True):
                for logger in member_loggers:
                    logger.log_metrics({"val/loss": loss, "val/acc": acc, "epoch": epoch}, step=(epoch + 1) * batches - 1)

        stack, epochs = train_stack(members, cfg, on_epoch, vectorize, on_validation)
        test_losses, accuracies = evaluate(stack, members, "test")
        outcomes = []
        for i, (member, folder, member_loggers) in enumerate(zip(members, folders, loggers, strict=True)):
            member.model.net.load_state_dict(stack.member_state(i))
            checkpoint = None
            if cfg.save_checkpoints:
                checkpoint = str(folder / "last.ckpt")
                # the fields Trainer.save_checkpoint writes after fit
                torch.save({"state_dict": member.model.state_dict(), "hyper_parameters": dict(member.model.hparams), "epoch": epochs, "global_step": epochs * batches, "stacked": len(members)}, checkpoint)
            for logger in member_loggers:
                logger.log_metrics({"test/loss": test_losses[i], "test/acc": accuracies[i], "epoch": epochs}, step=epochs * batches)
                logger.save()
            outcomes.append({"test_acc": accuracies[i], "epochs": epochs, "checkpoint": checkpoint})
        failed = False
    finally:
        for member_loggers in loggers:
            _finish_loggers(member_loggers, failed)
    share = (time.perf_counter() - start) / len(specs)
    return [{**o, "seconds": share} for o in outcomes]
