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

from metalr.contracts.registry import PluginLoadError, Registry

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
    clash = [r for r in registry.refused if r.source == "metalr-clash:clash"]
    assert clash and "metalr:schedules" in str(clash[0]) and "metalr-clash:clash" in str(clash[0])
    assert registry.get("lr_policy", "fixed").source == "metalr:schedules"
    assert not any(b.source == "metalr-clash:clash" for b in registry.broken)
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


# -- isolation: a clash costs only the clashing component ----------------------------------------

CLASH = GOOD.replace(
    'register("third-party-constant", Constant, options=Options, summary="from a third party")',
    'register("cosine", Constant, options=Options)\n'
    '    register("aaa-constant", Constant, options=Options)')


def test_clash_from_a_distribution_that_sorts_first_costs_only_that_component(site):
    write_distribution(site, "aaa-metalr-cosine", "aaa_cosine", CLASH)  # sorts before "metalr"
    registry = Registry(strict=False)
    with pytest.warns(UserWarning, match="'cosine' from aaa-metalr-cosine:cosine refused"):
        registry.load_entry_points()
    for name in ("cosine", "fixed", "exponential", "multistep", "sgdr", "plateau"):
        assert registry.get("lr_policy", name).source == "metalr:schedules", name
    assert registry.get("lr_policy", "aaa-constant").source == "aaa-metalr-cosine:cosine"
    [refusal] = [r for r in registry.refused if r.source.startswith("aaa")]
    assert (refusal.kind, refusal.name, refusal.kept) == ("lr_policy", "cosine", "metalr:schedules")
    assert "aaa-metalr-cosine:cosine" in str(refusal) and "metalr:schedules" in str(refusal)
    assert not any(b.source.startswith("aaa") for b in registry.broken)


def test_builtin_takes_its_name_back_whatever_the_order_of_registration():
    import types

    import metalr_schedules

    from metalr import hookimpl

    squatter = types.ModuleType("squatter")
    squatter.register_lr_policies = hookimpl(
        lambda register: (register("fixed", object), register("squat", object)))
    registry = Registry(strict=False)
    registry._loaded = True  # only the two plugins below, in this order
    assert registry.add_plugin(squatter, "aaa-squatter:squatter")
    with pytest.warns(UserWarning, match="'fixed' from aaa-squatter:squatter refused"):
        assert registry.add_plugin(metalr_schedules, "metalr:schedules")
    assert registry.get("lr_policy", "fixed").source == "metalr:schedules"
    assert registry.get("lr_policy", "squat").source == "aaa-squatter:squatter"


def test_two_third_parties_first_loaded_keeps_the_name(site):
    write_distribution(site, "metalr-zz", "metalr_zz", GOOD)  # same name as metalr-good's
    registry = Registry(strict=False)
    with pytest.warns(UserWarning):
        registry.load_entry_points()
    assert registry.get("lr_policy", "third-party-constant").source == "metalr-good:good"
    assert [(r.source, r.kept) for r in registry.refused] == [("metalr-zz:zz", "metalr-good:good")]


def test_strict_mode_raises_on_a_clash_whatever_the_order(site):
    write_distribution(site, "aaa-metalr-cosine", "aaa_cosine", CLASH)
    shutil.rmtree(site / "metalr_broken-0.1.dist-info")
    with pytest.raises(PluginLoadError, match="'cosine' is registered twice: by metalr:schedules"):
        Registry(strict=True).load_entry_points()


def test_unknown_component_names_broken_and_refused_plugins(site):
    write_distribution(site, "aaa-metalr-cosine", "aaa_cosine", CLASH)
    registry = Registry(strict=False)
    with pytest.warns(UserWarning):
        registry.load_entry_points()
    with pytest.raises(KeyError) as info:
        registry.get("lr_policy", "my-policy")
    message = str(info.value)
    assert "unknown lr_policy 'my-policy'" in message
    assert "plugin metalr-broken:broken is broken (ImportError" in message
    assert "'cosine' from aaa-metalr-cosine:cosine refused" in message
    plain = Registry(strict=False)  # nothing broken, nothing refused: no note
    plain.components["lr_policy"]["fixed"] = registry.get("lr_policy", "fixed")
    plain._loaded = True
    with pytest.raises(KeyError) as info:
        plain.get("lr_policy", "my-policy")
    assert "not loaded" not in str(info.value)


