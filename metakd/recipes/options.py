"""Command-line options of a method, generated from its config dataclass.

``metakd train METHOD`` gets one option per config field (:func:`add_config_arguments`),
typed from the field's annotation, with the field's help (its ``Attributes:`` entry, see
:mod:`metakd.recipes.fields`) and the config's default. Every option defaults to ``None``
(not given), so that ``paper(dataset, ways, shots, **given)`` keeps the paper's value of what
the user left out. An original project's names of the same fields (MAML-Pytorch's
``--update_lr``, the Meta-LSTM code's ``--n-shot``...) are declared once as :class:`Alias`
tables (:mod:`metakd.recipes.originals`), from which the CLI's and the examples' options are
generated (:func:`add_aliases`) and read back (:func:`option_values`).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from metakd.recipes.fields import (
    alias_default,
    alias_groups,
    alias_help,
    alias_spellings,
    field_docs,
    option_flags,
    plain,
    shown,
)

__all__ = ["OPTION_GROUPS", "Alias", "KeyValueAction", "add_aliases", "add_config_arguments",
           "field_docs", "finish_help", "option_values", "parse_value", "plain"]


def parse_value(raw: str) -> Any:
    """A command-line value typed as it reads: ``true``/``false``, an int, a float, else text.

    Example:
        >>> [parse_value(v) for v in ("true", "32", "1e-3", "xavier")]
        [True, 32, 0.001, 'xavier']
    """
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


class KeyValueAction(argparse.Action):
    """A repeatable ``KEY=VALUE`` option that collects a dict of typed values.

    Example:
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--model-arg", dest="model_kwargs", action=KeyValueAction)
        >>> p.parse_args(["--model-arg", "hidden=32", "--model-arg", "head-init=xavier"])
        Namespace(model_kwargs={'hidden': 32, 'head_init': 'xavier'})
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        key, sep, raw = str(values).partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentError(
                self, f"{values!r}: expected KEY=VALUE, e.g. head_init=xavier")
        found = dict(getattr(namespace, self.dest, None) or {})
        found[key.strip().replace("-", "_")] = parse_value(raw)
        setattr(namespace, self.dest, found)


@dataclass(frozen=True)
class Alias:
    """An original project's option for config fields: the same value under the original name.

    Attributes:
        flag: the option as the original scripts spell it (``"--update_lr"``).
        fields: the config field it sets, or several (each takes the value).
        default: the original script's default where the example keeps it; ``None``: the
            config's own (its ``paper`` value).
        note: what the original's option adds to the field's help (a unit, a scale).
        choices: the values it takes (default: those of a ``Literal`` field).

    Example:
        >>> a = Alias("--n-eval", ("queries", "test_queries"))
        >>> a.dest, a.fields
        ('n_eval', ('queries', 'test_queries'))
    """

    flag: str
    fields: tuple[str, ...] | str
    default: Any = None
    note: str = ""
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if not self.flag.startswith("--"):
            raise ValueError(f"alias {self.flag!r}: write the option with its dashes")
        if isinstance(self.fields, str):
            object.__setattr__(self, "fields", (self.fields,))

    @property
    def dest(self) -> str:
        """The attribute the parsed option is stored under (the flag without dashes)."""
        return self.flag.lstrip("-").replace("-", "_")

    @property
    def plain(self) -> bool:
        """A new name of one field and nothing else (an extra spelling of its option)."""
        return len(self.fields) == 1 and self.default is None and self.choices is None \
            and not self.note


