"""The method registry: each method registers its config, how to build its objects, its options.

A *method* (MAML, PMAML, Meta-Transfer Learning, Meta-LSTM, Meta-Baseline...) is three things:

- a **config**: a dataclass whose defaults are the paper's, with a
  ``paper(dataset, ways, shots, **overrides)`` classmethod giving the reference settings of a
  data set and episode shape. It has the fields the shared plumbing reads
  (:data:`REQUIRED_FIELDS`); everything else is the method's own.
- a **build**: ``build(cfg) -> Parts``, the objects of a run (nothing trained yet).
- optionally, other names of its options (``aliases``: an original project's, see
  :class:`metakd.recipes.options.Alias`; the options themselves are generated from the
  config's fields and their ``Attributes:`` entries), ``add_arguments`` for options that are
  not config fields, and ``load_weights``, which puts a run folder's weights into a freshly
  built :class:`Parts` (by default ``load_state_dict``; MAML replaces its head when a run is
  tested at another number of ways).

:func:`metakd.recipes.run` trains any registered config; :func:`metakd.recipes.load_run` reads
back any run folder, because its ``config.json`` names the method.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, overload

import torch
from torch import nn

if TYPE_CHECKING:
    from metakd.engine import EvalResult
    from metakd.recipes.options import Alias

__all__ = [
    "REQUIRED_FIELDS",
    "Method",
    "Parts",
    "get_method",
    "method_of",
    "methods",
    "register",
    "unregister",
]

REQUIRED_FIELDS: tuple[str, ...] = (
    "dataset", "root", "ways", "shots", "test_queries", "test_tasks",
    "steps", "val_every", "seed", "out_dir", "max_seconds", "device",
)
"""Config fields the shared plumbing reads: data set and test episode shape, training length,
validation period, seed, run folder, time budget and device."""

EvalFn = Callable[..., "EvalResult"]
LoadWeightsFn = Callable[["Parts", Mapping[str, torch.Tensor], Any, Any], None]
BuildFn = TypeVar("BuildFn", bound=Callable[[Any], "Parts"])

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_METHODS: dict[str, Method] = {}


@dataclass
class Parts:
    """The objects of one run, as a method's ``build(cfg)`` returns them (nothing trained).

    Attributes:
        learner: the module :func:`metakd.engine.fit` trains and checkpoints (a meta-learner
            such as :class:`metakd.meta.MAMLWrapper`, or the model itself).
        model: the backbone inside ``learner`` (what a later run reuses as a teacher or an
            initialisation).
        train_data: an endless stream of batches (``TaskBatch`` episodes or ``(x, y)``
            minibatches) with ``state_dict``/``load_state_dict`` so a resumed run continues it.
        optimizer: the optimiser over ``learner``'s trainable parameters.
        val_data: a fixed set of validation batches, or ``None`` (no model selection).
        test_data: a fixed set of test episodes, or ``None`` (the run is not tested).
        scheduler: a learning-rate scheduler stepped once per step, or ``None``.
        callbacks: step-end callbacks of ``fit`` (their state is checkpointed).
        loss_fn: the training objective ``loss_fn(learner, batch, step) -> (loss, metrics)``,
            or ``None`` for ``fit``'s default (``meta_loss`` for episodes, cross-entropy for
            ``(x, y)`` minibatches).
        clip_grad_norm: clip the global gradient norm to this value.
        clip_grad_value: clip every gradient entry to ``[-v, v]``.
        eval_fn: ``eval_fn(learner, data, *, device, progress) -> EvalResult`` to test with
            instead of :func:`metakd.engine.evaluate` (for example prototype classification
            of a model trained on minibatches).
        steps: the training length when the build derives it (for example epochs times the
            batches of an epoch); ``None``: the config's ``steps``.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(4, 3)
        >>> parts = Parts(learner=net, model=net, train_data=[],
        ...               optimizer=torch.optim.SGD(net.parameters(), lr=0.1))
        >>> parts.val_data is None, parts.callbacks
        (True, [])
    """

    learner: nn.Module
    model: nn.Module
    train_data: Iterable[Any]
    optimizer: torch.optim.Optimizer
    val_data: Iterable[Any] | None = None
    test_data: Iterable[Any] | None = None
    scheduler: Any = None
    callbacks: list[Any] = field(default_factory=list)
    loss_fn: Callable[..., Any] | None = None
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    eval_fn: EvalFn | None = None
    steps: int | None = None


@dataclass(frozen=True)
class Method:
    """A registered method (see :func:`register`).

    Attributes:
        name: the registry name, used by ``metakd train NAME`` and in ``config.json``.
        config_cls: the config dataclass (paper defaults, ``paper(...)`` classmethod).
        build: ``build(cfg) -> Parts``.
        describe: one line for ``metakd methods`` and ``metakd train --help``.
        title: the display name (plot titles).
        step_name: what one training step is called in reports (``"meta-iterations"``).
        add_arguments: ``add_arguments(parser)`` adding options of ``metakd train NAME``
            that are not config fields (every config field gets its option from
            :func:`metakd.recipes.options.add_config_arguments`); ``None``: none.
        aliases: other names of config fields on ``metakd train NAME`` (an original
            project's, :class:`metakd.recipes.options.Alias`).
        load_weights: ``load_weights(parts, state_dict, trained_cfg, cfg)`` putting a run's
            weights into parts built from ``cfg`` (the trained config with overrides);
            ``None``: ``parts.learner.load_state_dict(state_dict)``.
        task: ``task(cfg) -> str``, what the run is tested on, for reports (for example
            ``"100-class classification"``); ``None``: ``"{ways}-way {shots}-shot"``.
        check: ``check(cfg)`` raising ``ValueError`` with a one-line reason when ``cfg``
            cannot be trained (for example a teacher of another episode shape); called by
            :func:`metakd.recipes.run` before anything is built, not when a run is read back.
    """

    name: str
    config_cls: type[Any]
    build: Callable[[Any], Parts]
    describe: str = ""
    title: str = ""
    step_name: str = "steps"
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    aliases: tuple[Alias, ...] = ()
    load_weights: LoadWeightsFn | None = None
    task: Callable[[Any], str] | None = None
    check: Callable[[Any], None] | None = None

    def task_of(self, cfg: Any) -> str:
        """What a run of this method with config ``cfg`` is tested on, for reports.

        Example:
            >>> from metakd.recipes import MAMLConfig
            >>> get_method("maml").task_of(MAMLConfig(ways=20, shots=5))
            '20-way 5-shot'
        """
        if self.task is not None:
            return self.task(cfg)
        return f"{cfg.ways}-way {cfg.shots}-shot"


def _check_config_cls(name: str, config_cls: type[Any]) -> None:
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"method {name!r}: the config must be a dataclass, got {config_cls!r}")
    if not callable(getattr(config_cls, "paper", None)):
        raise TypeError(f"method {name!r}: {config_cls.__name__} needs a classmethod "
                        "paper(dataset, ways, shots, **overrides)")
    names = {f.name for f in dataclasses.fields(config_cls)}
    missing = [f for f in REQUIRED_FIELDS if f not in names]
    if missing:
        raise TypeError(f"method {name!r}: {config_cls.__name__} lacks the fields {missing} "
                        "that every run needs (see metakd.recipes.REQUIRED_FIELDS)")
    no_default = [f.name for f in dataclasses.fields(config_cls)
                  if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if no_default:
        raise TypeError(f"method {name!r}: every field of {config_cls.__name__} needs a default "
                        f"(the paper's); {no_default} have none")


@overload
def register(name: str, config_cls: type[Any], build: None = None, *, describe: str | None = None,
             title: str | None = None, step_name: str = "steps",
             add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
             aliases: Iterable[Alias] = (),
             load_weights: LoadWeightsFn | None = None,
             task: Callable[[Any], str] | None = None,
             check: Callable[[Any], None] | None = None,
             replace: bool = False) -> Callable[[BuildFn], BuildFn]: ...


@overload
def register(name: str, config_cls: type[Any], build: Callable[[Any], Parts], *,
             describe: str | None = None, title: str | None = None, step_name: str = "steps",
             add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
             aliases: Iterable[Alias] = (),
             load_weights: LoadWeightsFn | None = None,
             task: Callable[[Any], str] | None = None,
             check: Callable[[Any], None] | None = None, replace: bool = False) -> Method: ...


def register(
    name: str,
    config_cls: type[Any],
    build: Callable[[Any], Parts] | None = None,
    *,
    describe: str | None = None,
    title: str | None = None,
    step_name: str = "steps",
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    aliases: Iterable[Alias] = (),
    load_weights: LoadWeightsFn | None = None,
    task: Callable[[Any], str] | None = None,
    check: Callable[[Any], None] | None = None,
    replace: bool = False,
) -> Any:
    """Register a method: its config class, its build function and how it loads and parses.

    Usable as a call (``register("maml", MAMLConfig, build)``, returns the :class:`Method`) or
    as a decorator of the build function (``@register("maml", MAMLConfig)``, returns the
    function unchanged).

    Args:
        name: lower-case registry name (``metakd train NAME``; stored in ``config.json``).
        config_cls: a dataclass with the fields of :data:`REQUIRED_FIELDS`, a default for
            every field (the paper's) and a ``paper(dataset, ways, shots, **overrides)``
            classmethod.
        build: ``build(cfg) -> Parts``.
        describe: one line for ``metakd methods``; default: the first line of the config's
            docstring.
        title: display name; default ``name.upper()``.
        step_name: what a training step is called in reports.
        add_arguments: see :class:`Method`.
        aliases: see :class:`Method`.
        load_weights: see :class:`Method`.
        task: see :class:`Method`.
        check: see :class:`Method`.
        replace: allow registering a name again (the new method replaces the old one).

    Raises:
        ValueError: a bad or already registered ``name``.
        TypeError: ``config_cls`` is not a config dataclass as described.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class EchoConfig:
        ...     '''Echo: a config with the shared fields.'''
        ...     dataset: str = "omniglot"
        ...     root: str | None = None
        ...     ways: int = 5
        ...     shots: int = 1
        ...     test_queries: int = 15
        ...     test_tasks: int = 600
        ...     steps: int = 100
        ...     val_every: int = 50
        ...     seed: int = 0
        ...     out_dir: str = "runs/echo"
        ...     max_seconds: float | None = None
        ...     device: str = "cpu"
        ...     @classmethod
        ...     def paper(cls, dataset="omniglot", ways=5, shots=1, **overrides):
        ...         return cls(dataset=dataset, ways=ways, shots=shots, **overrides)
        >>> @register("echo", EchoConfig, replace=True)
        ... def build_echo(cfg):
        ...     raise NotImplementedError
        >>> get_method("echo").describe
        'Echo: a config with the shared fields.'
        >>> unregister("echo")
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"method name {name!r}: use lower-case letters, digits, '-' or '_'")
    _check_config_cls(name, config_cls)

    def decorator(fn: BuildFn) -> BuildFn:
        _add(fn)
        return fn

    def _add(fn: Callable[[Any], Parts]) -> Method:
        if not callable(fn):
            raise TypeError(f"method {name!r}: build must be callable, got {fn!r}")
        if name in _METHODS and not replace:
            raise ValueError(f"a method named {name!r} is already registered")
        doc = (config_cls.__doc__ or "").strip()
        method = Method(
            name=name, config_cls=config_cls, build=fn,
            describe=describe if describe is not None else (doc.splitlines()[0] if doc else ""),
            title=title or name.upper(), step_name=step_name,
            add_arguments=add_arguments, aliases=tuple(aliases), load_weights=load_weights,
            task=task, check=check,
        )
        _METHODS[name] = method
        return method

    if build is None:
        return decorator
    return _add(build)


def unregister(name: str) -> None:
    """Remove a registered method (tests and plug-ins that register temporary methods)."""
    _METHODS.pop(name, None)


def methods() -> list[Method]:
    """The registered methods, in registration order.

    Example:
        >>> "maml" in [m.name for m in methods()]
        True
    """
    return list(_METHODS.values())


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ValueError: ``name`` is not registered (the message lists the registered names).

    Example:
        >>> get_method("maml").config_cls.__name__
        'MAMLConfig'
    """
    try:
        return _METHODS[name]
    except KeyError:
        known = ", ".join(sorted(_METHODS)) or "(none)"
        raise ValueError(f"method {name!r} is not registered; registered methods: {known}") \
            from None


def method_of(cfg: Any) -> Method:
    """The registered method whose config class is ``type(cfg)``.

    Raises:
        ValueError: no method, or several methods, use that config class.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> method_of(MAMLConfig()).name
        'maml'
    """
    found = [m for m in _METHODS.values() if type(cfg) is m.config_cls]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"no registered method uses {type(cfg).__name__}; register it with "
                         "metakd.recipes.register(name, config_cls, build)")
    raise ValueError(f"methods {[m.name for m in found]} share {type(cfg).__name__}; "
                     "name the method (run(cfg, method=NAME))")
