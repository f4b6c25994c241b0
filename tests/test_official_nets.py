"""The authors' released MLR-SNet nets: read without running code, converted faithfully.

The reference for every LR below is a forward pass of the authors' meta-test cell written here
from their code, on the raw tensors of the file, independent of metalr's cell. Their format is
the mlrsnet plugin's ``mlrsnet-official`` net format, which the core finds through the registry
only: the last tests here hold the core to that, and to importing no plugin at all.
"""

from __future__ import annotations

import ast
import hashlib
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from metalr_mlrsnet.official import expected_shapes

from metalr import LearnedLR, hookimpl
from metalr.cli import main
from metalr.contracts.registry import Registry, get_registry
from metalr.engine.weights import WeightsError, load_meta_learner, read_meta_learner

OFFICIAL = Path(os.environ.get("METALR_OFFICIAL_NETS",
                               Path(__file__).resolve().parents[1].parent / "shared" / "official-nets"))
RELEASED = [OFFICIAL / f"mlr_snet-{e}.pth" for e in (1, 100, 200)]
LOSSES = [2.35, 2.2, 1.9, 1.6, 1.4, 1.1, 0.9, 0.7, 0.55, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.08,
          0.06, 0.05, 0.03, 0.02]


def reference_lrs(state: dict[str, torch.Tensor], losses: list[float], gamma: float = 1.0,
                  hc: tuple[torch.Tensor, torch.Tensor] | None = None):
    """The authors' meta-test net, from their code: gates i, f, g, o; no forget offset."""
    s = {k: v.double() for k, v in state.items()}
    hidden = s["layer3.weight"].shape[1]
    h, c = hc or (torch.zeros(1, hidden, dtype=torch.float64),) * 2
    out = []
    for loss in losses:
        x = torch.tensor([[loss]], dtype=torch.float64)

        def pre(name, v):
            z = F.relu(F.linear(v, s[f"layer1.{name}.0.weight"], s[f"layer1.{name}.0.bias"]))
            return F.linear(z, s[f"layer1.{name}.2.weight"], s[f"layer1.{name}.2.bias"])

        gates = (pre("fc_i2h", x) + pre("fc_h2h", h)).split(hidden, 1)
        i, f, g, o = (torch.sigmoid(gates[0]), torch.sigmoid(gates[1]), torch.tanh(gates[2]),
                      torch.sigmoid(gates[3]))
        c = f * c + i * g
        h = o * torch.tanh(c)
        out.append(gamma * float(torch.sigmoid(F.linear(h, s["layer3.weight"], s["layer3.bias"]))))
    return out, (h, c)


def metalr_lrs(nets, losses, total_steps=None, **kwargs):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.0)
    sched = LearnedLR.from_pretrained(opt, nets, total_steps=total_steps or len(losses), **kwargs)
    out = []
    for loss in losses:
        sched.step(torch.tensor(loss))
        out.append(sched.get_last_lr()[0])
    return out


def random_state(seed: int = 0, hidden: int = 50, width: int = 25) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.3 for k, shape in expected_shapes(hidden, width).items()}


def save_legacy(state, path: Path, zipfile: bool = False) -> Path:
    torch.save(state, path, _use_new_zipfile_serialization=zipfile)
    return path


# -- always: files this test writes in the released layout ---------------------------------------

@pytest.mark.parametrize("zipfile", [False, True], ids=["legacy", "zip"])
def test_a_released_layout_file_gives_the_reference_lrs(tmp_path, zipfile):
    state = random_state()
    path = save_legacy(state, tmp_path / "mlr_snet 1.pth", zipfile)
    if not zipfile:
        assert path.read_bytes()[:2] == b"\x80\x02"  # a legacy pickle stream, as released
    want, _ = reference_lrs(state, LOSSES)
    assert metalr_lrs(str(path), LOSSES) == pytest.approx(want, abs=1e-6, rel=0)
    net = load_meta_learner(path)
    assert net.options()["cell"] == "official" and net.cooldown == 0
    assert float(net.ref_lr) == pytest.approx(reference_lrs(state, [math.log(10)])[0][0], abs=1e-6)


