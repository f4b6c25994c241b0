"""The adapters and the frameworks' own schedule settings: a warm-up is honoured (checked
against its closed form, across a resume), a schedule the learned LR replaces warns by name,
several Lightning callbacks share a Trainer, timm's train.py resume call holds the LR. Each
runs in the framework's own loop, reading the LR each update used off the change of weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_integrations import _data, _hf_parts, _lightning_parts, _record_updates

START_LR = 0.05


def _ramp(n: int, steps: int, start: float = 0.0) -> list[float]:
    """The warm-up's closed form: step t < steps is scaled by start + (1 - start)(t + 1)/steps."""
    return [start + (1 - start) * (t + 1) / steps if t < steps else 1.0 for t in range(n)]


def _times(factors, lrs):
    return [f * lr for f, lr in zip(factors, lrs, strict=True)]


# -- Lightning ----------------------------------------------------------------------------------

def test_lightning_warm_up_and_an_overridden_scheduler_warns_and_the_monitor_logs_the_learned_lr(
        tmp_path, monkeypatch, replay_learned):
    pl, Regression, Memory, trainer, loader = _lightning_parts()  # skips without Lightning
    from metalr.integrations.lightning import LearnedLRCallback

    monkeypatch.chdir(tmp_path)

    class WithCosine(Regression):
        def configure_optimizers(self):
            opt = super().configure_optimizers()
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}

    model, logger = WithCosine(), Memory()
    monitor = pl.callbacks.LearningRateMonitor(logging_interval="step")
    # the monitor first: the learned LR must be back before it reads, whatever the order
    run = trainer(2, monitor, LearnedLRCallback("mnist1d-mlp", lr=START_LR, warmup_steps=3),
                  logger=logger)
    with warnings.catch_warnings(record=True) as caught:  # not pytest.warns: it re-emits the
        warnings.simplefilter("always")                 # warnings of Lightning's own code
        run.fit(model, loader)
    ours = [str(w.message) for w in caught if "LearnedLRCallback" in str(w.message)]
    assert len(ours) == 1 and "returns CosineAnnealingLR for optimizer 0" in ours[0]
    assert "the learned LR replaces it" in ours[0]
    want = _times(_ramp(8, 3), replay_learned(model.losses, 8, lr=START_LR))
    assert model.used == pytest.approx(want, rel=1e-9)
    # at step s the monitor logs the LR update s - 1 used, not the cosine's rescaling of it
    logged = {step: m["lr-SGD"] for step, m in logger.metrics if "lr-SGD" in m}
    assert [logged[s] for s in range(1, 8)] == pytest.approx(model.used[:-1], rel=1e-9)


