"""The framework adapters: each applies, at every optimizer step, the LR the nets give for that
step's own loss (read off the update the optimizer really made), resumes from the framework's
checkpoints, and its example in docs/scheduler.md runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs" / "scheduler.md"
START_LR = 0.05


def _data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, 3 * x + 0.5 + 0.1 * torch.randn(n, 1, generator=g, dtype=torch.float64)


def _record_updates(optimizer) -> list[float]:
    """The LR each step really used, from the update of the bias: SGD without momentum moves
    it by -lr * grad (the LR is read after the step, not from param_groups beforehand)."""
    bias = optimizer.param_groups[0]["params"][-1]
    before, used = [], []
    optimizer.register_step_pre_hook(lambda o, a, k: before.append(bias.detach().clone()))
    optimizer.register_step_post_hook(lambda o, a, k: used.append(
        float((before[-1] - bias.detach()) / bias.grad)))
    return used


def _run_docs_block(tag: str, tmp_path, monkeypatch) -> dict:
    blocks = re.findall(rf"```python {tag}\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks, f"no ```python {tag} block in {DOCS.name}"
    monkeypatch.chdir(tmp_path)  # examples write their run folders into the working directory
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(DOCS), "exec"), namespace)  # noqa: S102 - our docs
    return namespace


# -- Lightning ----------------------------------------------------------------------------------

def _lightning_parts():
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import Logger

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(1, 1).double()
            self.losses: list[float] = []
            self.used: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.losses.append(loss.item())
            return loss

        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.0)
            self.used = _record_updates(opt)
            return opt

    class Memory(Logger):
        def __init__(self):
            super().__init__()
            self.metrics: list[tuple[int, dict]] = []

        name, version = "memory", 0

        def log_metrics(self, metrics, step=None):
            self.metrics.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            pass

    def trainer(epochs: int, *callbacks, logger=False):
        return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=logger,
                          callbacks=list(callbacks), log_every_n_steps=1,
                          enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, default_root_dir=os.getcwd())

    x, y = _data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    return pl, Regression, Memory, trainer, loader


def test_lightning_applies_each_steps_learned_lr_logs_it_and_resumes(tmp_path, monkeypatch,
                                                                     replay_learned):
    from metalr.integrations.lightning import LearnedLRCallback

    pl, Regression, Memory, trainer, loader = _lightning_parts()
    monkeypatch.chdir(tmp_path)
    total = 8  # 2 epochs of 4 batches
    model, logger = Regression(), Memory()
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step")
    trainer(2, LearnedLRCallback("mnist1d-mlp", lr=START_LR), monitor, logger=logger).fit(
        model, loader)
    assert len(model.used) == len(model.losses) == total
    want = replay_learned(model.losses, total, lr=START_LR)
    assert model.used == pytest.approx(want, rel=1e-9)
    assert len(set(want)) == total
    # the monitor reads the LR as a batch starts, before that batch's loss exists: it logs,
    # at step s, the learned LR of step s - 1
    logged = {step: m["lr-SGD"] for step, m in logger.metrics if "lr-SGD" in m}
    assert [logged[s] for s in range(1, total)] == pytest.approx(want[:-1], rel=1e-12)

    # stop after one epoch, save a Lightning checkpoint, resume in a new Trainer
    first, callback = Regression(), LearnedLRCallback("mnist1d-mlp", lr=START_LR,
                                                      total_steps=total)
    run = trainer(1, callback)
    run.fit(first, loader)
    run.save_checkpoint(tmp_path / "half.ckpt")
    assert torch.load(tmp_path / "half.ckpt", weights_only=True)["callbacks"]
    resumed = Regression()
    trainer(2, LearnedLRCallback("mnist1d-mlp", lr=START_LR, total_steps=total)).fit(
        resumed, loader, ckpt_path=tmp_path / "half.ckpt")
    assert first.used + resumed.used == pytest.approx(want, rel=1e-9)


def test_lightning_docs_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("lightning.pytorch")
    ns = _run_docs_block("lightning", tmp_path, monkeypatch)
    assert ns["callback"].scheduler.last_step == ns["trainer"].global_step > 0


# -- Transformers -------------------------------------------------------------------------------

def _hf_parts(tmp_path):
    transformers = pytest.importorskip("transformers")

    class Regression(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(1, 1).double()
            self.losses: list[float] = []

        def forward(self, x, labels=None):
            loss = torch.nn.functional.mse_loss(self.net(x), labels)
            if self.training:
                self.losses.append(loss.item())
            return {"loss": loss}

    class Points(torch.utils.data.Dataset):
        def __init__(self):
            self.x, self.y = _data()

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return {"x": self.x[i], "labels": self.y[i]}

    def args(epochs: int, **kw):
        return transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), per_device_train_batch_size=16,
            num_train_epochs=epochs, learning_rate=START_LR, max_grad_norm=0.0,
            report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, seed=0,
            data_seed=0, disable_tqdm=True, dataloader_num_workers=0, **kw)

    class StopAt(transformers.TrainerCallback):
        """Save a checkpoint at step ``n`` and stop there: an interrupted run."""

        def __init__(self, n: int):
            self.n = n

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == self.n:
                control.should_save = control.should_training_stop = True

    return Regression, Points, args, StopAt


def test_transformers_applies_each_steps_learned_lr_and_resumes(tmp_path, monkeypatch,
                                                                replay_learned):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from metalr.integrations.transformers import LearnedLRTrainer

    Regression, Points, args, StopAt = _hf_parts(tmp_path)

    def train(model, callbacks=()):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        used = _record_updates(opt)
        trainer = LearnedLRTrainer(model=model, args=args(2), train_dataset=Points(),
                                   optimizers=(opt, None), callbacks=list(callbacks),
                                   nets="mnist1d-mlp")
        return trainer, used

    total = 8  # 2 epochs of 4 batches
    model = Regression()
    trainer, used = train(model)
    trainer.train()
    want = replay_learned(model.losses, total, lr=START_LR)
    assert len(used) == total and used == pytest.approx(want, rel=1e-9)
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(want, rel=1e-12)  # the Trainer logs the LR each step used

    # interrupted after step 3: its checkpoint holds the schedule (scheduler.pt), and resuming
    # from it continues the uninterrupted run's LRs
    trainer, first = train(Regression(), [StopAt(3)])
    trainer.train()
    ckpt = tmp_path / "out" / "checkpoint-3"
    assert torch.load(ckpt / "scheduler.pt", weights_only=True)["step"] == 3
    trainer, rest = train(Regression())
    trainer.train(resume_from_checkpoint=str(ckpt))
    assert first + rest == pytest.approx(want, rel=1e-9)


def test_transformers_docs_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    ns = _run_docs_block("transformers", tmp_path, monkeypatch)
    assert ns["trainer"].lr_scheduler.learned.last_step == ns["trainer"].state.global_step > 0


# -- timm ---------------------------------------------------------------------------------------

def test_timm_step_update_applies_this_steps_learned_lr(replay_learned):
    pytest.importorskip("timm")
    from metalr.integrations.timm import TimmLearnedLR

    x, y = _data()
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    used = _record_updates(opt)
    sched = TimmLearnedLR(opt, "mnist1d-mlp", total_steps=8, lr=START_LR)
    losses, updates = [], 0
    for epoch in range(2):
        for idx in torch.arange(64).split(16):
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            losses.append(loss.item())
            sched.step_update(updates, metric=loss.item())  # before the update: its own loss
            opt.step()
            updates += 1
        sched.step(epoch + 1, metric=losses[-1])
    assert used == pytest.approx(replay_learned(losses, 8, lr=START_LR), rel=1e-9)
    state = sched.state_dict()
    twin = TimmLearnedLR(opt, "mnist1d-mlp", total_steps=8, lr=START_LR)
    twin.load_state_dict(state)
    assert twin.learned.last_step == 8 and twin.metric == losses[-1]
    # no metric (timm's train.py on --resume): the LR is held and the schedule stays put
    opt.param_groups[0]["lr"] = 0.0
    sched.step_update(updates)
    assert sched.learned.last_step == 8
    assert opt.param_groups[0]["lr"] == pytest.approx(used[-1], rel=1e-9)


def test_timm_docs_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    ns = _run_docs_block("timm", tmp_path, monkeypatch)
    assert ns["scheduler"].learned.last_step == ns["num_updates"] > 0
