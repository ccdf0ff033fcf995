"""The house rules that keep the pipeline honest as it changes: params.yaml is the only place a
parameter's value lives, each stage's code deps in dvc.yaml are the photoid modules it imports, and
each stage's params in dvc.yaml are the keys it reads. Each rule is also shown failing on a copy of
the project broken by hand."""

import dataclasses
import inspect
import shutil
from pathlib import Path

import pytest
import yaml

from photoid.data.demo import DemoConfig
from photoid.detect import DetectConfig
from photoid.errors import DataError
from photoid.local_features import KeypointConfig, MatchConfig
from photoid.params import load_params
from photoid.retrieval.catalogue import CatalogueConfig
from photoid.retrieval.search import Search
from photoid.retrieval.verification import RerankConfig
from photoid.train.fold import BackboneParams, ClassifierParams, DolgParams
from photoid.train.loop import TrainConfig
from tests.structure import (
    PARAMS,
    REPO,
    covered_modules,
    dvc_stages,
    import_cycles,
    load_stage,
    photoid_imports,
    script_of,
)


def deps_problems(root: Path) -> list[str]:
    """Each stage whose photoid deps in dvc.yaml are not exactly the modules its script imports."""
    problems = []
    for name, spec in dvc_stages(root).items():
        script = script_of(spec)
        used, listed = photoid_imports(root, root / script), covered_modules(root, spec["deps"])
        if script not in spec["deps"]:
            problems.append(f"{name}: {script} is not among its deps")
        if used - listed:
            problems.append(f"{name}: imports but does not depend on {sorted(used - listed)}")
        if listed - used:
            problems.append(f"{name}: depends on but does not import {sorted(listed - used)}")
    return problems


def params_problems(root: Path) -> list[str]:
    """Each stage whose params in dvc.yaml are not the keys its script reads (its READS)."""
    problems = []
    for name, spec in dvc_stages(root).items():
        reads = load_stage(Path(script_of(spec)).stem, root).READS
        if list(spec.get("params", [])) != list(reads):
            problems.append(f"{name}: dvc.yaml lists params {spec.get('params')}, the script reads {list(reads)}")
    return problems


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "copy"
    for rel in ("photoid", "stages"):
        shutil.copytree(REPO / rel, root / rel, ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / rel, root / rel)
    return root


def test_each_stage_depends_on_exactly_the_photoid_modules_it_imports():
    assert deps_problems(REPO) == []


def test_the_deps_check_fails_on_a_dep_removed_or_one_too_many(tmp_path):
    root = _copy(tmp_path)
    text = (root / "dvc.yaml").read_text()
    # train-dolg without data/split.py (where fold_view lives): editing it would not re-run training
    dvc = yaml.safe_load(text)
    dvc["stages"]["train-dolg"]["do"]["deps"].remove("photoid/data/split.py")
    dvc["stages"]["crop"]["deps"].append("photoid/detect.py")  # crop does not import the detector
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    problems = deps_problems(root)
    assert any("train-dolg" in p and "photoid/data/split.py" in p and "does not depend" in p for p in problems)
    assert any(p.startswith("crop") and "photoid/detect.py" in p and "does not import" in p for p in problems)
    # and an import added to a module shows up in every stage that reaches it
    schema = root / "photoid/data/schema.py"
    schema.write_text("import photoid.retrieval.rerank\n" + schema.read_text())
    assert any(p.startswith("split") and "photoid/retrieval/rerank.py" in p for p in deps_problems(root))


def test_each_stage_declares_in_dvc_yaml_the_params_it_reads():
    assert params_problems(REPO) == []


def test_the_params_check_fails_when_a_stage_reads_a_key_dvc_yaml_does_not_list(tmp_path):
    root = _copy(tmp_path)
    script = root / "stages" / "filter.py"
    script.write_text(script.read_text().replace('READS = ("filter",)', 'READS = ("filter", "split.seed")'))
    assert params_problems(root) == ["filter: dvc.yaml lists params ['filter'], the script reads ['filter', 'split.seed']"]


def option_problems(root: Path) -> list[str]:
    """Each stage script option that is a parameter (anything but a path, the fold, --params and --set):
    a parameter with an option of its own would carry a default of its own."""
    problems = []
    for script in sorted((root / "stages").glob("*.py")):
        signature = inspect.signature(load_stage(script.stem, root).main)
        if not {"params_file", "overrides"} <= set(signature.parameters):
            problems.append(f"{script.name}: no --params / --set")
        for name, option in signature.parameters.items():
            if name not in ("fold", "params_file", "overrides") and option.annotation not in (Path, "Path"):
                problems.append(f"{script.name}: --{name} is a parameter; read it from params.yaml")
    return problems