def test_phases_carry_the_state_from_one_net_into_the_next(tmp_path):
    states = [random_state(seed) for seed in range(3)]
    files = [save_legacy(s, tmp_path / f"mlr_snet-{e}.pth") for s, e in zip(states, (1, 100, 200))]
    want, hc = [], None
    for state, part in zip(states, (LOSSES[:7], LOSSES[7:14], LOSSES[14:])):
        lrs, hc = reference_lrs(state, part, hc=hc)
        want += lrs
    total = 21  # phases of 7 steps: floor(t * 3 / 21)
    assert metalr_lrs([str(f) for f in files], LOSSES + [0.01], total_steps=total)[:20] == \
        pytest.approx(want, abs=1e-6, rel=0)


def test_import_writes_safetensors_and_a_card_that_give_the_same_lrs(tmp_path, capsys):
    states = [random_state(seed) for seed in range(3)]
    files = [save_legacy(s, tmp_path / f"mlr_snet-{e}.pth") for s, e in zip(states, (1, 100, 200))]
    out = tmp_path / "imported"
    assert main(["nets", "import", *map(str, files), "--out", str(out)]) == 0
    written = sorted(p.name for p in out.glob("*.safetensors"))
    assert written == ["theta-epoch0001.safetensors", "theta-epoch0100.safetensors",
                       "theta-epoch0200.safetensors"]
    card = (out / "card.md").read_text()
    for f in files:
        assert f.name in card and hashlib.sha256(f.read_bytes()).hexdigest() in card
    _, options, _, meta = read_meta_learner(out / "theta-epoch0100.safetensors")
    assert options["cell"] == "official" and meta["metalr.source"] == "mlr_snet-100.pth"
    assert meta["metalr.source_sha256"] == hashlib.sha256(files[1].read_bytes()).hexdigest()
    direct = metalr_lrs([str(f) for f in files], LOSSES, total_steps=30)
    assert metalr_lrs(str(out), LOSSES, total_steps=30) == direct  # the folder = its 3 phases
    # lr= rescales to where the schedule starts: its first LR at the untrained loss ln(10)
    assert metalr_lrs(str(out), [math.log(10)], total_steps=30, lr=0.1) == pytest.approx([0.1])
    assert main(["nets", "import", str(files[0]), "--out", str(out)]) == 2  # never mixes nets
    assert "already holds nets" in capsys.readouterr().err


def test_the_transfer_policy_takes_a_pth_or_a_folder(registry, tmp_path):
    files = [save_legacy(random_state(s), tmp_path / f"mlr_snet-{s + 1}.pth") for s in range(2)]
    out = tmp_path / "nets"
    main(["nets", "import", *map(str, files), "--out", str(out)])
    build = registry.get("lr_policy", "mlrsnet-transfer").build
    for nets in ([str(f) for f in files], [str(out)]):
        policy = build(nets=nets, scale="saved")
        assert policy.phases.k == 2 and policy.phases.nets[0].cell == "official"
    from metalr.engine.algorithm import Engine, EngineConfig

    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(0, torch.device("cpu"))
    model = registry.get("model", "mlp").build(task.spec, hidden=[16])
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9)
    history = Engine(task, model, opt, build(nets=[str(out)], gamma=0.05),
                     EngineConfig(epochs=1, batch_size=64)).fit()
    assert 0 < max(history.lrs) <= 0.05 and history.epochs[-1]["test_accuracy"] > 0


def test_bad_files_are_refused_with_the_file_and_the_key(tmp_path):
    state = random_state()
    wrong_shape = dict(state, **{"layer1.fc_h2h.0.weight": torch.zeros(25, 49)})
    missing = {k: v for k, v in state.items() if k != "layer3.bias"}
    cases = {"shape.pth": (wrong_shape, r"layer1\.fc_h2h\.0\.weight has shape \(25, 49\), expected \(25, 50\)"),
             "missing.pth": (missing, r"missing keys \['layer3\.bias'\]"),
             "other.pth": ({"fc.weight": torch.zeros(2, 2)}, "not an MLR-SNet's")}
    for name, (content, message) in cases.items():
        path = save_legacy(content, tmp_path / name)
        with pytest.raises(WeightsError, match=f"(?s){name}.*{message}"):
            load_meta_learner(path)
    (tmp_path / "junk.pth").write_bytes(b"not a net at all")
    with pytest.raises(WeightsError, match="junk.pth: not a safetensors file"):
        load_meta_learner(tmp_path / "junk.pth")


