"""The experiment plumbing of every method: train, select, test, report; and reading runs back.

:func:`run` does, for any registered config: ``torch.distributed`` set-up (under torchrun),
``config.json`` (naming the method), :func:`metakd.engine.fit`, reloading ``best.pt`` when
validation ran, the test (95% interval), ``results.json`` and ``learning_curve.png``.
:func:`load_run` reads a run folder back as a :class:`Run` ready to evaluate or fine-tune,
on the trained episode shape or another one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from torch import nn

from metakd.engine.cpu import keep_freed_memory
from metakd.engine.cuda import CudaSettings, apply_cuda_settings
from metakd.engine.runfolder import RunFolder
from metakd.engine.trainer import fit
from metakd.recipes.preflight import (
    apply_hyperparameters,
    check_checkpoint_fits,
    check_device,
    check_out_dir,
    check_resume,
    hyperparameters,
    move_aside,
    versions,
)
from metakd.recipes.registry import Method, Parts, get_method, method_of
from metakd.recipes.validate import check_values

__all__ = ["Run", "load_run", "read_config", "run", "write_json"]

log = logging.getLogger(__name__)

LEGACY_METHOD = "maml"
"""The method of a run folder whose ``config.json`` has no ``"method"`` key (runs made before
the registry, all MAML)."""

RUN_FILES = "config.json, last.pt and, when validation ran, best.pt"

RUNTIME_KEY = "runtime"
"""The ``config.json`` entry recording the run's CUDA settings (:mod:`metakd.engine.cuda`)."""

