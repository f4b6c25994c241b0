"""The LR Controller (Xu et al. 2019): env, PPO episodes, saving, meta-test, features, a recipe."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("stable_baselines3")
from gymnasium.utils.env_checker import check_env

from metalr.cli import main
from metalr.contracts.protocols import EpisodicLearner, HypergradientLearner
from metalr.engine.algorithm import Engine, EngineConfig, is_episodic, is_meta_learned
from metalr.engine.weights import WeightsError, load_meta_learner, save_meta_learner
from metalr.testing import Blobs, _mlp

EPOCHS, BATCH = 2, 32  # Blobs: 512 - 64 meta = 448 train, 14 steps an epoch, 28 a run


@pytest.fixture(scope="module")
def task():
    t = Blobs()
    t.setup(0, torch.device("cpu"))
    return t


def build(registry, **options):
    return registry.get("lr_policy", "lr-controller").build(
        **{"initial_lr": 0.05, "act_every": 4, **options})


def engine_for(task, policy, seed: int, order_seed: int | None = None) -> Engine:
    torch.manual_seed(seed)
    model = _mlp(task.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    return Engine(task, model, opt, policy, EngineConfig(
        epochs=EPOCHS, batch_size=BATCH, seed=seed, order_seed=order_seed, meta_batch_size=32,
        meta_train=False))


def maker(task, base_seed: int = 100):
    return lambda i, acting: engine_for(task, acting, base_seed + i)


@pytest.fixture(scope="module")
def trained(registry, task, tmp_path_factory):
    """A controller after a few hundred PPO timesteps on the tiny task, and its episodes.

    The temp dir is a fresh folder, so that what meta-training leaves in it can be listed."""
    import tempfile

    from metalr.engine.episodes import train_episodes

    ctrl = build(registry, act_every=2, episodes=20, batch_size=13, n_epochs=4, ppo_lr=3e-3)
    before = {k: v.clone() for k, v in ctrl.state_dict().items()}
    tmp, saved = tmp_path_factory.mktemp("tempdir"), tempfile.tempdir
    tempfile.tempdir = str(tmp)
    try:
        records = train_episodes(ctrl, maker(task), progress=False)
    finally:
        tempfile.tempdir = saved
    return ctrl, before, records, sorted(p.name for p in tmp.iterdir())


def test_protocols_tell_the_kinds_apart(registry):
    ctrl, net = build(registry), registry.get("lr_policy", "mlrsnet").build()
    fixed = registry.get("lr_policy", "fixed").build(lr=0.1)
    assert isinstance(ctrl, EpisodicLearner) and not isinstance(ctrl, HypergradientLearner)
    assert isinstance(net, HypergradientLearner) and not isinstance(net, EpisodicLearner)
    assert is_episodic(ctrl) and not is_meta_learned(ctrl)
    assert is_meta_learned(net) and not is_episodic(net)
    assert not is_episodic(fixed) and not is_meta_learned(fixed)


def test_env_passes_check_env_and_ends_truncated(registry, task):
    from metalr_controller.env import ControllerEnv

    env = ControllerEnv(build(registry), maker(task), update_stats=False)
    check_env(env, skip_render_check=True)  # frozen statistics: a seed fixes the episode
    obs, _ = env.reset()
    assert obs.shape == (9,) and env.step_count == 4  # the first block runs in reset
    ends = []
    for _ in range(env.steps_per_episode()):
        obs, reward, terminated, truncated, _ = env.step(np.array([1.0], dtype=np.float32))
        ends.append((terminated, truncated))
        assert math.isfinite(reward)
    assert ends[-1] == (False, True) and all(e == (False, False) for e in ends[:-1])
    assert env.step_count == EPOCHS * 14
    # action +1 multiplies the LR by 1.035 once a block: 6 actions after the first block
    assert env.lrs[-1] == pytest.approx(0.05 * 1.035 ** 6)


def test_tiny_meta_training_learns_and_reports_episodes(trained):
    ctrl, before, records, left = trained
    assert left == [], f"meta-training left {left} in the temp dir"
    after = ctrl.state_dict()
    assert len(records) == 20 and all(math.isfinite(r["reward"]) for r in records)
    assert all(len(r["lrs"]) == EPOCHS * 14 and "test_accuracy" in r["metrics"] for r in records)
    changed = [k for k in before if k.startswith("net.") and not torch.equal(before[k], after[k])]
    assert changed, "PPO did not change the policy"
    assert float(after["obs_rms.count"]) > 100  # statistics gathered in meta-training


def frozen_lrs(ctrl, task, seed=7, order_seed=None) -> list[float]:
    return engine_for(task, ctrl, seed, order_seed).fit().lrs


def test_save_load_round_trip_gives_the_same_actions(trained, task, tmp_path):
    ctrl, _, _, _ = trained
    path = save_meta_learner(tmp_path / "ctrl.safetensors", "lr-controller", ctrl)
    twin = load_meta_learner(path, frozen=True)  # rebuilt from the header through the registry
    assert twin.frozen and twin.options() == ctrl.options()
    obs = np.random.default_rng(0).normal(size=(50, 9)).astype(np.float32)
    assert [ctrl.deterministic_action(o) for o in obs] == [twin.deterministic_action(o) for o in obs]
    lrs = frozen_lrs(ctrl, task)
    assert lrs == frozen_lrs(twin, task)
    assert len(set(lrs)) > 1  # the controller acted


@pytest.mark.parametrize("order_seed", [None, 11])
def test_meta_test_reproduces_the_env_lr_trace(trained, task, order_seed):
    """The frozen policy in an ordinary run gives exactly the LRs of the env's episode: the
    episode trains on the batches the engine would, ``train.order_seed`` included (the env
    once shuffled with ``train.seed``)."""
    from metalr_controller.env import ControllerEnv

    ctrl, _, _, _ = trained
    env = ControllerEnv(ctrl, lambda i, acting: engine_for(task, acting, 7, order_seed),
                        update_stats=False)
    obs, _ = env.reset()
    done = False
    while not done:
        obs, _, terminated, truncated, _ = env.step(np.array([ctrl.deterministic_action(obs)]))
        done = terminated or truncated
    assert frozen_lrs(ctrl, task, seed=7, order_seed=order_seed) == env.lrs


def test_bad_controller_files_are_refused(registry, trained, tmp_path):
    ctrl, _, _, _ = trained
    good = save_meta_learner(tmp_path / "good.safetensors", "lr-controller", ctrl)
    five = build(registry, act_every=2, features=["meta_loss", "train_loss", "log_lr",
                                                  "first_w_mean", "last_w_var"])
    path = save_meta_learner(tmp_path / "five.safetensors", "lr-controller", five)
    with pytest.raises(WeightsError, match=r"five\.safetensors.*features"):
        load_meta_learner(path, build(registry), policy_name="lr-controller")
    with pytest.raises(WeightsError, match=r"good\.safetensors.*max_change"):
        load_meta_learner(good, build(registry, max_change=0.05), policy_name="lr-controller")
    pickle = tmp_path / "ctrl.pt"
    torch.save(ctrl.state_dict(), pickle)
    with pytest.raises(WeightsError, match=r"ctrl\.pt.*not a safetensors file"):
        load_meta_learner(pickle, build(registry), policy_name="lr-controller")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(WeightsError, match=r"cut\.safetensors"):
        load_meta_learner(cut, build(registry), policy_name="lr-controller")
    load_meta_learner(good, build(registry, act_every=2), policy_name="lr-controller")


def test_features_match_a_hand_computation(task):
    from metalr_controller.features import Features

    feats, seen = Features(decay=0.9), []

    class Probe:  # an LR policy that computes the features of two steps, and the hand's
        def start(self, run):
            pass

        def end_epoch(self, epoch, metrics):
            pass

        def lr(self, ctx):
            model = engine.model
            x, _ = batch
            with torch.no_grad():
                p = torch.softmax(model(x), -1)
                hand = {"pred": math.log(p.var(0, unbiased=False).mean().item() + 1e-8),
                        "train_loss": float(ctx.loss), "log_lr": math.log(0.1),
                        "first": model[1].weight, "last": model[3].weight}
                if seen:
                    q = torch.softmax(seen[0]["model"](x), -1)
                    hand["change"] = math.log((p - q).var(0, unbiased=False).mean().item() + 1e-8)
            seen.append({"got": feats(ctx, 0.1, 1.5), "hand": hand, "model": copy.deepcopy(model)})
            return 0.1

    engine = engine_for(task, Probe(), 0)
    gen = torch.Generator().manual_seed(0)
    batch = next(iter(task.train_batches(BATCH, gen)))
    engine.step(batch, step=0)
    engine.step(batch, step=1)
    (a, b) = seen
    for s, pred, change in ((a, a["hand"]["pred"], math.log(1e-8)),
                            (b, 0.9 * a["hand"]["pred"] + 0.1 * b["hand"]["pred"],
                             0.9 * math.log(1e-8) + 0.1 * b["hand"]["change"])):
        h, w1, w2 = s["hand"], s["model"][1].weight.detach(), s["model"][3].weight.detach()
        want = [1.5, pred, change, h["train_loss"], w1.mean(), w1.var(unbiased=False),
                w2.mean(), w2.var(unbiased=False), h["log_lr"]]
        np.testing.assert_allclose(s["got"], [float(v) for v in want], rtol=1e-5, atol=1e-6)


def test_recipe_meta_trains_tracks_episodes_and_saves(where):
    tmp_path, client = where
    recipe = {
        "name": "ctrl", "output_dir": str(tmp_path / "out"),
        "task": {"name": "mnist1d", "options": {"meta_size": 100, "num_samples": 600}},
        "model": {"name": "mlp", "options": {"hidden": [32]}},
        "train": {"epochs": 2, "seed": 0, "batch_size": 64, "device": "cpu"},
        "methods": {"ctrl": {"optimizer": {"name": "sgd", "options": {"momentum": 0.9}},
                             "lr_policy": {"name": "lr-controller", "options": {
                                 "act_every": 3, "episodes": 2, "initial_lr": 0.05}}}},
        "tracking": "mlflow",
    }
    path = tmp_path / "ctrl.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "-q"]) == 0
    client = client()
    runs = client.search_runs([client.get_experiment_by_name("ctrl").experiment_id])
    names = {r.info.run_name: r for r in runs}
    assert {"ctrl/seed0", "ctrl/seed0/episodes", "ctrl/seed0/episode000",
            "ctrl/seed0/episode001"} <= set(names)
    assert all(r.info.status == "FINISHED" for r in runs)
    episodes = names["ctrl/seed0/episodes"].info.run_id
    assert names["ctrl/seed0/episode001"].data.tags["mlflow.parentRunId"] == episodes
    ep = names["ctrl/seed0/episode000"].info.run_id
    logged = client.get_metric_history(ep, "step_lr")  # where the LR changes: every 3 steps
    assert sorted(m.step for m in logged) == [0, 3, 6, 9, 11]
    saved = list((tmp_path / "out").glob("ctrl-*/ctrl-seed0/theta-final.safetensors"))
    assert len(saved) == 1
    twin = load_meta_learner(saved[0], frozen=True)
    assert twin.opts.episodes == 2


def test_hand_loop_gives_the_recipe_lrs(trained, task, tmp_path):
    """A saved controller in a plain PyTorch loop sets the LRs of the engine's meta-test run."""
    from metalr import ControlledLR

    ctrl, _, _, _ = trained
    path = save_meta_learner(tmp_path / "ctrl.safetensors", "lr-controller", ctrl)
    want = frozen_lrs(ctrl, task, seed=3)
    torch.manual_seed(3)
    model = _mlp(task.spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    meta_gen = torch.Generator().manual_seed(3 + 1)

    def meta_loss():
        x, y = task.meta_batch(32, meta_gen)
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(model(x), y))

    sched = ControlledLR.from_pretrained(opt, path, model, total_steps=EPOCHS * 14,
                                         meta_loss=meta_loss, lr=0.05)
    gen, got = torch.Generator().manual_seed(3), []
    for _ in range(EPOCHS):
        for x, y in task.train_batches(BATCH, gen):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            got.append(sched.step(loss, x))
            opt.step()
    assert got == want


