"""The original few-shot code's configs and options, mapped onto the Meta-Baseline recipes.

Meta-Baseline (``yinboc/few-shot-meta-baseline``), W2S (``few_shot_leaerning``) and GDA
(``Few-shot Learning``) describe a run by a YAML file (already parsed here: the library does
not need PyYAML) and a few command-line options. :func:`from_original` turns both into a
:class:`ClassifierBaselineConfig` or :class:`MetaBaselineConfig`. **What the file says is
what runs**: an option overrides the file only when it is given (``None`` otherwise). GDA's
own scripts give their KD options argparse defaults that silently replace the file's values
(spec, section 4.5); here a file without a value gets the recipe's default, which is the value
that effectively runs in GDA's code.

Paths: a file's ``load_encoder`` / ``teacher_load`` (``<run>/epoch-last.pth`` or
``<run>/max-va.pth``, under ``OUT_PATH``) name a metakd run folder ``<out_root>/<run>`` and
its last or best checkpoint. ``--res_type`` and ``--teacher_res_type`` replace the encoder
names in them as the original scripts do; ``--teacher_meta_model`` switches the teacher from
the classifier run to the 1-shot Meta-Baseline run of the same encoder.

Encoder names (:func:`encoder_arch`): ``--res_type`` / ``--teacher_res_type`` are GDA's
names (:data:`metakd.interop.gda.ENCODERS`: ``resnet12`` is GDA's ResNet-12 *without*
max-pooling, metakd ``resnet12_gda``; ``resnet18`` / ``resnet36``, which only GDA's README
uses, are the ``_bottle`` networks); a YAML's ``model_args.encoder`` is Meta-Baseline's
(``resnet12`` with max-pooling, ``resnet12-wide``), or any metakd model name. Run folders and
the replaced paths use metakd's name, so runs of different networks never share a folder.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from metakd.recipes.baseline import ClassifierBaselineConfig, MetaBaselineConfig

__all__ = ["ORIGINAL_KEYS", "check_original", "dataset_name", "encoder_arch", "from_original",
           "launch_gpus", "read_original", "read_yaml", "run_folder"]

ORIGINAL_KEYS: dict[str, type | tuple[type, ...]] = {
    **{k: dict for k in ("train_dataset_args", "val_dataset_args", "fs_dataset_args",
                         "tval_dataset_args", "model_args", "teacher_model_args",
                         "optimizer_args", "kd_loss_config")},
    **{k: str for k in ("train_dataset", "val_dataset", "fs_dataset", "tval_dataset", "model",
                        "teacher_model", "optimizer", "load", "load_encoder", "teacher_load")},
    **{k: int for k in ("max_epoch", "save_epoch", "batch_size", "n_way", "n_shot", "n_query",
                        "train_batches", "ep_per_batch", "eval_fs_epoch")},
    **{k: bool for k in ("freeze_bn", "visualize_datasets", "_parallel")},
}
"""The keys of the original few-shot YAML configs (Meta-Baseline, W2S, GDA) and their types;
a file may also set any field of the recipe's config by its metakd name."""

_DATASETS = {"mini-imagenet": "miniimagenet", "tiered-imagenet": "tieredimagenet",
             "omniglot": "omniglot", "miniimagenet": "miniimagenet",
             "tieredimagenet": "tieredimagenet"}
#: ``kd_loss_config.loss_type`` -> (``distill``, ``gda``).
LOSS_TYPES = {"kd": ("kd", True), "dkd": ("dkd", True), "dkd_baseline": ("dkd", False),
              "aug_conf": ("aug_conf", True), "adapt_conf": ("adapt_conf", True),
              "kd_baseline": ("kd", False)}
_KD_KEYS = {"loss_weight": "kd_weight", "temperature": "temperature", "T": "temperature",
            "threshold": "threshold", "fisher_rao_lamda": "fisher_rao_weight",
            "sinkhorn_lamda": "sinkhorn_weight", "dkd_alpha": "dkd_alpha",
            "dkd_beta": "dkd_beta"}


def _field_types(stage: str) -> dict[str, type | tuple[type, ...]]:
    if stage == "test":  # test_few_shot.py's own keys
        return {"dataset": str, "dataset_args": dict}
    cls = ClassifierBaselineConfig if stage == "classifier" else MetaBaselineConfig
    out: dict[str, type | tuple[type, ...]] = {}
    for fd in dataclasses.fields(cls):
        default: Any = None
        if fd.default is not dataclasses.MISSING:
            default = fd.default
        elif fd.default_factory is not dataclasses.MISSING:
            default = fd.default_factory()
        if isinstance(default, bool):
            out[fd.name] = bool
        elif isinstance(default, (int, float)):
            out[fd.name] = (int, float) if isinstance(default, float) else int
        elif isinstance(default, (str, list, dict)):
            out[fd.name] = type(default)
        else:
            out[fd.name] = object
    return out


