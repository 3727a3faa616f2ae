"""Command-line options of a method, derived from its config dataclass.

``metakd train METHOD`` adds the options shared by every method itself; a method that does
not write its own ``add_arguments`` gets one option per remaining config field, typed from the
field's annotation, with the help text of the field in the config's ``Attributes:`` docstring
section and the config's default. Every option defaults to ``None`` (not given), so that
``paper(dataset, ways, shots, **given)`` keeps the paper's value of what the user left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["OPTION_GROUPS", "KeyValueAction", "add_config_arguments", "field_docs",
           "finish_help", "parse_value", "plain"]

_ENTRY = re.compile(r"^(?P<names>[A-Za-z_][\w]*(?:\s*,\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?:\s*(?P<text>.*)$")


def field_docs(config_cls: type[Any]) -> dict[str, str]:
    """``{field: text}`` from the ``Attributes:`` section of a Google-style class docstring.

    An entry may name several fields (``ways, shots: episode shape``); continuation lines are
    joined with spaces.

    Example:
        >>> class C:
        ...     '''A config.
        ...
        ...     Attributes:
        ...         lr: learning rate,
        ...             of Adam.
        ...         ways, shots: episode shape.
        ...     '''
        >>> field_docs(C)
        {'lr': 'learning rate, of Adam.', 'ways': 'episode shape.', 'shots': 'episode shape.'}
    """
    lines = inspect.cleandoc(config_cls.__doc__ or "").splitlines()
    out: dict[str, str] = {}
    current: list[str] = []
    indent: int | None = None
    inside = False
    for line in lines:
        stripped = line.strip()
        if not inside:
            inside = stripped == "Attributes:"
            continue
        if not stripped:
            continue
        level = len(line) - len(line.lstrip())
        if level == 0:  # the next section
            break
        match = _ENTRY.match(stripped)
        if match and (indent is None or level <= indent):
            indent = level
            current = [n.strip() for n in match["names"].split(",")]
            for n in current:
                out[n] = match["text"].strip()
        elif current:
            for n in current:
                out[n] = f"{out[n]} {stripped}".strip()
    return out


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


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type[Any],
                         skip: Sequence[str] = ()) -> list[str]:
    """Add one ``--field-name`` option per field of ``config_cls`` not in ``skip``.

    ``bool`` fields get ``--x``/``--no-x``; ``Literal`` fields get their choices; ``int``,
    ``float`` and ``str`` fields (optional or not) their type; ``dict`` fields a repeatable
    ``KEY=VALUE``; ``list``/``tuple`` fields one or more values. Fields of other types get no
    option. Every option defaults to ``None``.

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
        >>> add_config_arguments(p, Cfg)
        ['lr', 'schedule']
        >>> p.parse_args(["--lr", "0.5"])
        Namespace(lr=0.5, schedule=None)
    """
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    added: list[str] = []
    for f in dataclasses.fields(config_cls):
        if f.name in skip:
            continue
        tp = _unwrap_optional(hints.get(f.name, str))
        origin = typing.get_origin(tp)
        default = _default(f)
        text = docs.get(f.name, f.name.replace("_", " ")).rstrip(".")
        help_text = f"{text} (default: {default})".replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = list(typing.get_args(tp))
            kw.update(choices=choices, type=type(choices[0]))
        elif tp in (int, float, str):
            kw["type"] = tp
        elif tp is dict or origin is dict:
            kw.update(action=KeyValueAction, metavar="KEY=VALUE")
        elif origin in (list, tuple):
            inner = [a for a in typing.get_args(tp) if a is not Ellipsis]
            kw.update(nargs="+", type=inner[0] if inner and inner[0] in (int, float, str) else str)
        else:
            continue  # not expressible on the command line
        parser.add_argument(flag, **kw)
        added.append(f.name)
    return added


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
                     "threshold", "conf_clamp", "guard", "debias", "teacher_temperature"),
    "run": ("val_every", "val_tasks", "test_tasks", "test_seed", "fs_every", "fs_tasks", "seed",
            "out_dir", "max_seconds", "device", "backend", "compile", "amp", "channels_last",
            "checkpoint_every", "fresh", "override", "no_progress", "debug", "tf32",
            "cudnn_benchmark", "pin_memory"),
}
"""The group of each option in ``metakd train METHOD --help``, by config field (or ``dest``);
an option of no group is listed under the method's own options."""

_MARKUP = [(re.compile(r":(?:func|class|meth|mod|data|attr):`~?([^`]+)`"), r"\1"),
           (re.compile(r"``([^`]+)``"), r"\1"), (re.compile(r"`([^`]+)`"), r"\1")]


def plain(text: str) -> str:
    """Docstring markup out of a help text (``x``, :func:`x`, `x` become x).

    Example:
        >>> plain("``None``: the :func:`metakd.nn.create` default")
        'None: the metakd.nn.create default'
    """
    for pattern, repl in _MARKUP:
        text = pattern.sub(repl, text)
    return text


_DEFAULT = re.compile(r"\s*\(default[^()]*(?:\([^()]*\)[^()]*)*\)")


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) or "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return str(value)


def finish_help(parser: argparse.ArgumentParser, shown: Any, title: str) -> None:
    """Make ``parser``'s help show what runs: each config option's default is the value of
    ``shown`` (the config ``paper(dataset, ways, shots)`` builds for the data set given), in
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
    fields = {f.name for f in dataclasses.fields(shown)} if dataclasses.is_dataclass(shown) \
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
                    value = _shown(getattr(shown, action.dest)).replace("%", "%%")
                    text = _DEFAULT.sub("", text).rstrip(". ") + f" (default: {value})"
                action.help = text
            target = groups[where[action.dest]] if action.dest in where else own
            container._group_actions.remove(action)
            target._group_actions.append(action)
    parser._action_groups = [g for g in parser._action_groups
                             if g._group_actions or g.title not in (*OPTION_GROUPS, title)]