def test_conforms_like_every_builtin(registry):
    from metalr.testing import check_component

    check_component(registry.get("lr_policy", "lr-controller"), {"initial_lr": 0.05})


def test_meta_test_freezes_and_a_frozen_controller_refuses_to_train(registry, task):
    ctrl = build(registry)
    engine_for(task, ctrl, 0)  # meta_train=False: the engine freezes every meta-learner kind
    assert ctrl.frozen
    with pytest.raises(RuntimeError, match="frozen"):
        ctrl.train_episodes(maker(task))


def test_shipped_controller_schedules_another_model_in_a_hand_loop(task):
    """The file the transfer recipes use loads with today's code and acts on a new model."""
    from pathlib import Path

    from metalr import ControlledLR

    path = Path(__file__).parents[1] / "recipes/transfer/nets/controller-mnist1d-mlp.safetensors"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    x_val, y_val = task.meta_batch(64, torch.Generator().manual_seed(0))
    sched = ControlledLR.from_pretrained(
        opt, path, model, total_steps=28, lr=0.1,
        meta_loss=lambda: torch.nn.functional.cross_entropy(model(x_val), y_val).item())
    lrs = []
    for x, y in task.train_batches(BATCH, torch.Generator().manual_seed(0)):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        lrs.append(sched.step(loss, x))
        opt.step()
    assert lrs[:10] == [0.1] * 10 and lrs[10] != 0.1  # acts after its first block of K = 10
    assert all(0.05 < lr < 0.2 for lr in lrs)  # at most 1.035x a block