def test_cli_plugins_lists_refused_components(site):
    write_distribution(site, "aaa-metalr-cosine", "aaa_cosine", CLASH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    text = subprocess.run([sys.executable, "-m", "metalr.cli", "plugins"], capture_output=True,
                          text=True, env=env, check=True).stdout
    assert "REFUSED lr_policy 'cosine' from aaa-metalr-cosine:cosine" in text
    assert "fixed" in text and "aaa-constant" in text


# -- a schema derived from the factory's signature -----------------------------------------------

NO_SCHEMA = '''
from metalr import hookimpl

class Warm:
    def __init__(self, lr: float, warmup: int = 0):
        self.value, self.warmup = lr, warmup
    def start(self, run): pass
    def lr(self, ctx): return self.value
    def end_epoch(self, epoch, metrics): pass

class Open:
    def __init__(self, lr=0.1, **extra):
        self.value, self.extra = lr, extra

def wide_mlp(spec, width: int = 8, depth=1):
    return ("mlp", spec, width, depth)

@hookimpl
def register_lr_policies(register):
    register("warm", Warm)
    register("open", Open)

@hookimpl
def register_models(register):
    register("wide", wide_mlp)
'''


@pytest.fixture
def loose(site):
    write_distribution(site, "metalr-loose", "metalr_loose", NO_SCHEMA)
    registry = Registry(strict=False)
    with pytest.warns(UserWarning):
        registry.load_entry_points()
    return registry


def test_schema_is_derived_from_the_signature(loose):
    from pydantic import ValidationError

    warm = loose.get("lr_policy", "warm")
    assert warm.derived and set(warm.options.model_fields) == {"lr", "warmup"}
    assert warm.build(lr=0.2).warmup == 0
    assert warm.build(lr="0.5", warmup=3).value == 0.5
    for bad in ({"lr": 0.1, "warmpu": 3}, {"warmup": 1}, {"lr": "fast"}):
        with pytest.raises(ValidationError):
            warm.build(**bad)
    open_ = loose.get("lr_policy", "open")  # takes **extra: any key is its own business
    assert open_.build(lr=0.3, anything=1).extra == {"anything": 1}
    wide = loose.get("model", "wide")  # the spec is the core's, not an option
    assert set(wide.options.model_fields) == {"width", "depth"}
    assert wide.build("SPEC", width=4) == ("mlp", "SPEC", 4, 1)
    with pytest.raises(ValidationError):
        wide.build("SPEC", widht=4)
    assert loose.get("lr_policy", "third-party-constant").derived is False


def test_validate_catches_a_typo_in_a_component_without_schema(site, tmp_path):
    write_distribution(site, "metalr-loose", "metalr_loose", NO_SCHEMA)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""
        name: loose
        task: {name: mnist1d, options: {meta_size: 100, num_samples: 600}}
        model: {name: mlp, options: {hidden: [8]}}
        train: {epochs: 1, seeds: [0]}
        methods:
          warm:
            optimizer: sgd
            lr_policy: {name: warm, options: {lr: 0.1, warmpu: 3}}
        tracking: none
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    done = subprocess.run([sys.executable, "-m", "metalr.cli", "validate", str(recipe)],
                          capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "methods.warm.lr_policy.options.warmpu" in done.stdout + done.stderr


@pytest.mark.parametrize("kind", ["task", "model", "optimizer", "lr_policy", "tracker",
                                  "executor"])
def test_cli_shows_every_components_options_as_its_schema_has_them(kind, capsys):
    """`metalr plugins KIND NAME --json` lists exactly the options the component's schema
    validates, with its defaults: the reference a recipe writer reads. An unknown name is one
    line with a did-you-mean, exit 1."""
    from pydantic_core import PydanticUndefined

    from metalr.cli import main
    from metalr.contracts.registry import get_registry

    registry = get_registry()
    for name in registry.names(kind):
        assert main(["plugins", kind, name, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        schema = registry.get(kind, name).options
        fields = schema.model_fields if schema else {}
        assert [o["option"] for o in shown["options"]] == list(fields), (kind, name)
        for row in shown["options"]:
            field = fields[row["option"]]
            if field.default_factory is None and field.default is not PydanticUndefined:
                assert row["default"] == repr(field.default), (kind, name, row)
    assert main(["plugins", kind, "no-such-thing"]) == 1
    assert "unknown" in capsys.readouterr().err


def test_cli_shows_options_in_a_table(capsys):
    from metalr.cli import main

    assert main(["plugins", "lr_policy", "mlrsnet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("lr_policy mlrsnet (metalr:mlrsnet)")
    preset = next(line for line in out if line.split()[0] == "preset")
    assert "'auto' | 'paper'" in preset and "probed scale" in preset


def test_a_plugins_import_of_metalr_loads_no_torch():
    """``from metalr import hookimpl`` (all a plugin module needs) is cheap: metalr's own
    __init__ loads neither torch nor the registry; the public names still resolve on use."""
    code = ("import sys\nfrom metalr import hookimpl\n"
            "assert 'torch' not in sys.modules and 'metalr.contracts.registry' not in sys.modules\n"
            "import metalr\nassert metalr.LearnedLR.__name__ == 'LearnedLR'\n"
            "from metalr import get_registry, Registry\n"
            "assert isinstance(get_registry(), Registry)\n"
            "print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def twice_declared(components) -> list[str]:
    """Components whose options are declared twice: an explicit schema *and* named keyword
    parameters of the factory. Such a factory must take ``**options`` and read its schema (as
    MLR-SNet's nets do), so that names, defaults and ranges live in one place."""
    import inspect

    from metalr.contracts.derived_options import POSITIONAL

    wrong = []
    for c in components:
        if c.derived or c.options is None:
            continue
        try:
            params = inspect.signature(c.factory).parameters.values()
        except (TypeError, ValueError):
            continue  # a builtin or C callable: no keywords of its own to restate the schema
        params = list(params)[POSITIONAL.get(c.kind, 0):]
        named = [p.name for p in params if not p.name.startswith("_")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if named or not any(p.kind is p.VAR_KEYWORD for p in params):
            wrong.append(f"{c.kind} {c.name} ({c.source}): {named or 'no **options'}")
    return wrong


def test_every_component_declares_its_options_once():
    """A component gives its options either as a schema its factory reads (``**options``) or as
    its factory's signature (the registry derives the schema); never both, which drifted apart
    before (a default changed in one place, `metalr validate` checking against the other)."""
    from metalr.contracts.registry import get_registry

    components = list(get_registry().all())
    assert sum(not c.derived and c.options is not None for c in components) > 30
    assert twice_declared(components) == []


def test_a_factory_that_restates_its_schema_is_named():
    """The check above can fail: a schema and a factory that restates it are reported."""
    from pydantic import BaseModel

    from metalr.contracts.registry import Component

    class Options(BaseModel):
        lr: float = 0.1

    def twice(lr: float = 0.1):
        return lr

    def once(**options):
        return Options(**options).lr

    made = [Component("lr_policy", n, f, Options, "test") for n, f in (("a", twice), ("b", once))]
    assert twice_declared(made) == ["lr_policy a (test): ['lr']"]
