"""Discovery through real installed distributions: a dist-info written into a folder on sys.path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from metalr.plugins import PluginLoadError, Registry

GOOD = '''
from pydantic import BaseModel
from metalr import hookimpl

class Options(BaseModel):
    lr: float = 0.3

class Constant:
    def __init__(self, lr):
        self.value = lr
    def start(self, run): pass
    def lr(self, ctx): return self.value
    def end_epoch(self, epoch, metrics): pass

@hookimpl
def register_lr_policies(register):
    register("third-party-constant", Constant, options=Options, summary="from a third party")
'''


def write_distribution(root: Path, dist: str, module: str, source: str) -> None:
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[metalr]\n{module.split('_')[-1]} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    write_distribution(tmp_path, "metalr-good", "metalr_good", GOOD)
    write_distribution(tmp_path, "metalr-broken", "metalr_broken",
                       "raise ImportError('this plugin needs a package that is missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("METALR_STRICT_PLUGINS", raising=False)
    return tmp_path


def test_third_party_component_is_found_and_builds(site):
    registry = Registry(strict=False)
    with pytest.warns(UserWarning, match="metalr-broken:broken"):
        registry.load_entry_points()
    component = registry.get("lr_policy", "third-party-constant")
    assert component.source == "metalr-good:good"
    assert component.build(lr=0.25).value == 0.25
    # the built-ins load beside it, through the same entry points
    assert registry.get("task", "mnist1d").source.startswith("metalr:")
    assert [b.source for b in registry.broken] == ["metalr-broken:broken"]
    assert "missing" in registry.broken[0].error


def test_strict_mode_raises_naming_the_plugin(site, monkeypatch):
    monkeypatch.setenv("METALR_STRICT_PLUGINS", "1")
    with pytest.raises(PluginLoadError, match="metalr-broken:broken"):
        Registry().load_entry_points()


def test_duplicate_name_is_an_error_naming_both_sources(site):
    write_distribution(site, "metalr-clash", "metalr_clash", GOOD.replace(
        '"third-party-constant"', '"fixed"'))
    registry = Registry(strict=False)
    with pytest.warns(UserWarning):
        registry.load_entry_points()
    clash = [b for b in registry.broken if b.source == "metalr-clash:clash"]
    assert clash and "metalr:schedules" in clash[0].error and "metalr-clash:clash" in clash[0].error
    assert registry.get("lr_policy", "fixed").source == "metalr:schedules"
    shutil.rmtree(site / "metalr_broken-0.1.dist-info")  # so strict mode meets the clash first
    with pytest.raises(PluginLoadError, match="registered twice"):
        Registry(strict=True).load_entry_points()


def test_misspelled_hook_is_reported(site):
    write_distribution(site, "metalr-typo", "metalr_typo", GOOD.replace(
        "def register_lr_policies", "def register_lr_policy"))
    registry = Registry(strict=False)
    with pytest.warns(UserWarning):
        registry.load_entry_points()
    assert any(b.source == "metalr-typo:typo" and "register_lr_policy" in b.error
               for b in registry.broken)


def test_unknown_name_suggests_the_nearest(registry):
    with pytest.raises(KeyError, match="did you mean 'mlrsnet'"):
        registry.get("lr_policy", "mlrsnte")


def test_cli_plugins_json_lists_components_and_broken(site):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    out = subprocess.run([sys.executable, "-m", "metalr.cli", "plugins", "--json"],
                         capture_output=True, text=True, env=env, check=True).stdout
    data = json.loads(out)
    names = {(c["kind"], c["name"], c["source"]) for c in data["components"]}
    assert ("lr_policy", "third-party-constant", "metalr-good:good") in names
    assert ("lr_policy", "mlrsnet", "metalr:mlrsnet") in names
    assert {b["source"] for b in data["broken"]} >= {"metalr-broken:broken"}
    text = subprocess.run([sys.executable, "-m", "metalr.cli", "plugins"], capture_output=True,
                          text=True, env=env, check=True).stdout
    assert "BROKEN metalr-broken:broken" in text and "third-party-constant" in text