def test_stage_scripts_take_no_parameter_as_an_option():
    assert option_problems(REPO) == []


def test_the_options_check_fails_on_a_parameter_given_an_option_of_its_own(tmp_path):
    root = _copy(tmp_path)
    script = root / "stages" / "train_dolg.py"
    text = script.read_text()
    assert "def main(\n" in text
    script.write_text(text.replace("def main(\n", 'def main(\n    epochs: int = typer.Option(10, help="Epochs."),\n'))
    assert option_problems(root) == ["train_dolg.py: --epochs is a parameter; read it from params.yaml"]


CONFIGS = [(DemoConfig, ("data.demo",)), (DetectConfig, ("detect",)), (KeypointConfig, ("local",)),
           (MatchConfig, ("rerank",)), (RerankConfig, ("rerank",)), (BackboneParams, ("train",)),
           (ClassifierParams, ("backbone",)), (DolgParams, ("dolg",)), (TrainConfig, ("train", "backbone", "dolg")),
           (Search, ("knn",)), (CatalogueConfig, ("rerank",))]


@pytest.mark.parametrize("cls,sections", CONFIGS, ids=[c.__name__ for c, _ in CONFIGS])
def test_a_config_dataclass_has_no_default_for_a_key_of_params_yaml(cls, sections):
    params = load_params(sections, PARAMS)
    for f in dataclasses.fields(cls):
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        keys = [f"{s}.{f.name}" for s in sections if f"{s}.{f.name}" in params.values]
        assert not (has_default and keys), f"{cls.__name__}.{f.name} has a default beside params.yaml's {keys[0]}"


def test_every_key_of_params_yaml_is_read_by_some_stage():
    reads = [r for spec in dvc_stages(REPO).values() for r in load_stage(Path(script_of(spec)).stem).READS]
    flat = load_params(tuple(yaml.safe_load(PARAMS.read_text())), PARAMS).values
    unread = [k for k in flat if not any(k == r or k.startswith(r + ".") for r in reads)]
    assert unread == []


def test_a_stage_stops_on_a_key_it_does_not_use_a_misspelt_set_or_a_wrong_type(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS.read_text().replace("  min_samples: 4", "  min_samples: 4\n  min_sample: 3"))
    p = load_params(("filter",), params)
    p.int("filter.min_samples")
    with pytest.raises(DataError, match="filter.min_sample is not a parameter this stage uses"):
        p.check_all_read()
    with pytest.raises(DataError, match="has no such parameter"):
        load_params(("dolg",), PARAMS, ["dolg.epoch=3"])
    with pytest.raises(DataError, match="does not read knn.threshold"):
        load_params(("dolg",), PARAMS, ["knn.threshold=0.5"])
    with pytest.raises(DataError, match="dolg.epochs takes int, got 'many'"):
        load_params(("dolg",), PARAMS, ["dolg.epochs=many"]).int("dolg.epochs")
    # `key=` is the empty string, as dvc exp run -S reads it (e.g. data.group_col= for photos without encounters)
    assert load_params(("data",), PARAMS, ["data.group_col="]).str("data.group_col") == ""
    with pytest.raises(DataError, match="not found"):
        load_params(("dolg",), tmp_path / "missing.yaml")
    # --set reads its value as YAML, as `dvc exp run -S` does
    p = load_params(("dolg", "ensemble"), PARAMS, ["dolg.epochs=3", "ensemble.folds=[0,2]", "dolg.select_best=false"])
    assert (p.int("dolg.epochs"), p.get("ensemble.folds", tuple), p.bool("dolg.select_best")) == (3, (0, 2), False)
    # a float in exponent form without a dot is text to YAML 1.1, and `dvc exp run -S dolg.lr_backbone=0.00003`
    # writes exactly that (3e-05) into params.yaml: it is the number
    params.write_text(PARAMS.read_text().replace("  lr_backbone: 0.0001", "  lr_backbone: 3e-05"))
    assert load_params(("dolg",), params).float("dolg.lr_backbone") == 3e-05
    assert load_params(("dolg",), PARAMS, ["dolg.lr_backbone=1e-4"]).float("dolg.lr_backbone") == 1e-4
    for text in ("fast", "nan", "inf"):
        with pytest.raises(DataError, match=f"dolg.lr_backbone takes float, got '{text}'"):
            load_params(("dolg",), PARAMS, [f"dolg.lr_backbone={text}"]).float("dolg.lr_backbone")