def test_controlled_lr_state_round_trips_through_a_weights_only_file(task, tmp_path):
    """Stopped after 15 steps (mid-block: the controller acts every K = 10) and restored from a
    ``torch.load(weights_only=True)`` state into a new scheduler, the rest of the LRs are those
    of the run that never stopped."""
    import copy
    from pathlib import Path

    from metalr import ControlledLR

    path = Path(__file__).parents[1] / "recipes/transfer/nets/controller-mnist1d-mlp.safetensors"
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    x_val, y_val = task.meta_batch(64, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    batches = [b for _ in range(3) for b in task.train_batches(BATCH, gen)][:28]
    assert len(batches) == 28

    def scheduler(net, opt):
        return ControlledLR.from_pretrained(
            opt, path, net, total_steps=28, lr=0.1,
            meta_loss=lambda: torch.nn.functional.cross_entropy(net(x_val), y_val).item())

    def steps(net, opt, sched, chunk):
        lrs = []
        for x, y in chunk:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            lrs.append(sched.step(loss, x))
            opt.step()
        return lrs

    start = copy.deepcopy(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    whole = steps(model, opt, scheduler(model, opt), batches)

    model.load_state_dict(start)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    first = scheduler(model, opt)
    head = steps(model, opt, first, batches[:15])
    torch.save({"sched": first.state_dict(), "opt": opt.state_dict(),
                "model": model.state_dict()}, tmp_path / "state.pt")
    first.close()
    saved = torch.load(tmp_path / "state.pt", weights_only=True)
    net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 4))
    net.load_state_dict(saved["model"])
    opt2 = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9)
    opt2.load_state_dict(saved["opt"])
    second = scheduler(net, opt2)
    second.load_state_dict(saved["sched"])
    tail = steps(net, opt2, second, batches[15:])
    assert head + tail == whole
    assert len(set(whole)) > 2  # the controller acted twice: the test compares real decisions