class _Code:
    """Unpickling this would run open(marker, "w")."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("zipfile", [False, True], ids=["legacy", "zip"])
def test_a_torch_file_with_code_is_refused_unrun(tmp_path, zipfile):
    marker = tmp_path / "pwned"
    path = save_legacy({"layer3.weight": _Code(marker)}, tmp_path / "evil.pth", zipfile)
    with pytest.raises(WeightsError, match="(?s)evil.pth.*weights_only=True.*never from pickle"):
        load_meta_learner(path)
    assert not marker.exists()


def test_the_official_cell_meta_trains_and_round_trips(registry, tmp_path):
    from metalr.engine.algorithm import Engine, EngineConfig
    from metalr.engine.weights import save_meta_learner

    task = registry.get("task", "mnist1d").build(meta_size=100, num_samples=600)
    task.setup(0, torch.device("cpu"))
    torch.manual_seed(0)
    model = registry.get("model", "mlp").build(task.spec, hidden=[16])
    opt = registry.get("optimizer", "sgd").build(model.parameters(), momentum=0.9)
    policy = registry.get("lr_policy", "mlrsnet").build(cell="official", hidden=8, gamma=0.2)
    before = [p.detach().clone() for p in policy.cells.parameters()]
    Engine(task, model, opt, policy, EngineConfig(epochs=1, batch_size=64, t_val=2)).fit()
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.cells.parameters()))
    path = save_meta_learner(tmp_path / "net.safetensors", "mlrsnet", policy)
    again = load_meta_learner(path)
    assert again.width == 4 and again.cell == "official"
    x = torch.tensor(1.3)
    assert torch.equal(again(x, None)[0], policy(x, None)[0])


# -- the format is the plugin's: the core reaches it through the registry -------------------------

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_PACKAGES = sorted(p.name for p in (ROOT / "plugins").iterdir()
                         if (p / "__init__.py").is_file())


def test_no_core_module_imports_a_plugin():
    """The team's rule, read from the source: no ``import`` in metalr/ names a plugin package,
    at the top of a module or inside a function."""
    found = []
    for path in sorted((ROOT / "metalr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            found += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                      if n and n.split(".")[0] in PLUGIN_PACKAGES]
    assert len(PLUGIN_PACKAGES) > 10 and found == []


CORE_ALONE = """
import sys
from metalr.contracts.registry import Registry
from metalr.engine.weights import WeightsError, read_meta_learner
import metalr.cli, metalr.engine.net_import, metalr.scheduler.learned

plugins = set(sys.argv[2].split(","))
def loaded():
    return sorted(m for m in sys.modules if m.split(".")[0] in plugins)

assert loaded() == [], loaded()
bare = Registry(strict=True)
bare._loaded = True  # no entry point loaded: the core alone
try:
    read_meta_learner(sys.argv[1], bare)
    raise SystemExit("a .pth was read with no net format registered")
except WeightsError as exc:
    assert "no net format is registered" in str(exc), exc
