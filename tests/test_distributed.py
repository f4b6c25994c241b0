"""Meta-training across ranks (torchrun / DDP, gloo on CPU) against one process.

Two ranks, each on its half of every global batch and meta batch, must train exactly what one
process trains on the whole batches: the same LR at every step and the same final weights and
theta, to float tolerance. The ranks exchange one scalar per step (the training loss) and one
per meta-update (d L_meta / d lr), counted here at ``torch.distributed.all_reduce`` (torch's
function; DDP's gradient buckets go through its C++ reducer, not through it).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalr.engine.algorithm import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCH, META_BATCH, T_VAL = 2, 111, 63, 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_engine() -> Engine:
    """Digits (real data, offline), an MLP (no BatchNorm), SGD with momentum, MLR-SNet."""
    from metalr.contracts.registry import get_registry

    registry = get_registry()
    task = registry.get("task", "digits").build(meta_size=200)
    task.setup(seed=0, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[32])
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9,
                                                 weight_decay=5e-4)
    # a fixed gamma: no LR probe (it would run identically on every rank, only slower)
    policy = registry.get("lr_policy", "mlrsnet").build(gamma=0.2, cooldown=0.0)
    return Engine(task, model, opt, policy, EngineConfig(
        epochs=EPOCHS, batch_size=BATCH, meta_batch_size=META_BATCH, t_val=T_VAL, seed=0,
        eval_splits=("test",)))


def train(engine: Engine) -> dict:
    history = engine.fit()
    return {"lrs": history.lrs, "losses": history.losses, "epochs": history.epochs,
            "weights": {k: v.clone() for k, v in engine.model.state_dict().items()},
            "theta": {k: v.detach().clone() for k, v in engine.policy.state_dict().items()}}


def count_all_reduces(engine: Engine) -> dict[str, int]:
    """Calls of torch.distributed.all_reduce in one step without and one with a meta-update."""
    import torch.distributed as dist

    calls = []
    original = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    gen = torch.Generator().manual_seed(5)
    batch = next(engine.task.train_batches(BATCH, gen))
    meta_batch = engine.task.meta_batch(META_BATCH, gen)
    dist.all_reduce = counting
    try:
        engine.step(batch, None, step=1)
        plain = list(calls)
        calls.clear()
        engine.step(batch, meta_batch, step=2)
    finally:
        dist.all_reduce = original
    return {"plain": len(plain), "meta": len(calls), "numel": sum(plain) + sum(calls)}


def worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        engine = build_engine()
        result = train(engine)
        result["all_reduces"] = count_all_reduces(engine)
        torch.save(result, Path(out) / f"rank{rank}.pt")
        # both ranks past their last collective before either tears its group down: a rank that
        # destroys it while the other still finishes one can abort that one inside gloo
        # ("terminate called without an active exception", seen once in four full runs)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    torch.multiprocessing.start_processes(worker, args=(2, free_port(), str(out)), nprocs=2,
                                          start_method="spawn")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_two_ranks_train_what_one_process_trains_on_the_whole_batch(two_ranks):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = train(build_engine())
    finally:
        torch.set_num_threads(threads)
    assert any("virtual_meta_loss" in e for e in alone["epochs"])  # meta-updates happened
    assert len(set(alone["lrs"])) > 10  # the LR moved: the policy's input and theta matter
    for rank in two_ranks:
        torch.testing.assert_close(torch.tensor(rank["lrs"]), torch.tensor(alone["lrs"]),
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.tensor(rank["losses"]), torch.tensor(alone["losses"]),
                                   rtol=1e-5, atol=1e-6)
        for key in ("weights", "theta"):
            for name, value in alone[key].items():
                torch.testing.assert_close(rank[key][name], value, rtol=1e-5, atol=1e-5,
                                           msg=f"{key} {name}")
        meta = [e["virtual_meta_loss"] for e in rank["epochs"]]
        assert meta == pytest.approx([e["virtual_meta_loss"] for e in alone["epochs"]], rel=1e-4)
    # the ranks agree exactly: the same reduced scalars in, the same numbers out
    assert two_ranks[0]["lrs"] == two_ranks[1]["lrs"]
    for name, value in two_ranks[0]["weights"].items():
        assert torch.equal(value, two_ranks[1]["weights"][name]), name


def test_a_meta_update_costs_one_scalar_all_reduce(two_ranks):
    """One scalar per step (L_t) and one more per meta-update (d L_meta / d lr); DDP's
    gradient buckets do not go through torch.distributed.all_reduce (its C++ reducer does)."""
    for rank in two_ranks:
        assert rank["all_reduces"] == {"plain": 1, "meta": 2, "numel": 3}


@pytest.mark.slow  # 20-30 s alone, about a minute on two loaded cores (torchrun, 2 x MLflow)
def test_torchrun_runs_a_recipe_into_one_folder_and_one_tracked_suite(tmp_path):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("""
name: tiny-ddp
task: {name: digits, options: {meta_size: 200}}
model: {name: mlp, options: {hidden: [16]}}
train: {epochs: 2, seeds: [0], batch_size: 128, device: cpu, threads: 1}
methods:
  mlrsnet:
    optimizer: {name: sgd, options: {momentum: 0.9}}
    lr_policy: {name: mlrsnet, options: {gamma: 0.2}}
    meta: {t_val: 5, batch_size: 64}