def test_lightning_two_callbacks_for_two_optimizers_save_and_resume(tmp_path, monkeypatch,
                                                                   replay_learned):
    pl, _, _, trainer, loader = _lightning_parts()
    from metalr.integrations.lightning import LearnedLRCallback

    monkeypatch.chdir(tmp_path)

    class TwoNets(pl.LightningModule):
        """Two regressions, one optimizer each (manual optimization): different losses."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.nets = torch.nn.ModuleList(torch.nn.Linear(1, 1).double() for _ in range(2))
            self.automatic_optimization = False
            self.losses: tuple[list[float], ...] = ([], [])
            self.used: tuple[list[float], ...] = ([], [])

        def training_step(self, batch, batch_idx):
            x, y = batch
            for k, opt in enumerate(self.optimizers()):
                loss = torch.nn.functional.mse_loss(self.nets[k](x), y * (k + 1))
                self.losses[k].append(loss.item())
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()

        def configure_optimizers(self):
            opts = [torch.optim.SGD(net.parameters(), lr=0.0) for net in self.nets]
            self.used = tuple(_record_updates(opt) for opt in opts)
            return opts

    def callbacks():
        return [LearnedLRCallback("mnist1d-mlp", lr=START_LR, total_steps=8),
                LearnedLRCallback("mnist1d-mlp", lr=0.02, total_steps=8, optimizer_index=1,
                                  warmup_steps=6, warmup_start=0.1)]  # a ramp across the stop

    model = TwoNets()
    trainer(2, *callbacks()).fit(model, loader)
    want = (replay_learned(model.losses[0], 8, lr=START_LR),
            _times(_ramp(8, 6, 0.1), replay_learned(model.losses[1], 8, lr=0.02)))
    for k in range(2):  # each optimizer's LRs come from its own losses
        assert model.used[k] == pytest.approx(want[k], rel=1e-9)

    first, run = TwoNets(), trainer(1, *callbacks())
    run.fit(first, loader)
    run.save_checkpoint(tmp_path / "half.ckpt")
    states = torch.load(tmp_path / "half.ckpt", weights_only=True)["callbacks"]
    assert sorted(s["step"] for s in states.values() if "step" in s) == [4, 4]
    resumed = TwoNets()
    trainer(2, *callbacks()).fit(resumed, loader, ckpt_path=tmp_path / "half.ckpt")
    for k in range(2):
        assert first.used[k] + resumed.used[k] == pytest.approx(want[k], rel=1e-9)


def test_lightning_reads_a_checkpoint_saved_under_the_old_callback_key():
    pytest.importorskip("lightning.pytorch")
    from types import SimpleNamespace

    from metalr.integrations.lightning import LearnedLRCallback

    callback = LearnedLRCallback("mnist1d-mlp")
    assert callback.state_key != "LearnedLRCallback"
    state = {"step": 3}
    callback.on_load_checkpoint(SimpleNamespace(callbacks=[callback]), None,
                                {"callbacks": {"LearnedLRCallback": state}})
    assert callback.state_dict() == state
    two = [callback, LearnedLRCallback("mnist1d-mlp", optimizer_index=1)]
    two[1].on_load_checkpoint(SimpleNamespace(callbacks=two), None,
                              {"callbacks": {"LearnedLRCallback": state}})
    assert two[1].state_dict() == {}  # ambiguous with two callbacks: neither guesses


# -- Transformers -------------------------------------------------------------------------------

def test_transformers_honours_the_warm_up_warns_on_cosine_and_resumes(tmp_path, monkeypatch,
                                                                     replay_learned):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Regression, Points, args, StopAt = _hf_parts(tmp_path)  # skips without Transformers
    from metalr.integrations.transformers import LearnedLRTrainer

    settings = {"lr_scheduler_type": "cosine", "warmup_steps": 3}

    def train(model, callbacks=(), **settings):
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        used = _record_updates(opt)
        trainer = LearnedLRTrainer(model=model, args=args(2, **settings), train_dataset=Points(),
                                   optimizers=(opt, None), callbacks=list(callbacks),
                                   nets="mnist1d-mlp")
        return trainer, used

    model = Regression()
    with pytest.warns(UserWarning, match="lr_scheduler_type='cosine'.*replaces"):
        trainer, used = train(model, **settings)
    trainer.train()
    want = _times(_ramp(8, 3), replay_learned(model.losses, 8, lr=START_LR))
    assert used == pytest.approx(want, rel=1e-9)
    logged = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert logged == pytest.approx(want, rel=1e-12)

    # stopped inside the warm-up: the resumed run finishes the ramp, LR for LR
    with pytest.warns(UserWarning, match="cosine"):
        trainer, first = train(Regression(), [StopAt(2)], **settings)
    trainer.train()
    with pytest.warns(UserWarning, match="cosine"):
        trainer, rest = train(Regression(), **settings)
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert first + rest == pytest.approx(want, rel=1e-9)

    # a ratio of the run, the user's override, and the default schedule: no warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ratio, _ = train(Regression(), warmup_steps=0.25)
    assert not [w for w in caught if "replaces" in str(w.message)]
    ratio.create_optimizer_and_scheduler(num_training_steps=8)
    assert ratio.lr_scheduler.learned.warmup_steps == 2  # ceil(0.25 * 8), as the Trainer's
    opt = torch.optim.SGD(Regression().parameters(), lr=0.0)
    with pytest.warns(UserWarning, match="lr_scheduler_kwargs"):
        off = LearnedLRTrainer(model=Regression(), args=args(2, warmup_steps=3,
                                                             lr_scheduler_kwargs={"power": 2}),
                               train_dataset=Points(), optimizers=(opt, None),
                               nets="mnist1d-mlp", warmup_steps=0)
    off.create_optimizer_and_scheduler(num_training_steps=8)
    assert off.lr_scheduler.learned.warmup_steps == 0


# -- timm ---------------------------------------------------------------------------------------

def test_timm_driven_as_train_py_drives_it_warms_up_and_resumes(tmp_path, replay_learned):
    pytest.importorskip("timm")
    from timm.models import resume_checkpoint
    from timm.utils import AverageMeter, CheckpointSaver

    from metalr.integrations.timm import TimmLearnedLR

    x, y = _data()
    updates_per_epoch, epochs, first_lr = 4, 2, 0.01

    def setup():
        torch.manual_seed(0)
        model = torch.nn.Linear(1, 1).double()
        opt = torch.optim.SGD(model.parameters(), lr=first_lr)  # train.py's args.lr
        used = _record_updates(opt)
        sched = TimmLearnedLR(opt, "mnist1d-mlp", total_steps=updates_per_epoch * epochs,
                              lr=START_LR, warmup_t=3)
        return model, opt, sched, used

    def train_one_epoch(epoch, model, opt, sched, metrics):
        """timm's train.py: update, then step_update with the epoch's running mean loss."""
        losses_m, num_updates = AverageMeter(), epoch * updates_per_epoch
        for idx in torch.arange(64).split(16):
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses_m.update(loss.item(), len(idx))
            num_updates += 1
            metrics.append(losses_m.avg)
            sched.step_update(num_updates=num_updates, metric=losses_m.avg)
        sched.step(epoch + 1, losses_m.avg)

    model, opt, sched, used = setup()
    metrics: list[float] = []
    for epoch in range(epochs):
        train_one_epoch(epoch, model, opt, sched, metrics)
    # update n + 1 runs at the LR step_update set from the mean after update n; the first
    # update at the optimizer's own lr
    learned = _times(_ramp(8, 3), replay_learned(metrics, 8, lr=START_LR))
    assert used == pytest.approx([first_lr] + learned[:-1], rel=1e-9)

    # interrupted after epoch 0: timm's checkpoint and the scheduler's state beside it
    model, opt, sched, first = setup()
    saver = CheckpointSaver(model, opt, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    train_one_epoch(0, model, opt, sched, [])
    saver.save_checkpoint(0)
    torch.save(sched.state_dict(), tmp_path / "learned-lr-0.pt")

    model, opt, sched, rest = setup()
    start_epoch = resume_checkpoint(model, str(tmp_path / "last.pth.tar"), optimizer=opt)
    sched.load_state_dict(torch.load(tmp_path / f"learned-lr-{start_epoch - 1}.pt",
                                     weights_only=True))
    sched.step_update(start_epoch * updates_per_epoch)  # train.py's call on --resume: holds
    assert sched.learned.last_step == updates_per_epoch
    for epoch in range(start_epoch, epochs):
        train_one_epoch(epoch, model, opt, sched, [])
    assert first + rest == pytest.approx(used, rel=1e-9)