assert loaded() == [], loaded()
name, _, _, metadata = read_meta_learner(sys.argv[1])  # the registry loads the entry points
assert (name, metadata["metalr.net_format"]) == ("mlrsnet", "mlrsnet-official"), metadata
assert "metalr_mlrsnet.official" in loaded(), loaded()
"""


def test_the_core_reads_the_authors_format_only_through_the_registry(tmp_path):
    """In a fresh process: importing the loader, ``nets import`` and the CLI loads no plugin;
    with no entry point loaded a .pth is refused; the registry's entry point brings the format."""
    path = save_legacy(random_state(), tmp_path / "mlr_snet 1.pth")
    done = subprocess.run(
        [sys.executable, "-c", CORE_ALONE, str(path), ",".join(PLUGIN_PACKAGES)],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_authors_format_conforms(registry, tmp_path):
    from metalr.testing import check_component

    sample = save_legacy(random_state(), tmp_path / "mlr_snet 7.pth")
    check_component(registry.get("net_format", "mlrsnet-official"), sample=sample)


class _Fake:
    """A third party's net format: files that start with ``FAKE``, read as an ``mlp-lr``."""

    label, description = "fake", "a fake file"

    def read(self, path):
        if not Path(path).read_bytes().startswith(b"FAKE"):
            raise ValueError(f"{path}: no FAKE magic; write one with b'FAKE' first")
        torch.manual_seed(0)
        return dict(get_registry().get("lr_policy", "mlp-lr").build(hidden=4, layers=1,
                                                                     gamma=0.5).state_dict())

    def convert(self, tensors, path):
        return "mlp-lr", {"hidden": 4, "layers": 1}, tensors

    def complete(self, net):
        net.completed = True

    def target_name(self, source):
        return f"{source.stem}.safetensors"

    def card(self, imported, gamma):
        return f"{len(imported)} fake nets, gamma {gamma}\n"


@pytest.fixture
def two_formats():
    @hookimpl
    def register_net_formats(register):
        register("fake", _Fake)

    reg = Registry(strict=False).load_entry_points()
    assert reg.add_plugin(types.SimpleNamespace(register_net_formats=register_net_formats),
                          "tests:fake")
    return reg


def test_a_third_partys_format_is_read_and_imported_like_the_authors(two_formats, tmp_path):
    from metalr.engine.net_import import import_nets

    fake = tmp_path / "net-3.fake"
    fake.write_bytes(b"FAKE")
    net = load_meta_learner(fake, frozen=True, registry=two_formats)
    assert net.completed and read_meta_learner(fake, two_formats)[3]["metalr.net_format"] == "fake"
    authors = save_legacy(random_state(), tmp_path / "mlr_snet 1.pth")
    assert load_meta_learner(authors, registry=two_formats).cell == "official"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"neither")
    with pytest.raises(WeightsError, match=r"(?s)junk\.pth: not a safetensors file, nor of a net "
                                           r"format metalr knows; read as a fake file: no FAKE.*; "
                                           r"read as one of the authors' MLR-SNet torch files"):
        read_meta_learner(junk, two_formats)
    out = tmp_path / "out"
    assert [p.name for p in import_nets([fake], out, gamma=0.25, registry=two_formats)] == \
        ["net-3.safetensors"]
    assert (out / "card.md").read_text() == "1 fake nets, gamma 0.25\n"
    _, _, tensors, meta = read_meta_learner(out / "net-3.safetensors")
    assert meta["metalr.source_format"] == "fake" and meta["metalr.source"] == "net-3.fake"
    assert float(tensors["log_gamma"].exp()) == pytest.approx(0.25)
    with pytest.raises(WeightsError, match=r"mlr_snet 1\.pth: a 'mlrsnet-official' file, but "
                                           r".*net-3\.fake a 'fake' one"):
        import_nets([fake, authors], tmp_path / "mixed", registry=two_formats)


def test_nets_import_refuses_a_net_that_is_already_metalrs(tmp_path, capsys):
    main(["nets", "import", str(save_legacy(random_state(), tmp_path / "a.pth")),
          "--out", str(tmp_path / "once")])
    again = str(tmp_path / "once" / "a.safetensors")
    assert main(["nets", "import", again, "--out", str(tmp_path / "x")]) == 2
    assert "a.safetensors: already a metalr net (safetensors)" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- the three released files, where ../shared/official-nets exists ------------------------------

needs_released = pytest.mark.skipif(
    not all(f.is_file() for f in RELEASED),
    reason=f"the authors' released nets are not at {OFFICIAL} (a clone without ../shared; set "
           "METALR_OFFICIAL_NETS to their folder)")


@needs_released
@pytest.mark.parametrize("path", RELEASED, ids=lambda p: p.stem)
def test_the_released_nets_give_the_official_cells_lrs(path):
    state = torch.load(path, weights_only=True, map_location="cpu")
    want, _ = reference_lrs(state, LOSSES)
    assert metalr_lrs(str(path), LOSSES) == pytest.approx(want, abs=1e-6, rel=0)


@needs_released
def test_the_released_nets_import_and_run_as_three_phases(tmp_path):
    out = tmp_path / "official"
    assert main(["nets", "import", *map(str, RELEASED), "--out", str(out)]) == 0
    want, hc = [], None
    for path, part in zip(RELEASED, (LOSSES[:7], LOSSES[7:14], LOSSES[14:])):
        lrs, hc = reference_lrs(torch.load(path, weights_only=True, map_location="cpu"), part, hc=hc)
        want += lrs
    got = metalr_lrs(str(out), LOSSES + [0.01], total_steps=21)[:20]
    assert got == pytest.approx(want, abs=1e-6, rel=0)