tracking: mlflow
""")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                          os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "metalr", "run", str(recipe), f"output_dir={tmp_path / 'out'}", "-q"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    folders = list((tmp_path / "out").iterdir())
    assert len(folders) == 1, folders
    assert (folders[0] / "mlrsnet-seed0" / "theta-final.safetensors").exists()
    assert done.stdout.count("| mlrsnet") == 1  # the summary table, printed by rank 0 alone
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        runs = db.execute("SELECT run_uuid, status FROM runs").fetchall()
        parents = db.execute("SELECT run_uuid FROM runs WHERE run_uuid NOT IN (SELECT run_uuid "
                             "FROM tags WHERE key = 'mlflow.parentRunId')").fetchall()
    assert len(parents) == 1 and len(runs) == 2, runs
    assert {status for _, status in runs} == {"FINISHED"}
    assert not list(cwd.iterdir())  # nothing written into the working directory


def test_shards_are_contiguous_slices_whose_weights_give_the_global_mean():
    from metalr.engine.distributed import Group, shard

    x, y = torch.arange(7.0).reshape(7, 1), torch.arange(7)
    parts = [shard((x, y), Group(rank, 3, rank)) for rank in range(3)]
    assert [p[1].tolist() for p, _ in parts] == [[0, 1], [2, 3], [4, 5, 6]]
    mean_of_weighted = sum(w * p[0].mean() for p, w in parts) / 3
    assert mean_of_weighted.item() == pytest.approx(x.mean().item())
    assert shard((x, y), Group()) == ((x, y), 1.0)  # one rank: the batch itself
    with pytest.raises(ValueError, match="cannot be split across 3 ranks"):
        shard({"x": x}, Group(0, 3))
    with pytest.raises(ValueError, match="batch size of at least 8"):
        shard(x, Group(0, 8))


def test_torchrun_refuses_an_episodic_learner_before_any_work(tmp_path):
    from metalr.engine.distributed import Group
    from metalr.recipes.loader import load_recipe
    from metalr.running.rundir import RunError
    from metalr.running.runner import Runner

    recipe = load_recipe(ROOT / "recipes" / "cpu" / "controller.yaml",
                         [f"output_dir={tmp_path}"], deep=True)
    runner = Runner(recipe, progress=False)
    runner.group = Group(0, 2)
    with pytest.raises(RunError, match=r"methods\.sgdm-controller\.lr_policy: .* without "
                                       r"torchrun"):
        runner._refuse_episodic()
    assert not list(tmp_path.iterdir())