def test_a_stage_run_by_hand_reports_a_bad_set_without_a_traceback(tmp_path):
    from typer.testing import CliRunner

    result = CliRunner().invoke(load_stage("split").app, ["--params", str(PARAMS), "--set", "split.folds=3",
                                                          "--filtered", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2 and "split.folds" in result.output and "n_folds" in result.output


def test_no_param_is_named_as_the_file_metadata_dvcs_run_cache_leaves_out():
    """DVC's run cache keys a stage by its deps and params with every ``size`` and ``nfiles`` key left
    out, at any depth (dvc/stage/cache.py: ``dict_sha256(..., exclude=[size, nfiles])``): a param of
    that name would never tell two runs apart, so `dvc exp run -S local.size=160` would restore the
    outputs of a run at another size as if they were its own."""
    from dvc.stage.cache import _get_cache_hash

    flat = load_params(tuple(yaml.safe_load(PARAMS.read_text())), PARAMS).values
    clashing = [k for k in flat if k.rsplit(".", 1)[-1] in ("size", "nfiles")]
    assert clashing == []
    # the behaviour this guards against, as DVC has it
    def key(name, value):
        return _get_cache_hash({"params": {"params.yaml": {"local": {name: value}}}})

    assert key("size", 160) == key("size", 384) and key("long_side", 160) != key("long_side", 384)


def test_no_photoid_module_imports_one_that_imports_it_back():
    assert import_cycles(REPO) == []


def test_the_cycle_check_finds_an_import_back_inside_a_function(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "photoid", root / "photoid")
    search = root / "photoid/retrieval/search.py"
    search.write_text(search.read_text() + "\n\ndef _late():\n    from photoid.retrieval.ranker import Ranker\n")
    cycles = import_cycles(root)
    assert cycles and any(c[0] == c[-1] and "photoid/retrieval/ranker.py" in c for c in cycles)


def stale_help(root: Path) -> list[str]:
    """What the stages' --help texts name that does not exist: an option the command lacks (``--x``),
    a ``section.key`` that params.yaml lacks."""
    import re

    from typer.main import get_command

    flat = {}

    def walk(tree, prefix=""):
        for k, v in tree.items():
            flat[prefix + k] = v
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(yaml.safe_load((root / "params.yaml").read_text()))
    sections = {k for k in flat if "." not in k}
    problems = []
    for script in sorted((root / "stages").glob("*.py")):
        command = get_command(load_stage(script.stem, root).app)
        options = {o for p in command.params for o in p.opts}
        text = (command.help or "") + " " + " ".join(getattr(p, "help", None) or "" for p in command.params)
        named_options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text))
        problems += [f"{script.name}: {o} is no option of the stage" for o in sorted(named_options - options)]
        named = {m for m in re.findall(r"(?<![\w/.-])([a-z_]+(?:\.[a-z_0-9]+)+)\b", text) if m.split(".")[0] in sections}
        problems += [f"{script.name}: {k} is not in params.yaml" for k in sorted(named) if k not in flat]
    return problems


def test_stage_help_names_only_options_and_params_that_exist():
    assert stale_help(REPO) == []


def test_the_help_check_fails_on_a_stale_option_or_param(tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(REPO / "stages", root / "stages")
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    script = root / "stages" / "filter.py"
    script.write_text(script.read_text().replace('"""filter:', '"""filter: --min-samples, filter.min_sample;', 1))
    problems = stale_help(root)
    assert any("--min-samples is no option" in p for p in problems)
    assert any("filter.min_sample is not in params.yaml" in p for p in problems)


@pytest.mark.parametrize("change, named", [
    (["crop.side=-5"], "crop.side is -5: it must be 0 or more"),
    (["crop.side=96", "train.img_size=128"], "crop.side (96) is smaller than train.img_size (128)"),
    (["split.n_folds=1"], "split.n_folds is 1"),
    (["train.batch_size=0"], "train.batch_size is 0: it must be at least 1"),
    (["split.new_fraction=1.5"], "split.new_fraction is 1.5: it must be a share"),
])
def test_params_that_break_a_rule_stop_when_loaded_naming_the_keys(change, named):
    with pytest.raises(DataError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_params(("crop", "train", "split"), PARAMS, change)


def test_crops_follow_the_training_size_unless_set():
    from photoid.crop import crop_side

    assert crop_side(load_params(("crop", "train.img_size"), PARAMS, ["train.img_size=224"])) == 224
    assert crop_side(load_params(("crop", "train.img_size"), PARAMS, ["train.img_size=224", "crop.side=256"])) == 256
