"""What :func:`metakd.recipes.run` checks before it changes anything in a run folder.

- :func:`check_device`: the device exists on this machine.
- :func:`check_out_dir`: the run folder is a folder, writable, and not an input of the same
  call (a teacher or pre-trained run, the data set's folder), nor one that contains an input.
- :func:`resume_differences`: the options that differ from the run being resumed; only those
  in :data:`MAY_CHANGE_ON_RESUME` may change, unless the caller overrides.
- :func:`move_aside`: ``--fresh`` keeps the old run as ``R.old-N/``.
- :func:`apply_hyperparameters`: under an override, the optimiser takes the new learning
  rates and other hyper-parameters after its state was restored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from metakd.engine.errors import InputError, RunEnvironmentError, UsageError

__all__ = [
    "INPUT_FIELDS",
    "MAY_CHANGE_ON_RESUME",
    "apply_hyperparameters",
    "check_checkpoint_fits",
    "check_device",
    "check_out_dir",
    "check_resume",
    "hyperparameters",
    "move_aside",
    "resume_differences",
    "versions",
]

MAY_CHANGE_ON_RESUME = frozenset({"steps", "max_seconds", "val_every", "device", "out_dir"})
"""Config fields a resumed run may change without ``--override``: the training length, the
time budget, the validation period, the device and the folder's own path (the log and
checkpoint periods and progress bars are not config fields)."""

INPUT_FIELDS = ("teacher", "pretrained", "root", "meta_learner")
"""Config fields that name files or folders a run reads (never its own output folder)."""

log = logging.getLogger(__name__)


def versions() -> dict[str, Any]:
    """What ran: metakd, torch and Python versions, and the git commit of a source checkout.

    Example:
        >>> sorted(versions())
        ['git_commit', 'metakd', 'python', 'torch']
    """
    from metakd._version import __version__

    commit = None
    source = Path(__file__).resolve().parents[2]  # the checkout holding metakd/
    if (source / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"],
                                 capture_output=True, text=True, timeout=5, check=False)
            if out.returncode == 0:
                commit = out.stdout.strip()
                dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain",
                                        "--untracked-files=no"], capture_output=True, text=True,
                                       timeout=5, check=False)
                if dirty.returncode == 0 and dirty.stdout.strip():
                    commit += " (with uncommitted changes)"
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"metakd": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "git_commit": commit}


def check_device(device: Any) -> None:
    """Refuse a device this machine does not have, before anything is built.

    Raises:
        RunEnvironmentError: CUDA (or a CUDA index) or MPS asked for and not available.

    Example:
        >>> check_device("cpu")
    """
    name = str(device)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RunEnvironmentError(f"--device {name}: this machine has no CUDA device "
                                      "(torch.cuda.is_available() is False); use --device cpu")
        index = name.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise RunEnvironmentError(f"--device {name}: this machine has "
                                      f"{torch.cuda.device_count()} CUDA device(s)")
    elif name.startswith("mps") and not torch.backends.mps.is_available():
        raise RunEnvironmentError(f"--device {name}: MPS is not available here; use --device cpu")


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_out_dir(cfg: Any) -> None:
    """The run folder can be written and is not (and does not hold) an input of the run.

    Raises:
        UsageError: ``out_dir`` is a file, or it is (or contains) the teacher, the pre-trained
            run or the data set's folder.
        RunEnvironmentError: ``out_dir`` (or the nearest existing parent) is not writable.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> check_out_dir(MAMLConfig(out_dir="runs/x"))
    """
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out-dir {out} is a file, not a folder; give a folder for the run")
    resolved = out.resolve()
    for name in INPUT_FIELDS:
        value = getattr(cfg, name, None)
        if not value:
            continue
        path = Path(str(value)).resolve()
        if _inside(path, resolved):
            raise UsageError(f"--out-dir {out} would hold the run's own output, but it is or "
                             f"contains the {name} {value}; give another --out-dir")
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        raise RunEnvironmentError(f"{probe} is not writable; choose another --out-dir")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def resume_differences(run_config: Mapping[str, Any], cfg: Any) -> list[str]:
    """The changed options of a resumed run, as ``name: old (run) vs new (now)`` lines.

    Fields of :data:`MAY_CHANGE_ON_RESUME` and fields the run's ``config.json`` lacks (added
    to the config class since) are not compared.

    Example:
        >>> from metakd.recipes import MAMLConfig
        >>> old = dataclasses.asdict(MAMLConfig(meta_lr=0.001))
        >>> resume_differences(old, MAMLConfig(meta_lr=0.01, steps=7))
        ['meta_lr: 0.001 (run) vs 0.01 (now)']
    """
    out = []
    for f in dataclasses.fields(cfg):
        if f.name in MAY_CHANGE_ON_RESUME or f.name not in run_config:
            continue
        old, new = run_config[f.name], _jsonable(getattr(cfg, f.name))
        if old != new:
            out.append(f"{f.name}: {old} (run) vs {new} (now)")
    return out


def move_aside(out: Path) -> Path:
    """Rename a run folder to the first free ``NAME.old-N`` beside it; returns the new path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     (Path(d) / "run").mkdir()
        ...     move_aside(Path(d) / "run").name
        'run.old-1'
    """
    n = 1
    while (target := out.with_name(f"{out.name}.old-{n}")).exists():
        n += 1
    os.replace(out, target)
    return target


def check_resume(method: str, cfg: Any, out: Path, override: bool) -> None:
    """Refuse to resume a run of another method, or with changed options unless ``override``.

    Raises:
        UsageError: ``out`` holds a run of another method, or one trained with other options
            (the message lists each difference, from :func:`resume_differences`).
        InputError: its ``config.json`` is not a JSON object.
    """
    path = out / "config.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}); move the folder aside or give "
                         "--fresh") from None
    if not isinstance(previous, dict):
        raise InputError(f"{path} does not hold a config; move the folder aside or give --fresh")
    name = previous.get("method", "maml")  # run folders made before the registry: MAML
    if name != method:
        raise UsageError(f"{out} holds a {name!r} run; give another --out-dir, or --fresh to "
                         "start afresh (the old run is kept as a .old-N folder)")
    differences = resume_differences(previous, cfg)
    if differences and not override:
        raise UsageError(f"{out} was trained with other options; resuming would mix them: "
                         + "; ".join(differences)
                         + ". Give the run's values, --override to continue with the new ones, "
                           "or --fresh")
    if differences:
        log.warning("--override: resuming %s with %s", out, "; ".join(differences))


def check_checkpoint_fits(learner: torch.nn.Module, path: Path) -> None:
    """Load ``path``'s weights into a copy of ``learner``: the resume will work.

    Raises:
        InputError: the checkpoint is unreadable, or its weights do not fit (the first size
            mismatch, missing or unexpected key).
    """
    from metakd.engine import load_checkpoint

    state = load_checkpoint(path)
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict):
        raise InputError(f"{path} is not a metakd checkpoint (no 'model' state); move the "
                         "folder aside or give --fresh")
    try:
        copy.deepcopy(learner).load_state_dict(model)
    except (RuntimeError, KeyError, ValueError) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "size mismatch" in ln or "Missing" in ln
                       or "Unexpected" in ln), lines[0] if lines else type(e).__name__)
        raise InputError(f"{path} does not fit the model built from these options ({detail}); "
                         "resume with the run's options or give --fresh") from None


def hyperparameters(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimiser's hyper-parameters per group (everything but ``params``)."""
    return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: Any,
                          fresh: Sequence[Mapping[str, Any]]) -> None:
    """Give a restored optimiser the hyper-parameters of a freshly built one.

    A learning rate keeps the factor the schedule had reached: the restored ``lr`` over its
    ``initial_lr`` (1 without a schedule) times the new initial rate; the scheduler's
    ``base_lrs`` become the new rates.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(1))
        >>> opt = torch.optim.SGD([w], lr=0.1)
        >>> apply_hyperparameters(opt, None, [{"lr": 0.5, "momentum": 0.0}])
        >>> opt.param_groups[0]["lr"]
        0.5
    """
    for group, new in zip(optimizer.param_groups, fresh):
        factor = 1.0
        if group.get("initial_lr"):
            factor = group["lr"] / group["initial_lr"]
        for key, value in new.items():
            if key not in ("lr", "initial_lr"):
                group[key] = value
        if "lr" in new:
            base = new.get("initial_lr", new["lr"])
            group["lr"] = base * factor
            if "initial_lr" in group:
                group["initial_lr"] = base
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
