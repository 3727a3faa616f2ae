"""learn2learn's data layer runs on metakd data sets (needs the learn2learn extra)."""

from __future__ import annotations

import warnings

import pytest
import torch

from metakd.data import Omniglot, few_shot

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    l2l = pytest.importorskip("learn2learn")

pytestmark = pytest.mark.learn2learn


def _to_tensor(img):  # type: ignore[no-untyped-def]
    import numpy as np

    return torch.from_numpy(np.asarray(img.resize((28, 28)), dtype=np.float32) / 255.0)[None]


def test_taskdataset_over_a_metakd_dataset_has_the_same_episode_structure() -> None:
    ds = Omniglot(split="test", rotations=(0, 180), transform=_to_tensor)
    meta = l2l.data.MetaDataset(ds, labels_to_indices=ds.labels_to_indices)
    assert sorted(meta.labels) == list(range(len(ds.classes)))
    tasks = l2l.data.TaskDataset(
        meta,
        task_transforms=[
            l2l.data.transforms.NWays(meta, 5),
            l2l.data.transforms.KShots(meta, 1 + 3),
            l2l.data.transforms.LoadData(meta),
            l2l.data.transforms.RemapLabels(meta),
            l2l.data.transforms.ConsecutiveLabels(meta),
        ],
        num_tasks=20,
    )
    ours = next(iter(few_shot(ds, 5, 1, 3, meta_batch_size=1, num_tasks=1, seed=0)))
    for i in range(5):
        x, y = tasks[i]
        assert x.shape == (20, 1, 28, 28)
        # same structure as a metakd episode: 5 classes with 1 + 3 images each, labels 0..4
        assert torch.bincount(y, minlength=5).tolist() == [4] * 5
        assert torch.bincount(torch.cat([ours.support_y[0], ours.query_y[0]])).tolist() == [4] * 5
        assert x.shape[1:] == ours.support_x.shape[2:]


def test_metadataset_without_hints_agrees_with_our_label_index() -> None:
    ds = Omniglot(split="test", transform=_to_tensor)
    meta = l2l.data.MetaDataset(ds)  # learn2learn builds its own index by reading every item
    ours = ds.labels_to_indices
    assert {k: sorted(v) for k, v in meta.labels_to_indices.items()} == ours