def test_controlled_lr_is_the_plugins_reached_through_the_registry(registry):
    """``metalr.ControlledLR`` lives in the controller plugin; the core finds it through the
    lr-controller component's declared ``scheduler()``, never by importing the plugin."""
    import metalr
    from metalr.contracts.protocols import HandLoopScheduled

    factory = registry.get("lr_policy", "lr-controller").factory
    assert isinstance(factory, HandLoopScheduled)
    assert metalr.ControlledLR is factory.scheduler()
    assert metalr.ControlledLR.__module__ == "metalr_controller.controlled"


def test_controller_modules_import_one_way():
    """No cycle among the plugin's modules, counting imports inside functions and under
    TYPE_CHECKING: what acting, the env and the hand loop share is the rules protocol."""
    import ast
    from pathlib import Path

    folder = Path(__file__).parents[1] / "plugins" / "metalr_controller"
    imports = {path.stem: {node.module or "__init__"
                           for node in ast.walk(ast.parse(path.read_text()))
                           if isinstance(node, ast.ImportFrom) and node.level == 1}
               for path in folder.glob("*.py")}

    def cycle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for other in sorted(imports.get(module, ())):
            if other in path:
                return (*path, other)
            found = cycle_from(other, (*path, other))
            if found:
                return found
        return None

    assert "rules" in imports["acting"]
    assert [c for m in imports if (c := cycle_from(m, (m,)))] == []