VERSIONS_KEY = "versions"
"""The ``config.json`` entry recording what ran the latest call (metakd, torch, Python and the
git commit of a source checkout); not a config field."""


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the indented JSON text of metakd's run files."""
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file, ``fsync``, rename).

    Example:
        >>> write_json("results.json", {"accuracy": 0.5}).read_text()
        '{\\n  "accuracy": 0.5\\n}\\n'
    """
    from metakd.engine.runfolder import atomic_write

    return atomic_write(path, json_bytes(obj))


def _config_dict(method: Method, cfg: Any) -> dict[str, Any]:
    return {"method": method.name, **dataclasses.asdict(cfg)}


def read_config(run_dir: str | os.PathLike[str]) -> tuple[Method, Any]:
    """The method and the config of a run folder, from its ``config.json``.

    A ``config.json`` without ``"method"`` (runs made before the registry) is read as
    ``"maml"``. Keys the config class no longer has are dropped with a warning; fields the
    file lacks take their defaults.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``config.json``.
        ValueError: the file is not valid JSON, or its method is not registered.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> _ = write_json("old/config.json", {"ways": 20, "shots": 5})  # no "method" key
        >>> method, cfg = read_config("old")
        >>> method.name, cfg.ways, cfg.shots, cfg == MAMLConfig(ways=20, shots=5)
        ('maml', 20, 5, True)
    """
    folder = Path(run_dir)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a run folder: no config.json (a run folder of "
                                f"`metakd train` or `metakd demo` holds {RUN_FILES})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a config (a JSON object)")
    data.pop(VERSIONS_KEY, None)
    data.pop(RUNTIME_KEY, None)
    name = data.pop("method", LEGACY_METHOD)
    try:
        method = get_method(name)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    names = {f.name for f in dataclasses.fields(method.config_cls)}
    dropped = sorted(k for k in data if k not in names)
    if dropped:
        log.warning("%s: ignoring %s, which %s no longer has", path, dropped,
                    method.config_cls.__name__)
    return method, method.config_cls(**{k: v for k, v in data.items() if k in names})


def _evaluate(parts: Parts, data: Any, device: Any, progress: bool) -> Any:
    if parts.eval_fn is not None:
        return parts.eval_fn(parts.learner, data, device=device, progress=progress)
    from metakd.engine import evaluate

    return evaluate(parts.learner, data, device=device, progress=progress, loss_fn=parts.loss_fn)


def _dataset_name(cfg: Any) -> str:
    return cfg.dataset if cfg.root else f"{cfg.dataset} (bundled)"


def run(cfg: Any, progress: bool = True, resume: bool = True, *,
        method: str | None = None, checkpoint_every: int = 100,
        override: bool = False, cuda: CudaSettings | None = None) -> dict[str, Any]:
    """Train a registered method's config, select on validation, test, and write the results.

    Writes into ``cfg.out_dir``: ``config.json`` (``{"method": NAME, ...fields}``), and from
    :func:`metakd.engine.fit` ``last.pt``, ``best.pt`` (when validating) and ``log.jsonl``;
    then ``results.json`` and ``learning_curve.png``. With validation, the test uses the best
    validation checkpoint, else the last weights. Under torchrun every rank trains its slice
    of each batch; rank 0 alone writes files, tests and reports.

    Args:
        cfg: a config of a registered method (for example :class:`MAMLConfig`).
        progress: show progress bars: training, testing, and those the data sets show
            while they are decoded into the cache (:func:`metakd.engine.progress_bars`).
        resume: continue from ``out_dir/last.pt`` if it exists (with the options it was
            trained with: see ``override``); ``False`` moves an existing run in ``out_dir``
            aside to ``OUT_DIR.old-N`` and starts afresh.
        method: the method's name, needed only when several methods share a config class.
        checkpoint_every: write ``last.pt`` every this many steps (and at the end).
        override: resume even though options other than those of
            :data:`metakd.recipes.preflight.MAY_CHANGE_ON_RESUME` changed: the new values are
            recorded in ``config.json`` and used (the optimiser takes the new learning rates).
        cuda: TF32, cuDNN autotuning and pinned-memory copies for a run on a CUDA device
            (:class:`metakd.engine.cuda.CudaSettings`), recorded under ``runtime`` in
            ``config.json``; nothing on a CPU. A run on a CPU keeps the memory its steps
            free in the C heap (:func:`metakd.engine.keep_freed_memory`), recorded there as
            ``keep_freed_memory``.

    Returns:
        On rank 0 the content of ``results.json``: ``method``, ``dataset``, ``episode``,
        ``steps``, ``step_name``, ``stopped_early``, ``selected`` (the checkpoint tested),
        ``test`` (``EvalResult.as_dict(values=True)``, the per-episode accuracies under
        ``values``; ``None`` without test data), ``test_str`` and
        ``best_val``. On other ranks ``{"rank", "steps", "stopped_early"}``.

    Nothing in ``out_dir`` changes until the call has checked that it can run (the values,
    the device, the folder, the checkpoint it resumes); ``config.json`` changes together with
    the first checkpoint of the call, and a failure leaves the folder's files as they were
    (see :mod:`metakd.engine.runfolder`).

    Raises:
        UsageError: a value cannot run (:func:`metakd.recipes.validate.check_values`);
            ``out_dir`` is a file or an input of the run; it holds a run of another method or
            one trained with other options.
        InputError: the checkpoint to resume is unreadable or does not fit.
        RunEnvironmentError: no such device; the folder cannot be written.
        NonFiniteLossError: training diverged (no result is written).

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> cfg = MAMLConfig(steps=1, meta_batch_size=2, test_tasks=2, out_dir="tiny",
        ...                  compile="off")
        >>> res = run(cfg, progress=False)
        >>> res["method"], res["steps"], res["test"]["episodes"]
        ('maml', 1, 2)
    """
    from metakd.engine import progress_bars

    with progress_bars(progress):  # the data the build decodes into the cache too
        return _run(cfg, progress, resume, method, checkpoint_every, override,
                    cuda or CudaSettings())


def _run(cfg: Any, progress: bool, resume: bool, method: str | None, checkpoint_every: int,
         override: bool, cuda: CudaSettings) -> dict[str, Any]:
    import torch.distributed as dist

    from metakd.engine import init_distributed, shutdown_distributed

    spec, out, resuming = _preflight(cfg, method, resume, override)
    # before the first step: on the CPU the memory a step frees is kept for the next
    runtime = {**cuda.as_dict(), "keep_freed_memory": keep_freed_memory(cfg.device)}
    own_group = not (dist.is_available() and dist.is_initialized())
    rank, world_size = init_distributed()  # torchrun: each rank takes a slice of every batch
    if world_size > 1 and cfg.device == "cuda":
        cfg = dataclasses.replace(cfg, device=f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    parts = spec.build(cfg)
    if resuming:  # the checkpoint must load before anything in the folder changes
        check_checkpoint_fits(parts.learner, out / "last.pt")
    steps = parts.steps if parts.steps is not None else cfg.steps
    _warn_if_no_validation(spec, cfg, parts, steps)
    fresh_groups = hyperparameters(parts.optimizer)
    folder, created = _open_folder(spec, cfg, out, rank, resume, runtime)
    on_resume = ((lambda: apply_hyperparameters(parts.optimizer, parts.scheduler, fresh_groups))
                 if override else None)
    pin = apply_cuda_settings(cuda, cfg.device)  # once, before the first step
    try:
        result = fit(parts.learner, parts.train_data, parts.optimizer, steps,
                     loss_fn=parts.loss_fn, callbacks=parts.callbacks, val_data=parts.val_data,
                     eval_fn=parts.eval_fn,
                     val_every=cfg.val_every, scheduler=parts.scheduler,
                     clip_grad_norm=parts.clip_grad_norm, clip_grad_value=parts.clip_grad_value,
                     out_dir=folder, resume=resume, max_seconds=cfg.max_seconds,
                     progress=progress, device=cfg.device, checkpoint_every=checkpoint_every,
                     pin_memory=pin, on_resume=on_resume)
    except BaseException:
        if created and folder.commits == 0 and rank == 0:
            shutil.rmtree(out, ignore_errors=True)  # made by this call, holding nothing yet
        raise
    if world_size > 1 and own_group:
        shutdown_distributed()  # every rank is done training; leave the group together
    if rank != 0:  # rank 0 alone tests and writes the results
        return {"rank": rank, "steps": result.step, "stopped_early": result.stopped_early}
    return _test_and_report(spec, cfg, parts, out, result, progress)


def _preflight(cfg: Any, method: str | None, resume: bool,
               override: bool) -> tuple[Method, Path, bool]:
    """The method of ``cfg`` once everything that can be checked before the build is
    (values, device, folder, the run to resume); its run folder; whether it resumes."""
    spec = get_method(method) if method is not None else method_of(cfg)
    if not isinstance(cfg, spec.config_cls):
        raise ValueError(f"method {spec.name!r} takes a {spec.config_cls.__name__}, "
                         f"not a {type(cfg).__name__}")
    check_values(cfg)
    check_device(cfg.device)
    check_out_dir(cfg)
    if spec.check is not None:
        spec.check(cfg)  # e.g. a teacher that does not fit: refused before anything is built
    out = Path(cfg.out_dir)
    resuming = resume and (out / "last.pt").is_file()
    if resuming:
        check_resume(spec.name, cfg, out, override)
    elif resume and (out / "config.json").is_file():
        log.warning("%s has no checkpoint (its run stopped before the first one): starting "
                    "over", out)
    return spec, out, resuming


def _warn_if_no_validation(spec: Method, cfg: Any, parts: Parts, steps: int) -> None:
    if parts.val_data is None and cfg.val_every != type(cfg)().val_every \
            and 0 < cfg.val_every < steps:  # validations asked for, none possible
        log.warning("val_every=%s has no effect: this %s run has no validation data; the last "
                    "weights are tested", cfg.val_every, spec.name)


def _open_folder(spec: Method, cfg: Any, out: Path, rank: int, resume: bool,
                 runtime: dict[str, Any]) -> tuple[RunFolder, bool]:
    """The run folder, with ``config.json`` staged (rank 0), and whether this call made it
    (a ``--fresh`` start moves the previous run aside first)."""
    created = not out.exists()
    if rank == 0 and not resume and out.is_dir() and any(out.iterdir()):
        log.warning("--fresh: the previous run in %s is kept as %s", out, move_aside(out))
        created = True
    folder = RunFolder(out)
    if rank == 0:  # config.json changes with the first checkpoint of this call, not before
        folder.stage("config.json", json_bytes({**_config_dict(spec, cfg),
                                                VERSIONS_KEY: versions(),
                                                RUNTIME_KEY: runtime}))
        folder.remove(("results.json", "learning_curve.png"))
    return folder, created


def _test_and_report(spec: Method, cfg: Any, parts: Parts, out: Path, result: Any,
                     progress: bool) -> dict[str, Any]:
    from metakd.engine import load_checkpoint, plot_learning_curve

    selected = "last"
    if parts.val_data is not None and (out / "best.pt").exists():
        parts.learner.load_state_dict(load_checkpoint(out / "best.pt")["model"])
        selected = f"best validation (step {result.best_step})"
    test = None
    if parts.test_data is not None:
        test = _evaluate(parts, parts.test_data, cfg.device, progress)
    results = {
        "method": spec.name,
        "dataset": _dataset_name(cfg),
        "episode": spec.task_of(cfg),
        "steps": result.step,
        "step_name": spec.step_name,
        "stopped_early": result.stopped_early,
        "selected": selected,
        "test": test.as_dict(values=True) if test is not None else None,
        "test_str": str(test) if test is not None else "not tested",
        "best_val": result.best_val.as_dict() if result.best_val else None,
    }
    write_json(out / "results.json", results)
    if (out / "log.jsonl").is_file():
        plot_learning_curve(out / "log.jsonl", out / "learning_curve.png",
                            title=f"{spec.title} {spec.task_of(cfg)}, "
                                  f"{results['dataset']}: test {results['test_str']}")
    return results


@dataclass
class Run:
    """A run folder read back by :func:`load_run`: ready to evaluate or to train further.

    Attributes:
        config: the run's config, with the overrides given to :func:`load_run` applied and
            ``out_dir`` set to the folder read.
        method: the registered method's name.
        model: the backbone, with the run's weights.
        learner: the trained module (e.g. the ``MAMLWrapper`` around ``model``).
        parts: everything ``build(config)`` made (data, optimiser, ...); ``parts.learner``
            is ``learner``.
        folder: the run folder.
        checkpoint: the checkpoint file loaded.
        trained_config: the config as the run was trained (without the overrides).
    """

    config: Any
    method: str
    model: nn.Module
    learner: nn.Module
    parts: Parts
    folder: Path
    checkpoint: Path
    trained_config: Any

    def evaluate(self, progress: bool = False) -> Any:
        """Test ``learner`` on ``parts.test_data`` as :func:`run` and ``metakd eval`` do.

        Returns:
            :class:`metakd.engine.EvalResult` (mean accuracy and 95% interval).
        """
        if self.parts.test_data is None:
            raise ValueError(f"method {self.method!r} built no test data for {self.folder}")
        return _evaluate(self.parts, self.parts.test_data, self.config.device, progress)


def load_run(run_dir: str | os.PathLike[str], checkpoint: Literal["best", "last"] = "best",
             **overrides: Any) -> Run:
    """Read a run folder back: its config, and its model and learner with the trained weights.

    The method is the one ``config.json`` names (``"maml"`` for runs made before the
    registry); its ``build`` makes fresh objects from the config and the checkpoint's weights
    are loaded into them (``torch.load(weights_only=True)``).

    ``overrides`` change config fields before the build: to test a run on another data set
    (``dataset``, ``root``), another episode shape (``ways``, ``shots``, ``test_queries``),
    more episodes (``test_tasks``), another ``seed`` or ``device``. Changing ``dataset``
    without ``root`` resets ``root`` (the data set's default). At another number of ways the
    trained classifier cannot be reused: MAML then replaces the final linear layer of its head
    by a zero-initialised one with the new number of outputs and logs a warning (a zero head
    does not depend on the order of an episode's labels; see :mod:`metakd.recipes.weights`).

    Args:
        run_dir: the folder of a ``metakd train`` / ``metakd demo`` / :func:`run` run.
        checkpoint: ``"best"`` (``best.pt``, the best validation weights, or ``last.pt`` when
            the run did not validate) or ``"last"`` (``last.pt``).
        **overrides: config fields to change.

    Returns:
        A :class:`Run`.

    Raises:
        FileNotFoundError: ``run_dir`` is not a run folder (no ``config.json``, or no
            checkpoint yet).
        ValueError: the method is not registered, an override is not a config field, or the
            weights do not fit the model built.

    Example:
        >>> from metakd.recipes import MAMLConfig, run
        >>> cfg = MAMLConfig(steps=1, meta_batch_size=2, test_tasks=2, out_dir="tiny",
        ...                  compile="off")
        >>> res = run(cfg, progress=False)
        >>> r = load_run("tiny")
        >>> r.method, r.evaluate().mean == res["test"]["accuracy"]
        ('maml', True)
        >>> r20 = load_run("tiny", ways=20, shots=5)   # tested 20-way: a zero 20-way head
        >>> r20.model.head.out_features, r20.model.head.weight.abs().sum().item()
        (20, 0.0)
    """
    folder = Path(run_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a run folder: it does not exist (a run folder "
                                f"holds {RUN_FILES})")
    spec, trained = read_config(folder)
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint={checkpoint!r}: use 'best' or 'last'")
    ckpt = folder / "best.pt"
    if checkpoint == "last" or not ckpt.is_file():
        ckpt = folder / "last.pt"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{folder} has config.json but no {ckpt.name}: a finished run "
                                f"folder holds {RUN_FILES}")
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{unknown} are not fields of {spec.config_cls.__name__}")
    if "dataset" in overrides and "root" not in overrides \
            and overrides["dataset"] != trained.dataset:
        overrides["root"] = None
    cfg = dataclasses.replace(trained, **{"out_dir": str(folder), **overrides})

    from metakd.engine import load_checkpoint

    parts = spec.build(cfg)
    state = load_checkpoint(ckpt)["model"]
    what = str(ckpt)
    if spec.load_weights is not None:
        spec.load_weights(parts, state, trained, cfg)
    else:
        from metakd.recipes.weights import load_state

        load_state(parts.learner, state, what)
    return Run(config=cfg, method=spec.name, model=parts.model, learner=parts.learner,
               parts=parts, folder=folder, checkpoint=ckpt, trained_config=trained)