def check_original(config: Mapping[str, Any], stage: str, source: str = "the config") -> None:
    """Refuse unknown keys (naming the closest valid one) and values of the wrong type.

    ``stage`` is ``"classifier"``, ``"meta"`` (the keys of :data:`ORIGINAL_KEYS` and the
    recipe's config fields) or ``"test"`` (``test_few_shot.py``: also ``dataset``).

    Raises:
        InputError: one line naming the file, the key and the fix.

    Example:
        >>> check_original({"max_epoch": 3}, "classifier")
        >>> check_original({"max_epochs": 3}, "classifier", "c.yaml")
        Traceback (most recent call last):
        ...
        metakd.engine.errors.InputError: c.yaml: unknown key 'max_epochs' (did you mean 'max_epoch'?)
    """
    import difflib

    from metakd.engine.errors import InputError

    known = {**_field_types(stage), **ORIGINAL_KEYS}
    for key, value in config.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InputError(f"{source}: unknown key {key!r}{hint}")
        want = known[key]
        if value is None or want is object:
            continue
        ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            kinds = want if isinstance(want, tuple) else (want,)
            names = " or ".join({"int": "an integer", "float": "a number", "bool": "true/false",
                                 "str": "a string", "dict": "a mapping", "list": "a list"}
                                .get(t.__name__, t.__name__) for t in kinds)
            raise InputError(f"{source}: {key} is {value!r} ({type(value).__name__}); it must "
                             f"be {names}")


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file that holds a mapping (PyYAML is imported here only).

    Raises:
        InputError: the file is missing, is not YAML or does not hold a mapping; one line
            naming the file (and the line of a syntax error).
        RunEnvironmentError: PyYAML is not installed.
    """
    from metakd.engine.errors import InputError, RunEnvironmentError

    try:
        import yaml
    except ImportError:
        raise RunEnvironmentError("--config needs PyYAML: pip install pyyaml") from None
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--config {p}: no such file (the configs are in examples/gda/configs)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{p} is not valid YAML{at}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{p} holds a {type(data).__name__}, not a mapping of config keys")
    return data


def read_original(path: str | os.PathLike[str], stage: str) -> dict[str, Any]:
    """Read an original few-shot YAML config (:func:`read_yaml`) and check it
    (:func:`check_original`: unknown keys and wrong types are refused).

    Example:
        >>> cfg = read_original("examples/gda/configs/classifier/train_classifier_mini.yaml",
        ...                     "classifier")  # doctest: +SKIP
    """
    data = read_yaml(path)
    check_original(data, stage, str(path))
    return data


def dataset_name(name: str) -> str:
    """metakd's name of an original data-set name (``mini-imagenet`` -> ``miniimagenet``).

    Example:
        >>> dataset_name("tiered-imagenet")
        'tieredimagenet'
    """
    try:
        return _DATASETS[name.lower()]
    except KeyError:
        raise ValueError(f"data set {name!r} is unknown; use one of {sorted(_DATASETS)}") \
            from None


def run_folder(path: str, out_root: str | os.PathLike[str]) -> tuple[str, str]:
    """``(run folder, "last" | "best")`` of an original checkpoint path.

    Example:
        >>> run_folder("classifier_mini-imagenet_resnet12/epoch-last.pth", "save")
        ('save/classifier_mini-imagenet_resnet12', 'last')
        >>> run_folder("/data/runs/t", "save")
        ('/data/runs/t', 'best')
    """
    p = Path(path)
    which = "best"
    if p.suffix in (".pth", ".pt"):
        which = "last" if "last" in p.stem else "best"
        p = p.parent
    if not p.is_absolute() and not p.exists():
        p = Path(out_root) / p
    return str(p), which


def _replace_arch(path: str, old: str, new: str) -> str:
    return path.replace(old, new) if old else path


def encoder_arch(name: str, *, res_type: bool = False) -> tuple[str, dict[str, Any], str]:
    """metakd's ``(model name, model kwargs, run-name token)`` of an original encoder name.

    Args:
        name: the encoder name.
        res_type: ``name`` comes from ``--res_type`` / ``--teacher_res_type`` (GDA's names,
            :data:`metakd.interop.gda.ENCODERS`); else from a YAML's ``model_args.encoder``
            (Meta-Baseline's names, :data:`metakd.interop.meta_baseline.ENCODERS`). Names
            outside the table are metakd model names.

    Example:
        >>> encoder_arch("resnet12", res_type=True), encoder_arch("resnet12")
        (('resnet12_gda', {}, 'resnet12_gda'), ('resnet12', {}, 'resnet12'))
        >>> encoder_arch("resnet36", res_type=True)[0], encoder_arch("resnet12-wide")
        ('resnet36_bottle', ('resnet12', {'wide': True}, 'resnet12-wide'))
    """
    from metakd.interop import gda, meta_baseline

    table = gda.ENCODERS if res_type else meta_baseline.ENCODERS
    enc = table.get(name)
    if enc is None:
        return name, {}, name
    token = enc.arch + ("-wide" if enc.kwargs.get("wide") else "")
    return enc.arch, dict(enc.kwargs), token


def from_original(config: Mapping[str, Any], stage: str, *, res_type: str | None = None,
                  teacher_res_type: str | None = None, teacher_meta_model: bool = False,
                  out_root: str | os.PathLike[str] = "save", name: str | None = None,
                  tag: str | None = None, root: str | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Any:
    """The recipe config of an original YAML config (a dict) and the options given.

    Args:
        config: the parsed YAML (``train_dataset``, ``model_args``, ``optimizer_args``,
            ``kd_loss_config``, ...).
        stage: ``"classifier"`` (``train_classifier.py``) or ``"meta"`` (``train_meta.py``).
        res_type: ``--res_type``: the student's encoder, a GDA name (:func:`encoder_arch`;
            replaces the encoder in ``load_encoder``).
        teacher_res_type: ``--teacher_res_type``: the teacher's encoder, a GDA name
            (replaces it in ``teacher_load``); ignored without a teacher in the file.
        teacher_meta_model: ``--teacher_meta_model``: the meta-trained teacher.
        out_root: where the original's ``./save`` (``OUT_PATH``) run folders are.
        name: ``--name``: the run folder's name (default: the original's).
        tag: ``--tag``: a suffix of the run folder's name.
        root: the data set's folder.
        overrides: config fields given on the command line (``None`` values are dropped).

    Returns:
        A :class:`ClassifierBaselineConfig` or :class:`MetaBaselineConfig`.

    Example:
        >>> cfg = from_original({"train_dataset": "mini-imagenet",
        ...                      "model_args": {"encoder": "resnet12"},
        ...                      "optimizer_args": {"lr": 0.05}, "max_epoch": 3},
        ...                     "classifier", res_type="resnet36_bottle")
        >>> cfg.arch, cfg.lr, cfg.epochs, cfg.out_dir
        ('resnet36_bottle', 0.05, 3, 'save/classifier_mini-imagenet_resnet36_bottle')
        >>> from_original({"train_dataset": "mini-imagenet", "max_epoch": 3}, "classifier",
        ...               overrides={"epochs": 7}).epochs
        7
    """
    if stage not in ("classifier", "meta"):
        raise ValueError(f"stage={stage!r}: classifier or meta")
    c = dict(config)
    raw_ds = str(c.get("train_dataset", "mini-imagenet"))
    dataset = dataset_name(raw_ds)
    f, encoder, token = _model_fields(c, res_type, root)
    arch = f["arch"]
    _optimizer_fields(c, f)
    if stage == "classifier":
        shots = _classifier_fields(c, f)
    else:
        shots = _meta_fields(c, f, encoder, token, out_root)
    teacher_name = ""
    if c.get("teacher_load"):
        teacher_name = _teacher_fields(c, f, encoder, raw_ds, teacher_res_type,
                                       teacher_meta_model, out_root)
    cls = ClassifierBaselineConfig if stage == "classifier" else MetaBaselineConfig
    names = {fd.name for fd in dataclasses.fields(cls)}
    f.update({k: v for k, v in c.items() if k in names and k not in f})  # metakd's own keys
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    f.update(given)
    if name is None:
        own = token if f["arch"] == arch else f["arch"]  # the encoder, unless overridden
        name = _run_name(stage, raw_ds, own, shots) + teacher_name
    if tag:
        name += f"_{tag}"
    f.setdefault("out_dir", str(Path(out_root) / name))
    ways = int(f.pop("ways", 5))
    shots = int(f.pop("shots", shots))
    return cls.paper(dataset, ways=ways, shots=shots, **f)


def _model_fields(c: Mapping[str, Any], res_type: str | None, root: str | None
                  ) -> tuple[dict[str, Any], str, str]:
    """The fields of the student's encoder (``arch``, ``model_kwargs``) and ``root``; also
    the YAML's encoder name and the run-name token of the encoder."""
    model_args = dict(c.get("model_args") or {})
    encoder = str(model_args.get("encoder", "resnet12"))
    arch, arch_kwargs, token = (encoder_arch(res_type, res_type=True) if res_type
                                else encoder_arch(encoder))
    f: dict[str, Any] = {"arch": arch, "root": root}
    if model_args.get("encoder_args") or arch_kwargs:
        f["model_kwargs"] = {**arch_kwargs, **dict(model_args.get("encoder_args") or {})}
    return f, encoder, token


