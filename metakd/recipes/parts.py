"""The parts recipes are composed from: their fields (declared once, with their help) and builds.

A method's config is a dataclass made of parts plus its own fields, for example
``MAMLConfig(RunSettings, MetaAdam, InnerLoop, Backbone, EpisodeData)`` (the loop parts are in
:mod:`metakd.recipes.loops`); each part documents its fields in its ``Attributes:`` section,
which :func:`metakd.recipes.fields.compose_doc` copies into the config's docstring, the
command line and the docs. A config overrides a part's default by declaring the field again
(its help stays the part's).

- :class:`EpisodeData`: the data set, the episode shapes, the validation and test episodes
  and their seeds; :class:`EpisodeSplits` opens the splits and draws the episode streams.
- :class:`SupervisedData`: whole-classification minibatches and held-out validation images;
  :func:`supervised_batches` and :func:`supervised_augmentation` build them (also for
  methods that name the fields their own way, such as MTL's ``pre_batch_size``).
- :class:`Backbone`: the network by name; :func:`create_backbone` builds it.
- :class:`RunSettings`: the training length, validation period, run folder, budget, device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

__all__ = ["Backbone", "EpisodeData", "EpisodeSplits", "EpisodeStreams", "RunSettings",
           "SupervisedData", "create_backbone", "supervised_augmentation",
           "supervised_batches"]

ROTATIONS = (0, 90, 180, 270)


@dataclass
class EpisodeData:
    """The data of an episodic run: data set, episode shapes, validation and test episodes.

    Attributes:
        dataset: ``omniglot`` (``root=None``: the bundled copy), ``miniimagenet``, ``cub``,
            ``cifarfs``, ``fc100`` or ``tieredimagenet``.
        root: the data set's folder.
        ways: ``N``, the classes of an episode.
        shots: ``K``, the support images per class.
        queries: query images per class in the training episodes.
        test_queries: query images per class in validation and test episodes. The MAML
            reference tests with K per class; 15 estimates the same accuracy with less noise.
        image_size: side of the images (default: the data set's).
        rotations: add the 90/180/270-degree rotations of each class as classes (Omniglot).
        augment: augmentation of the training episodes (:func:`metakd.data.augmentation`
            name, e.g. ``"miniimagenet"``: random resized crop, flip, colour jitter), or
            ``None``.
        val_tasks: validation episodes, drawn from the ``val`` split (the bundled Omniglot
            has none: no validation).
        test_tasks: test episodes.
        seed: seeds the weights and the episode streams (validation: ``seed + 1``).
        test_seed: seed of the test episodes; ``None``: ``seed + 2``. Fix it to test runs of
            different seeds on the same episodes (paired comparisons).
    """

    dataset: str = "omniglot"
    root: str | None = None
    ways: int = 5
    shots: int = 1
    queries: int = 15
    test_queries: int = 15
    image_size: int | None = None
    rotations: bool = True
    augment: str | None = None
    val_tasks: int = 600
    test_tasks: int = 600
    seed: int = 0
    test_seed: int | None = None


class EpisodeStreams(NamedTuple):
    """The episodes of a run: an endless training stream, fixed validation and test sets."""

    train: Any
    val: Any
    test: Any


class EpisodeSplits:
    """The splits of a run's data set and the episodes drawn from them.

    The training split is opened at once (its images give the channels and the default
    size); the others when their episodes are drawn. The bundled Omniglot has no validation
    split (:attr:`has_val` is false).

    Args:
        cfg: the run's config (the fields of :class:`EpisodeData`; ``queries``,
            ``augment`` and ``val_tasks`` only for :meth:`streams`).
        device: where the episodes are gathered.
        normalize: ``(mean, std)`` per channel of the episodes, or ``None``.
        progress: progress bars of the decoding (``None``: :func:`metakd.data.few_shot`'s).

    Example:
        >>> splits = EpisodeSplits(EpisodeData(test_tasks=2, rotations=False))
        >>> splits.channels, splits.size, splits.has_val
        (1, 28, False)
        >>> streams = splits.streams(meta_batch_size=2)
        >>> streams.val is None, next(iter(streams.test)).support_x.shape
        (True, torch.Size([2, 5, 1, 28, 28]))
    """

    def __init__(self, cfg: Any, *, device: Any = "cpu", normalize: Any = None,
                 progress: bool | None = None) -> None:
        self.cfg, self.device, self.normalize, self.progress = cfg, device, normalize, progress
        omniglot = cfg.dataset.lower() == "omniglot"
        self.extra: dict[str, Any] = {"rotations": ROTATIONS} if omniglot and cfg.rotations \
            else {}
        self.train = self.open("train")
        self.size = cfg.image_size or self.train.default_image_size
        self.channels = 1 if self.train.image_mode == "L" else 3
        self.has_val = not (omniglot and cfg.root is None)

    def open(self, split: str) -> Any:
        """The data set's ``split`` (with the rotation classes when asked for)."""
        from metakd.data.registry import get_dataset

        return get_dataset(self.cfg.dataset, self.cfg.root, split, **self.extra)

    def episodes(self, split: Any, shots: int, queries: int, tasks: int | None, seed: int,
                 meta_batch_size: int, augment: Any = None) -> Any:
        """``few_shot`` episodes of ``split`` (a split name or an opened data set): an endless
        stream when ``tasks`` is ``None``, else a fixed set of ``tasks`` episodes."""
        from metakd.data import few_shot

        ds = self.open(split) if isinstance(split, str) else split
        return few_shot(ds, self.cfg.ways, shots, queries, meta_batch_size=meta_batch_size,
                        num_tasks=tasks, seed=seed, image_size=self.size,
                        normalize=self.normalize, device=self.device, progress=self.progress,
                        augment=augment)

    def augmentation(self) -> Any:
        """The training episodes' augmentation (``cfg.augment`` at the image size), or None."""
        from metakd.data import augmentation

        name = self.cfg.augment
        if not name:
            return None
        if self.size is None:
            raise ValueError(f"augment={name!r} needs image_size: {self.cfg.dataset} has no "
                             "default image size")
        return augmentation(name, self.size)

    @property
    def test_seed(self) -> int:
        """The test episodes' seed: ``test_seed``, else ``seed + 2``."""
        cfg = self.cfg
        return int(cfg.seed + 2 if cfg.test_seed is None else cfg.test_seed)

    def test(self, meta_batch_size: int) -> Any:
        """The fixed test episodes (``test_tasks`` of ``test_queries`` per class)."""
        cfg = self.cfg
        return self.episodes("test", cfg.shots, cfg.test_queries, cfg.test_tasks,
                             self.test_seed, meta_batch_size)

    def streams(self, meta_batch_size: int) -> EpisodeStreams:
        """The training stream (``seed``), the validation set (``seed + 1``; ``None``
        without a validation split) and the test set, in meta-batches."""
        cfg = self.cfg
        val = None
        if self.has_val:
            val = self.episodes("val", cfg.shots, cfg.test_queries, cfg.val_tasks, cfg.seed + 1,
                                meta_batch_size)
        train = self.episodes(self.train, cfg.shots, cfg.queries, None, cfg.seed,
                              meta_batch_size, augment=self.augmentation())
        return EpisodeStreams(train, val, self.test(meta_batch_size))


@dataclass
class SupervisedData:
    """Whole-classification minibatches of the training classes, and their validation images.

    Attributes:
        batch_size: images per training step.
        augment: augmentation of the training minibatches (:func:`supervised_augmentation`):
            ``resize`` (random resized crop and flip), ``crop`` (random crop, padding 8, and
            flip), a :func:`metakd.data.augmentation` name, or ``None``.
        val_split: a split of held-out images of the training classes to validate on
            (miniImageNet's Gidaris pickles: ``train_phase_val``), or ``None``.
        val_holdout: without ``val_split``, hold out this many images of every training
            class for validation (0: no validation).
    """

    batch_size: int = 128
    augment: str | None = "resize"
    val_split: str | None = None
    val_holdout: int = 0


def supervised_augmentation(name: str | None, size: Any) -> Any:
    """The augmentation of training minibatches by name, at image side ``size``, or ``None``.

    ``resize``: random resized crop and horizontal flip; ``crop``: random crop (padding 8) and
    flip (Meta-Baseline's two); any :func:`metakd.data.augmentation` name; ``None`` or
    ``"none"``: no augmentation.

    Example:
        >>> supervised_augmentation("crop", 32)
        Compose([RandomCrop(size=(32, 32), padding=(8, 8, 8, 8), padding_mode='constant', fill=0.0), RandomHorizontalFlip(p=0.5)])
    """
    from metakd.data import augmentation
    from metakd.data.augment.base import Compose
    from metakd.data.augment.geometric import RandomCrop, RandomHorizontalFlip, RandomResizedCrop

    if not name or name == "none":
        return None
    if name == "resize":
        return Compose([RandomResizedCrop(size), RandomHorizontalFlip()])
    if name == "crop":
        return Compose([RandomCrop(size, padding=8), RandomHorizontalFlip()])
    try:
        return augmentation(name, size)
    except ValueError:
        raise ValueError(f"augment={name!r}: use resize, crop, a metakd.data.augmentation "
                         "name or None") from None


def supervised_batches(data: Any, batch_size: int, *, seed: int, device: Any = "cpu",
                       augment: Any = None, normalize: Any = None, val: Any = None,
                       val_batch_size: int = 256) -> tuple[Any, Any]:
    """The training minibatches of ``data`` and the evaluation batches of ``val``.

    Args:
        data: the training images (a data set or its ``ImageArray``).
        batch_size: images per training step.
        seed: seed of the epoch permutations and of the augmentation draws.
        device: where the batches are gathered.
        augment: the training batches' augmentation (:func:`supervised_augmentation`).
        normalize: ``(mean, std)`` per channel, or ``None``.
        val: validation images (every image once, in order), or ``None``.
        val_batch_size: images per validation batch.

    Returns:
        ``(train, val)``: an endless :func:`metakd.data.batches` loader of shuffled
        ``(x, y)`` minibatches (the last incomplete one dropped), and one pass over ``val``
        (``None`` without ``val``).

    Example:
        >>> from metakd.data import Omniglot
        >>> train, val = supervised_batches(Omniglot(split="test"), 16, seed=0)
        >>> x, y = next(iter(train))
        >>> tuple(x.shape), val is None
        ((16, 1, 28, 28), True)
    """
    from metakd.data import batches

    train = batches(data, batch_size, seed=seed, augment=augment, normalize=normalize,
                    device=device, progress=False)
    if val is None:
        return train, None
    return train, batches(val, val_batch_size, shuffle=False, drop_last=False, epochs=1,
                          normalize=normalize, device=device, progress=False)


@dataclass
class Backbone:
    """The network a method trains, by name.

    Attributes:
        model: backbone name in :func:`metakd.nn.create`.
        model_kwargs: extra arguments of the backbone (for example ``{"hidden": 32}``, or
            ``{"head_init": "xavier"}`` for ``maml_omniglot``; on the command line
            ``--model-arg KEY=VALUE``, repeatable).
    """

    model: str = "maml_omniglot"
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def create_backbone(name: str, channels: int, num_classes: int, /, **kwargs: Any) -> nn.Module:
    """``metakd.nn.create(name, in_channels=channels, num_classes=num_classes, **kwargs)``; an
    option the backbone does not take is a one-line ``ValueError``.

    Example:
        >>> create_backbone("conv4", 1, 5, hidden=8).head.out_features
        5
        >>> create_backbone("conv4", 1, 5, widht=8)
        Traceback (most recent call last):
        ...
        ValueError: model 'conv4' with options {'widht': 8}: ...
    """
    from metakd.nn import create

    try:
        return create(name, in_channels=channels, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an option the backbone does not take
        raise ValueError(f"model {name!r} with options {kwargs}: {e}") from e


@dataclass
class RunSettings:
    """How long a run trains, how often it validates, where it writes and on what device.

    Attributes:
        steps: training steps (meta-iterations, episodes or minibatches: the method's unit).
        val_every: validation period, in steps.
        out_dir: run folder (checkpoints, log, plot, results).
        max_seconds: stop training after this long (then test).
        device: ``"cpu"``, ``"cuda"``...
    """

    steps: int = 60_000
    val_every: int = 500
    out_dir: str = "runs/maml"
    max_seconds: float | None = None
    device: str = "cpu"
