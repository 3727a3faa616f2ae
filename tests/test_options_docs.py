"""Every option is declared once: the config field and its help, from which the rest is made.

- each registered config documents every field in exactly one ``Attributes:`` entry of one
  class (the config or one of its parts), one field per entry;
- the configs composed from parts have no field their build does not use, and their builds
  make their own objects (no MAML build whose learner is thrown away);
- the CLI's options, the original projects' names (the alias tables) and the examples'
  parsers are generated from the fields: their help is the field's;
- ``docs/options.md`` and the tables marked in ``docs/`` and ``examples/*/README.md`` are up to
  date with ``docs/scripts/make_options.py``;
- the examples in the docstrings of the modules that declare the parts run.
"""

from __future__ import annotations

import argparse
import dataclasses
import doctest
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from metakd.recipes import (
    ClassifierBaselineConfig,
    MAMLConfig,
    MetaBaselineConfig,
    MetaLSTMConfig,
    MTLConfig,
    PMAMLConfig,
    get_method,
    methods,
)
from metakd.recipes.fields import alias_table, compose_doc, field_docs, option_table
from metakd.recipes.options import Alias, add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import (
    GDA_FEWSHOT,
    META_LSTM,
    MTL_PYTORCH,
    PMAML,
    PMAML_STUDENT,
    maml_pytorch,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["maml", "pmaml", "mtl", "meta_lstm", "classifier_baseline", "meta_baseline",
           "cifar_kd"]


def _own_entries(cls: type) -> list[str]:
    """The names of the ``Attributes:`` entries written in ``cls``'s source."""
    source = inspect.getsource(cls)
    doc = source[source.index('"""') + 3:source.index('"""', source.index('"""') + 3)]
    stand_in = type("Doc", (), {"__doc__": doc})
    return list(field_docs(stand_in))


def _declaring(cls: type) -> dict[str, list[str]]:
    """``{field: [classes of the MRO whose source documents it]}``."""
    out: dict[str, list[str]] = {}
    for klass in cls.__mro__:
        if klass is object or not klass.__module__.startswith("metakd."):
            continue
        for name in _own_entries(klass):
            out.setdefault(name, []).append(klass.__name__)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_every_field_has_one_entry_in_one_class(name: str) -> None:
    cls = get_method(name).config_cls
    fields = [f.name for f in dataclasses.fields(cls)]
    docs = field_docs(cls)
    assert all(docs.get(f) for f in fields), [f for f in fields if not docs.get(f)]
    declaring = _declaring(cls)
    twice = {f: where for f, where in declaring.items() if f in fields and len(where) > 1}
    assert not twice, f"{cls.__name__}: documented in several classes: {twice}"
    assert set(fields) <= set(declaring), sorted(set(fields) - set(declaring))


def test_compose_doc_refuses_shared_and_missing_entries() -> None:
    @dataclasses.dataclass
    class Shared:
        """A config.

        Attributes:
            ways, shots: episode shape.
        """

        ways: int = 5
        shots: int = 1

    with pytest.raises(TypeError, match="one Attributes entry per field"):
        compose_doc(Shared)

    @dataclasses.dataclass
    class Missing:
        """A config.

        Attributes:
            ways: N.
        """

        ways: int = 5
        shots: int = 1

    with pytest.raises(TypeError, match=r"no Attributes entry documents \['shots'\]"):
        compose_doc(Missing)


def test_configs_have_only_the_fields_their_build_uses() -> None:
    maml_only = {"inner_lr", "inner_steps", "test_inner_steps", "meta_lr", "compile"}
    names = {c: {f.name for f in dataclasses.fields(c)}
             for c in (MAMLConfig, PMAMLConfig, MTLConfig, MetaLSTMConfig)}
    assert maml_only <= names[MAMLConfig]
    assert not names[MTLConfig] & maml_only
    assert not names[MetaLSTMConfig] & (maml_only - {"meta_lr"})
    assert not names[MetaLSTMConfig] & {"first_order", "backend", "inner_loss_reduction"}
    assert "compile" not in names[PMAMLConfig]
    for cls in (PMAMLConfig, MTLConfig, MetaLSTMConfig):
        assert not issubclass(cls, MAMLConfig), cls


def test_builds_make_their_own_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """No build goes through MAML's (whose learner it would throw away)."""
    import metakd.recipes.maml as maml

    def refuse(cfg: object) -> None:
        raise AssertionError(f"{type(cfg).__name__}'s build called MAML's")

    monkeypatch.setattr(maml, "build", refuse)
    small = dict(test_tasks=2, val_tasks=2)
    pmaml = get_method("pmaml").build(PMAMLConfig.paper("omniglot", 5, 1, teacher="t",
                                                        model="conv1", **small))
    assert type(pmaml.learner).__name__ == "PMAML"
    lstm = get_method("meta_lstm").build(MetaLSTMConfig.paper("omniglot", shots=1, **small))
    assert type(lstm.learner).__name__ == "MetaLSTM"
    pre = get_method("mtl").build(MTLConfig.paper("omniglot", 5, 1, model_kwargs={"hidden": 8},
                                                  **small))
    assert type(pre.learner).__name__ == "ConvNet" and pre.val_data is None


def test_alias_tables_name_real_fields() -> None:
    for cls, table in ((MAMLConfig, maml_pytorch("omniglot")),
                       (MAMLConfig, maml_pytorch("miniimagenet")), (PMAMLConfig, PMAML),
                       (PMAMLConfig, PMAML_STUDENT), (MTLConfig, MTL_PYTORCH),
                       (MetaLSTMConfig, META_LSTM), (ClassifierBaselineConfig, GDA_FEWSHOT),
                       (MetaBaselineConfig, GDA_FEWSHOT)):
        names = {f.name for f in dataclasses.fields(cls)}
        assert all(set(a.fields) <= names for a in table), (cls.__name__, table)
        flags = [a.flag for a in table]
        assert len(flags) == len(set(flags)), flags
    assert get_method("meta_lstm").aliases == META_LSTM


def test_the_help_of_every_option_is_the_fields() -> None:
    """The CLI, an alias and an example's option all show the field's one text."""
    text = field_docs(MAMLConfig)["inner_lr"].replace("``", "")
    cli = argparse.ArgumentParser()
    add_config_arguments(cli, MAMLConfig)
    port = argparse.ArgumentParser()
    add_aliases(port, MAMLConfig, maml_pytorch("omniglot"))
    for p, dest in ((cli, "inner_lr"), (port, "update_lr")):
        (action,) = [a for a in p._actions if a.dest == dest]
        assert action.help is not None and action.help.startswith(text.rstrip(".")), action.help


def _listed_flags(table: str) -> list[list[str]]:
    """The options of each row of a generated Markdown table (its first column)."""
    return [re.findall(r"`(--[^`]+)`", row.split(" | ")[0]) for row in table.splitlines()[2:]]


def test_the_parsers_and_the_tables_spell_and_group_options_alike() -> None:
    """A field's option and an original's option have the same spellings in the parsers as
    in the docs' tables."""
    for m in methods():
        p = argparse.ArgumentParser(add_help=False)
        added = add_config_arguments(p, m.config_cls, aliases=m.aliases)
        rows = {flags[0]: flags for flags in _listed_flags(option_table(m.config_cls,
                                                                          aliases=m.aliases))}
        for action in p._actions:
            if action.dest in added:  # less the --no-x of a bool's --x
                flags = [f for f in action.option_strings
                         if "--" + f.removeprefix("--no-") not in action.option_strings]
                assert rows[flags[0]] == flags, m.name
    for cls, table in ((MAMLConfig, maml_pytorch("omniglot")), (PMAMLConfig, PMAML),
                       (MTLConfig, MTL_PYTORCH), (MetaLSTMConfig, META_LSTM),
                       (MetaBaselineConfig, GDA_FEWSHOT)):
        p = argparse.ArgumentParser(add_help=False)
        add_aliases(p, cls, table)
        assert _listed_flags(alias_table(cls, table)) == [a.option_strings for a in p._actions]


def test_aliases_set_their_fields_and_the_fields_own_option_wins() -> None:
    p = argparse.ArgumentParser()
    add_config_arguments(p, MetaLSTMConfig, aliases=META_LSTM)
    args = p.parse_args(["--n-eval", "7", "--test-queries", "3", "--n-shot", "1",
                         "--data-root", "/d", "--save", "out"])
    assert option_values(args, MetaLSTMConfig, META_LSTM) == {
        "queries": 7, "test_queries": 3, "shots": 1, "root": "/d", "out_dir": "out"}
    with pytest.raises(ValueError, match="another field's name"):
        add_config_arguments(argparse.ArgumentParser(), MetaLSTMConfig,
                             aliases=[Alias("--epochs", ("epochs", "test_epochs"))])


def _example(folder: str, name: str) -> ModuleType:
    path = ROOT / "examples" / folder
    names = ("_args", "_common", "main", "train_teacher", "train_student")
    sys.path.insert(0, str(path))
    try:
        for mod in names:
            sys.modules.pop(mod, None)
        return importlib.import_module(name)
    finally:  # another folder's test imports its own "main"
        sys.path.remove(str(path))
        for mod in names:
            sys.modules.pop(mod, None)


def test_example_parsers_are_generated_from_the_tables() -> None:
    maml = _example("maml", "_args")
    args = maml.parser("omniglot", "d").parse_args(["--k_qry", "3", "--update_step", "2"])
    cfg = maml.config("omniglot", args)
    assert (cfg.queries, cfg.inner_steps, cfg.image_size, cfg.out_dir) == (
        3, 2, 28, "runs/maml-omniglot")
    assert cfg.inner_lr == pytest.approx(0.4 * 5)  # the paper's step on the mean scale
    lstm = _example("meta_lstm", "main")
    cfg = lstm.config(lstm.parser().parse_args(["--n-shot", "1", "--n-eval", "4",
                                                "--data", "omniglot", "--cpu"]))
    assert (cfg.dataset, cfg.shots, cfg.queries, cfg.test_queries, cfg.epochs) == (
        "omniglot", 1, 4, 4, 12)


def _make_options() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_options",
                                                  ROOT / "docs" / "scripts" / "make_options.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_tables_are_up_to_date() -> None:
    """docs/options.md and every marked table (run docs/scripts/make_options.py to update)."""
    make = _make_options()
    stale = make.stale()
    assert not stale, ("out of date (run .venv/bin/python docs/scripts/make_options.py): "
                       f"{sorted(str(p.relative_to(ROOT)) for p in stale)}")
    found = make.tables()
    assert {f"train:{m.name}" for m in methods()} <= set(found)
    marked = "".join(p.read_text() for p in make.marked_files())
    for name in ("maml_pytorch", "pmaml", "pmaml_student", "mtl_pytorch", "mtl_tf",
                 "meta_lstm"):
        assert f"<!-- options: {name} -->" in marked, name


@pytest.mark.parametrize("module", ["fields", "options", "parts", "loops", "originals"])
def test_module_examples_run(module: str, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(f"metakd.recipes.{module}")
    result = doctest.testmod(mod, extraglobs={"torch": torch},
                             optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result
