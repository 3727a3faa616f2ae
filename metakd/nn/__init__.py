"""Backbones for few-shot meta-learning and distillation, built by name.

Every model is a plain ``nn.Module`` whose forward reads only its parameters and buffers, so
it runs under ``torch.func.functional_call``/``vmap``, learn2learn's ``clone_module`` and
higher's ``monkeypatch``. Models expose ``features(x)`` (the embedding), ``head`` (the
classifier), ``feature_dim`` and ``out_features``; ``forward(x) = head(features(x))``.
Every model takes the common arguments documented on :class:`Backbone` (``num_classes``,
``in_channels``, ``head``, the batch-norm settings); :func:`describe_models` lists the
registered models with their family (few-shot or CIFAR) and a one-line description.

Example:
    >>> import torch
    >>> import metakd.nn as mnn
    >>> net = mnn.create("maml_omniglot", num_classes=5)
    >>> net(torch.randn(10, 1, 28, 28)).shape
    torch.Size([10, 5])
    >>> mnn.list_models("conv*")
    ['conv1', 'conv2', 'conv4', 'conv6', 'conv8']
"""

from metakd.nn.cifar_bottleneck import CifarBottleneckResNet
from metakd.nn.cifar_mobilenet import CifarMobileNetV2
from metakd.nn.cifar_resnet import CifarResNet
from metakd.nn.cifar_shufflenet import CifarShuffleNetV1, CifarShuffleNetV2
from metakd.nn.cifar_vgg import CifarVGG
from metakd.nn.cifar_wrn import CifarWideResNet
from metakd.nn.conv import ConvNet, TFSamePad2d
from metakd.nn.heads import Backbone, CosineHead, LinearHead, cosine_logits, make_head
from metakd.nn.mtl_resnet import MTLResNet25
from metakd.nn.norm import BatchNorm1d, BatchNorm2d, BatchNormConfig, set_bn_step
from metakd.nn.pool import MaxPool2d, max_pool2d
from metakd.nn.registry import (
    ModelInfo,
    create,
    describe_models,
    is_model,
    list_models,
    original_key_map,
    register_model,
    rename_original_keys,
)
from metakd.nn.resnet import (
    BasicBlock,
    BottleResNet,
    MTLResNet12,
    ResNet,
    ResNet12,
    ResNet12Block,
)
from metakd.nn.scale_shift import ScaleShiftConv2d, convert_to_scale_shift, mtl_preset

__all__ = [
    "Backbone",
    "BasicBlock",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNormConfig",
    "BottleResNet",
    "CifarBottleneckResNet",
    "CifarMobileNetV2",
    "CifarResNet",
    "CifarShuffleNetV1",
    "CifarShuffleNetV2",
    "CifarVGG",
    "CifarWideResNet",
    "ConvNet",
    "CosineHead",
    "LinearHead",
    "MTLResNet12",
    "MTLResNet25",
    "MaxPool2d",
    "ModelInfo",
    "ResNet",
    "ResNet12",
    "ResNet12Block",
    "ScaleShiftConv2d",
    "TFSamePad2d",
    "convert_to_scale_shift",
    "cosine_logits",
    "create",
    "describe_models",
    "is_model",
    "list_models",
    "make_head",
    "max_pool2d",
    "mtl_preset",
    "original_key_map",
    "register_model",
    "rename_original_keys",
    "set_bn_step",
]
