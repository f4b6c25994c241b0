"""`metalr nets ship`: a net's model card regenerated from the run that made it (issue 21).

One real meta-training run of the repository's quickstart recipe, shrunk by overrides, made by
the `metalr` command in a subprocess from a folder outside the repository (so that the recorded
command has to be made repository-relative), is shipped and reshipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from metalr.cli import main
from metalr.reporting.cards import BEGIN, END, absolute_paths, card_command
from metalr.running.provenance import command_tag
from metalr.scheduler.learned import NETS_DIR, PhasedNets, load_nets

REPO = Path(__file__).resolve().parents[1]  # the checkout these tests belong to
MACHINE_PATH = re.compile(r"/tmp/|/work/|/home/|/root/|/Users/|[A-Za-z]:\\")
TINY = ["train.epochs=3", "train.seeds=[0]", "task.options.num_samples=1000",
        "task.options.meta_size=100", "model.options.hidden=[32]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The suite folder of `metalr run recipes/quickstart.yaml` (3 epochs, seed 0)."""
    where = tmp_path_factory.mktemp("elsewhere")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    proc = subprocess.run(
        [sys.executable, "-m", "metalr", "run", "-q", str(REPO / "recipes" / "quickstart.yaml"),
         *TINY, "--only", "mlrsnet,fixed-sgd", "tracking=none", f"output_dir={where / 'out'}"],
        cwd=where, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (suite,) = (where / "out").iterdir()
    return suite


@pytest.fixture
def shipped(run, tmp_path, capsys) -> Path:
    out = tmp_path / "mnist1d-tiny"
    assert main(["nets", "ship", str(run / "mlrsnet-seed0"), "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_the_card_names_the_command_commit_and_environment_and_no_machine_path(run, shipped):
    card = (shipped / "card.md").read_text()
    provenance = json.loads((run / "provenance.json").read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["metalr.git_commit"])
    assert f"commit `{provenance['metalr.git_commit']}`" in card
    assert f"torch {torch.__version__}" in card and "CPU kernels" in card
    command = re.search(r"```\n(metalr run .*)\n```", card).group(1)
    assert command.startswith("metalr run -q recipes/quickstart.yaml train.epochs=3 ")
    assert "--only mlrsnet,fixed-sgd" in command and "output_dir" not in command
    assert absolute_paths(card) == [] and not MACHINE_PATH.search(card)
    assert str(run.parent.parent) not in card and str(REPO) not in card
    assert "| epoch | LR |" in card and "| mlrsnet |" in card  # the curve, the suite's results
    assert card.count(BEGIN) == 1 and card.count(END) == 1
    assert sorted(p.name for p in shipped.glob("*.safetensors")) == [
        "theta-epoch0001.safetensors", "theta-epoch0002.safetensors",
        "theta-epoch0003.safetensors"]  # save_phases: 3 over 3 epochs


def test_the_shipped_nets_load_and_give_the_runs_lrs(run, shipped):
    saved = sorted((run / "mlrsnet-seed0").glob("theta-epoch*.safetensors"))
    for src in saved:
        assert (shipped / src.name).read_bytes() == src.read_bytes()
    ours, theirs = PhasedNets(load_nets(shipped)), PhasedNets(load_nets(saved))
    ours.start(30)
    theirs.start(30)
    losses = torch.linspace(2.3, 0.4, 30)
    assert [ours.lr(x) for x in losses] == [theirs.lr(x) for x in losses]
    assert ours.k == 3


def test_the_hand_written_part_survives_regeneration(run, shipped, capsys):
    card = shipped / "card.md"
    first = card.read_text()
    head, rest = first.split(BEGIN)
    generated, tail = rest.split(END)
    hand_head = head.replace("(What the nets are and what scale they carry: write by hand.)",
                             "Three nets, one per third of a run.\n\nNot a benchmark.")
    hand_tail = tail + "\n## Notes\n\nWritten by hand, with `code` and a table:\n\n| a |\n| - |\n"
    card.write_text(hand_head + BEGIN + generated.replace("## How it was made", "## Edited")
                    + END + hand_tail)
    assert main(["nets", "ship", str(run / "mlrsnet-seed0"), "--out", str(shipped)]) == 0
    assert "replaced" not in capsys.readouterr().out  # the same files: nothing replaced
    again = card.read_text()
    assert again == hand_head + BEGIN + generated + END + hand_tail


def test_a_card_without_markers_keeps_all_of_it_and_gets_the_part_appended(run, tmp_path,
                                                                           capsys):
    out = tmp_path / "net"
    out.mkdir()
    (out / "card.md").write_text("# net\n\nMy own card.\n")
    assert main(["nets", "ship", str(run / "mlrsnet-seed0"), "--out", str(out)]) == 0
    card = (out / "card.md").read_text()
    assert card.startswith("# net\n\nMy own card.\n\n" + BEGIN) and card.rstrip().endswith(END)
    assert "appended it between the markers" in capsys.readouterr().err


def test_other_nets_in_the_folder_are_named_and_kept_unless_replace(run, shipped, capsys):
    target = shipped / "theta-epoch0002.safetensors"
    tensors = load_file(target)
    with open(target, "rb") as f:  # the same header metadata, one tensor moved
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    tensors["out.bias"] = tensors["out.bias"] + 0.25
    save_file(tensors, target, metadata=header)
    stray = shipped / "theta-epoch0009.safetensors"
    shutil.copyfile(target, stray)
    changed = target.read_bytes()

    assert main(["nets", "ship", str(run / "mlrsnet-seed0"), "--out", str(shipped)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--replace" in err
    assert "theta-epoch0002.safetensors: out.bias 0.25" in err
    assert "theta-epoch0009.safetensors: not saved by the run" in err
    assert target.read_bytes() == changed and stray.is_file()  # nothing written

    assert main(["nets", "ship", str(run / "mlrsnet-seed0"), "--out", str(shipped),
                 "--replace"]) == 0
    assert "(replaced)" in capsys.readouterr().out
    assert target.read_bytes() == (run / "mlrsnet-seed0" / target.name).read_bytes()
    assert not stray.exists()


def test_not_a_finished_learned_run_is_one_line_and_exit_2(run, tmp_path, capsys):
    killed = tmp_path / "suite" / "mlrsnet-seed0"
    shutil.copytree(run / "mlrsnet-seed0", killed)
    for name in ("recipe.yaml", "provenance.json"):
        shutil.copyfile(run / name, tmp_path / "suite" / name)
    result = json.loads((killed / "result.json").read_text())
    (killed / "result.json").write_text(json.dumps({**result, "status": "KILLED"}))
    cases = {run / "fixed-sgd-seed0": "saved no nets",  # finished, but nothing learned
             run: "no result.json",  # the suite folder, not one method's
             tmp_path / "missing": "no such folder",
             killed: "status 'KILLED', not FINISHED"}
    for folder, why in cases.items():
        assert main(["nets", "ship", str(folder), "--out", str(tmp_path / "net")]) == 2, folder
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and err.startswith(f"metalr: {folder}") and why in err, err
    assert not (tmp_path / "net").exists()


def test_the_recorded_command_is_relative_to_the_repository(tmp_path):
    root = tmp_path.resolve() / "repo"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "a.yaml").write_text("name: a\n")
    elsewhere = tmp_path.resolve() / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "b.yaml").write_text("name: b\n")
    argv = ["/usr/bin/metalr", "run", "../repo/recipes/a.yaml", "train.epochs=3",
            f"output_dir={elsewhere}", "--only", "m"]
    tag = command_tag(argv, cwd=elsewhere, root=root)["metalr.command"]
    assert tag == f"metalr run recipes/a.yaml train.epochs=3 output_dir={elsewhere} --only m"
    assert card_command(tag) == ("metalr run recipes/a.yaml train.epochs=3 --only m", [])
    outside = command_tag(["metalr", "run", "b.yaml"], cwd=elsewhere, root=root)
    shown, paths = card_command(outside["metalr.command"])
    assert shown == "metalr run <outside the repository>/b.yaml"
    assert paths == [str(elsewhere / "b.yaml")]
    assert command_tag(["/x/pytest", "run", "a.yaml"], cwd=root, root=root) == {}  # from Python


def test_the_shipped_cards_name_no_machine_path_and_a_recipe_of_the_repository():
    cards = sorted(NETS_DIR.glob("*/card.md"))
    assert cards
    for card in cards:
        text = card.read_text()
        assert absolute_paths(text) == [] and not MACHINE_PATH.search(text), card
        assert text.count(BEGIN) == 1 and text.count(END) == 1, card
        recipes = re.findall(r"^metalr run (?:-q )?(\S+\.yaml)", text, re.M)
        assert recipes, f"{card}: no `metalr run RECIPE` command"
        for recipe in recipes:
            assert (REPO / recipe).is_file(), f"{card}: {recipe} is not in the repository"