def _optimizer_fields(c: Mapping[str, Any], f: dict[str, Any]) -> None:
    """The epochs, batch size and SGD settings of the file into ``f`` (SGD only)."""
    opt = dict(c.get("optimizer_args") or {})
    for key, field_ in (("max_epoch", "epochs"), ("batch_size", "batch_size")):
        if key in c:
            f[field_] = c[key]
    for key in ("lr", "weight_decay", "momentum", "milestones"):
        if key in opt:
            f[key] = opt[key]
    if c.get("optimizer", "sgd") != "sgd":
        raise ValueError(f"optimizer {c['optimizer']!r}: the recipes use SGD (as the original)")


def _classifier_fields(c: Mapping[str, Any], f: dict[str, Any]) -> int:
    """``train_classifier.py``'s keys into ``f``; the shots of its run name (1)."""
    train_args = dict(c.get("train_dataset_args") or {})
    f["augment"] = train_args.get("augment")
    if "val_dataset_args" in c:
        f["val_split"] = dict(c["val_dataset_args"]).get("split")
    if "eval_fs_epoch" in c:
        f["fs_every"] = c["eval_fs_epoch"]
    return 1


def _meta_fields(c: Mapping[str, Any], f: dict[str, Any], encoder: str, token: str,
                 out_root: str | os.PathLike[str]) -> int:
    """``train_meta.py``'s episode keys and ``load_encoder`` into ``f``; the shots."""
    for key, field_ in (("n_way", "ways"), ("n_shot", "shots"), ("n_query", "queries"),
                        ("train_batches", "train_batches"),
                        ("ep_per_batch", "meta_batch_size"), ("freeze_bn", "freeze_bn")):
        if key in c:
            f[field_] = c[key]
    if c.get("load_encoder"):
        path = _replace_arch(str(c["load_encoder"]), encoder, token)
        f["pretrained"], f["pretrained_checkpoint"] = run_folder(path, out_root)
    return int(f.get("shots", 1))