def _unwrap_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _kind(tp: Any, store_true: bool = False) -> dict[str, Any] | None:
    """``add_argument`` keywords of a field's type (``None``: not expressible)."""
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp)
    if tp is bool:
        return {"action": "store_true"} if store_true else \
            {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        choices = list(typing.get_args(tp))
        return {"choices": choices, "type": type(choices[0])}
    if tp in (int, float, str):
        return {"type": tp}
    if tp is dict or origin is dict:
        return {"action": KeyValueAction, "metavar": "KEY=VALUE"}
    if origin in (list, tuple):
        inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return {"nargs": "+", "type": inner[0] if inner and inner[0] in (int, float, str)
                else str}
    return None


def _help(text: str, default: Any) -> str:
    return f"{text.rstrip('.')} (default: {shown(default)})".replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser | Any, config_cls: type[Any],
                         skip: Sequence[str] = (), *, only: Sequence[str] | None = None,
                         aliases: Iterable[Alias] = ()) -> list[str]:
    """Add one ``--field-name`` option per field of ``config_cls`` (``only`` those, less ``skip``).

    ``bool`` fields get ``--x``/``--no-x``; ``Literal`` fields get their choices; ``int``,
    ``float`` and ``str`` fields (optional or not) their type; ``dict`` fields a repeatable
    ``KEY=VALUE`` (a ``*_kwargs`` field also as ``--*-arg``); ``list``/``tuple`` fields one or
    more values. Fields of other types get no option. Every option defaults to ``None``. Each
    alias of ``aliases`` that only renames a field (:attr:`Alias.plain`) is another spelling
    of its option; the others get options of their own (:func:`add_aliases`).

    Returns:
        The names of the fields that got an option.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Cfg:
        ...     '''Attributes:
        ...         lr: learning rate.
        ...         schedule: the decay.
        ...     '''
        ...     lr: float = 0.1
        ...     schedule: Literal["constant", "cosine"] = "constant"
        >>> p = argparse.ArgumentParser()
        >>> add_config_arguments(p, Cfg, aliases=[Alias("--learning-rate", "lr")])
        ['lr', 'schedule']
        >>> p.parse_args(["--learning-rate", "0.5"])
        Namespace(lr=0.5, schedule=None)
    """
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    aliases = list(aliases)
    spellings = alias_spellings(aliases)
    added: list[str] = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        kw = _kind(hints.get(f.name, str))
        if kw is None:
            continue  # not expressible on the command line
        flags = option_flags(f.name, spellings, key_value=kw.get("action") is KeyValueAction)
        text = plain(docs.get(f.name, f.name.replace("_", " ")))
        parser.add_argument(*flags, dest=f.name, default=None, help=_help(text, _default(f)),
                            **kw)
        added.append(f.name)
    own = [a for a in aliases if not a.plain or a.fields[0] not in added]
    clash = [a.flag for a in own if a.dest in added and a.fields != (a.dest,)]
    if clash:
        raise ValueError(f"aliases {clash} would be stored under another field's name")
    add_aliases(parser, config_cls, own)
    return added


def add_aliases(parser: argparse.ArgumentParser | Any, config_cls: type[Any],
                aliases: Iterable[Alias], reference: Any = None, *,
                dashed: bool = False) -> None:
    """Add an option per alias: typed as its first field, its help the field's and the
    alias's note, its default the alias's (``None``: not given, the config's value).

    ``bool`` fields get a flag (``store_true``). The option is stored under
    :attr:`Alias.dest`; :func:`option_values` maps it onto the fields. Aliases that set the
    same fields the same way are spellings of one option (stored under the first's ``dest``).
    The help shows the alias's default, else ``reference``'s value of the field (a ``paper``
    config; a text: that text), else "the paper's". With ``dashed``, ``--a_b`` is also
    ``--a-b``.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> p = argparse.ArgumentParser()
        >>> add_aliases(p, MAMLConfig, [Alias("--update_lr", "inner_lr"),
        ...                             Alias("--k_qry", "queries", default=15)])
        >>> p.parse_args(["--update_lr", "0.4"])
        Namespace(update_lr=0.4, k_qry=15)
    """
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    for same in alias_groups(aliases):  # one option (the first one's dest) for each group
        a = same[0]
        kw = _kind(hints[a.fields[0]], store_true=True)
        if kw is None:
            raise TypeError(f"alias {a.flag}: field {a.fields[0]} has no command-line form")
        if a.choices is not None:
            kw["choices"] = list(a.choices)
        flags = [b.flag for b in same]
        flags += [f.replace("_", "-") for f in flags if dashed and "_" in f]
        parser.add_argument(*flags, dest=a.dest, default=a.default,
                            help=_help(alias_help(docs, a), alias_default(a, reference)), **kw)


def option_values(args: argparse.Namespace, config_cls: type[Any] | None = None,
                  aliases: Iterable[Alias] = (), *,
                  only: Sequence[str] | None = None) -> dict[str, Any]:
    """``{field: value}`` of the options given (not ``None``): the aliases' (in table order, a
    later one winning), then the fields' own options of ``config_cls`` (``only`` those; an
    option of its own wins over an alias).

    Example:
        >>> from metakd.recipes import MetaLSTMConfig
        >>> args = argparse.Namespace(n_eval=7, shots=None, ways=20)
        >>> option_values(args, MetaLSTMConfig, [Alias("--n-eval", ("queries", "test_queries"))])
        {'queries': 7, 'test_queries': 7, 'ways': 20}
    """
    out: dict[str, Any] = {}
    for a in aliases:
        value = getattr(args, a.dest, None)
        if value is not None:
            out.update(dict.fromkeys(a.fields, value))
    if config_cls is not None:
        for f in dataclasses.fields(config_cls):
            value = getattr(args, f.name, None)
            if value is not None and (only is None or f.name in only):
                out[f.name] = value
    return out


OPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("dataset", "root", "download", "ways", "shots", "queries", "test_queries",
             "image_size", "rotations", "augment", "pre_augment", "val_split", "val_holdout",
             "batch_size", "train_batches", "hard_tasks", "hard_task_mode", "hard_task_others",
             "hard_task_batch"),
    "model": ("model", "arch", "model_kwargs", "hidden_size", "input_size", "bn_momentum",
              "bn_eps", "gate_feedback", "attention", "attention_softmax", "attention_chunk",
              "temperature_init", "learn_temperature", "freeze_bn", "pretrained",
              "pretrained_checkpoint", "variant", "phase"),
    "inner loop": ("inner_lr", "inner_steps", "test_inner_steps", "first_order",
                   "inner_loss_reduction", "base_lr", "update_step", "test_update_step",
                   "epochs", "test_epochs", "scale_grads"),
    "outer loop": ("meta_lr", "meta_lr1", "meta_lr2", "meta_batch_size", "steps", "lr_schedule",
                   "clip_grad_value", "grad_clip", "weight_decay", "lr_milestones", "lr_gamma",
                   "lr_step", "lr", "momentum", "nesterov", "milestones", "gamma",
                   "warmup_epochs", "warmup_lr", "min_lr", "recipe", "pre_lr", "pre_epochs",
                   "pre_batch_size", "pre_lr_step", "pre_lr_gamma", "pre_weight_decay"),
    "distillation": ("teacher", "teacher_arch", "teacher_checkpoint", "distill", "gda",
                     "temperature", "trade_lambda", "kd_reduction", "schedule", "inner_kd",
                     "teacher_adapt", "teacher_inner_steps", "ce_weight", "kd_weight",
                     "dkd_alpha", "dkd_beta", "fisher_rao_weight", "sinkhorn_weight",
                     "sinkhorn_reduction",
                     "threshold", "conf_clamp", "guard", "debias", "teacher_temperature"),
    "run": ("val_every", "val_tasks", "test_tasks", "test_seed", "fs_every", "fs_tasks", "seed",
            "out_dir", "max_seconds", "device", "backend", "compile", "amp", "channels_last",
            "checkpoint_every", "fresh", "override", "no_progress", "debug", "tf32",
            "cudnn_benchmark", "pin_memory"),
}
"""The group of each option in ``metakd train METHOD --help``, by config field (or ``dest``);
an option of no group is listed under the method's own options."""

_DEFAULT = re.compile(r"\s*\(default[^()]*(?:\([^()]*\)[^()]*)*\)")


def finish_help(parser: argparse.ArgumentParser, config: Any, title: str) -> None:
    """Make ``parser``'s help show what runs: each config option's default is the value of
    ``config`` (the config ``paper(dataset, ways, shots)`` builds for the data set given), in
    plain text, and the options are grouped by :data:`OPTION_GROUPS` (the rest under
    ``title``).

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> p = argparse.ArgumentParser()
        >>> _ = p.add_argument("--inner-lr", dest="inner_lr", type=float,
        ...                    help="``alpha`` (default: the paper's)")
        >>> finish_help(p, MAMLConfig.paper("omniglot", 5, 1), "maml options")
        >>> [a.help for a in p._actions if a.dest == "inner_lr"]
        ['alpha (default: 0.4)']
    """
    fields = {f.name for f in dataclasses.fields(config)} if dataclasses.is_dataclass(config) \
        else set()
    groups = {name: parser.add_argument_group(name) for name in OPTION_GROUPS}
    own = parser.add_argument_group(title)
    where = {dest: name for name, dests in OPTION_GROUPS.items() for dest in dests}
    for container in list(parser._action_groups):
        if container in groups.values() or container is own:
            continue
        for action in list(container._group_actions):
            if action.dest == "help":
                continue
            if action.help and action.help is not argparse.SUPPRESS:
                text = plain(action.help)
                if action.dest in fields:
                    value = shown(getattr(config, action.dest)).replace("%", "%%")
                    text = _DEFAULT.sub("", text).rstrip(". ") + f" (default: {value})"
                action.help = text
            target = groups[where[action.dest]] if action.dest in where else own
            container._group_actions.remove(action)
            target._group_actions.append(action)
    parser._action_groups = [g for g in parser._action_groups
                             if g._group_actions or g.title not in (*OPTION_GROUPS, title)]