def _teacher_fields(c: Mapping[str, Any], f: dict[str, Any], encoder: str, raw_ds: str,
                    teacher_res_type: str | None, teacher_meta_model: bool,
                    out_root: str | os.PathLike[str]) -> str:
    """``teacher_load`` and ``kd_loss_config`` into ``f``; the teacher's part of the run
    name (``_kd-<loss_type>-<teacher>``)."""
    t_args = dict(c.get("teacher_model_args") or {})
    t_encoder = str(t_args.get("encoder", encoder))
    t_arch, _, t_token = (encoder_arch(teacher_res_type, res_type=True)
                          if teacher_res_type else encoder_arch(t_encoder))
    path = _replace_arch(str(c["teacher_load"]), t_encoder, t_token)
    if teacher_meta_model:
        path = path.replace(f"classifier_{raw_ds}_", f"meta_{raw_ds}-1shot_meta-baseline-")
    f["teacher"], f["teacher_checkpoint"] = run_folder(path, out_root)
    f["teacher_arch"] = t_arch
    kd = dict(c.get("kd_loss_config") or {"loss_type": "kd"})
    loss_type = str(kd.get("loss_type", "kd"))
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"kd_loss_config.loss_type={loss_type!r} is unknown; use one of "
                         f"{sorted(LOSS_TYPES)}")
    f["distill"], f["gda"] = LOSS_TYPES[loss_type]
    for key, field_ in _KD_KEYS.items():
        if key in kd:
            f[field_] = kd[key]
    return f"_kd-{loss_type}-{t_token}" + ("-meta_teacher" if teacher_meta_model else "")


def _run_name(stage: str, raw_ds: str, encoder: str, shots: int) -> str:
    """The original's run-folder name of a stage, with metakd's encoder name."""
    return (f"classifier_{raw_ds}_{encoder}" if stage == "classifier"
            else f"meta_{raw_ds}-{shots}shot_meta-baseline-{encoder}")


def launch_gpus(gpu: str | None, argv: Sequence[str] | None = None) -> str:
    """Map the original ``--gpu 0,1`` onto metakd's engine; returns the device to use.

    No ``--gpu``: ``"cpu"``. One id: ``CUDA_VISIBLE_DEVICES`` set, ``"cuda"``. Several ids
    outside ``torchrun``: the script is started again under ``torch.distributed.run`` with
    one process per GPU (the engine then gives each its slice of every batch, where the
    original used ``DataParallel``) and this process exits with its status. Under ``torchrun``
    (``WORLD_SIZE`` set): ``"cuda"``.

    Example:
        >>> launch_gpus(None)
        'cpu'
    """
    if not gpu:
        return "cpu"
    ids = [g.strip() for g in gpu.split(",") if g.strip()]
    if "WORLD_SIZE" in os.environ:
        return "cuda"
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    if len(ids) > 1:
        args = list(sys.argv if argv is None else argv)
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={len(ids)}",
               *args]
        raise SystemExit(subprocess.call(cmd))
    return "cuda"
