"""Loading a run's weights into freshly built objects, at the trained or another number of ways.

A run trained on ``N``-way episodes has an ``N``-output classifier. Tested at ``N' != N`` ways
(``metakd eval RUN --ways 20``), the head cannot be reused: :func:`load_with_new_head` loads
every other weight and sets the head's final linear layer to zeros with ``N'`` outputs. A zero
head gives every class the same logit before adaptation, so it does not depend on the order of
the labels, which matters for MAML: an episode's labels are a fresh random assignment, and the
inner loop then learns the head from the support set alone (the "zeroing trick" of Kao et al.,
"MAML is a Noisy Contrastive Learner in Classification", ICLR 2022).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["final_linear", "load_state", "load_with_new_head"]

log = logging.getLogger(__name__)


def _shape(t: torch.Tensor) -> list[int]:
    return list(t.shape)


def load_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str = "the run",
               skip: frozenset[str] = frozenset()) -> None:
    """``module.load_state_dict(state)`` with a one-line error naming the first mismatch.

    Args:
        module: where the weights go.
        state: the saved ``state_dict``.
        what: how to name the weights' origin in errors.
        skip: keys of ``module`` that ``state`` may lack or hold at another shape (left as
            they are in ``module``).

    Raises:
        ValueError: a key is missing, unexpected, or has another shape.

    Example:
        >>> net = nn.Linear(3, 2)
        >>> load_state(net, nn.Linear(3, 2).state_dict())
        >>> load_state(net, nn.Linear(4, 2).state_dict())
        Traceback (most recent call last):
        ...
        ValueError: the weights of the run do not fit the model built: weight is [2, 4] in the run but [2, 3] here (another data set, image size or backbone?)
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in skip]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and k not in skip and own[k].shape != state[k].shape]
    prefix = f"the weights of {what} do not fit the model built"
    if wrong:
        k = wrong[0]
        raise ValueError(f"{prefix}: {k} is {_shape(state[k])} in {what} but {_shape(own[k])} "
                         "here (another data set, image size or backbone?)")
    if missing or unexpected:
        raise ValueError(f"{prefix}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    module.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=not skip)


def final_linear(model: nn.Module) -> nn.Linear:
    """The final linear layer of ``model``'s classifier: ``model.head`` (or its last
    ``nn.Linear``) for a :class:`metakd.nn.Backbone`, else the model's last ``nn.Linear``.

    Raises:
        ValueError: there is no linear classifier layer.

    Example:
        >>> from metakd.nn import create
        >>> final_linear(create("maml_omniglot", num_classes=5)).out_features
        5
    """
    head = getattr(model, "head", None)
    scope = head if isinstance(head, nn.Module) else model
    linears = [m for m in scope.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer "
                         f"(its head is {type(head).__name__})")
    return linears[-1]


def load_with_new_head(learner: nn.Module, model: nn.Module, state: Mapping[str, torch.Tensor],
                       ways: int, what: str = "the run") -> None:
    """Load ``state`` into ``learner`` except the classifier, which becomes a zero ``ways``-way layer.

    ``model`` (inside ``learner``) must already have been built with ``ways`` outputs; its
    final linear layer (:func:`final_linear`) is set to zero weights and bias. Every other
    weight must fit exactly.

    Args:
        learner: the module whose ``state_dict`` was saved (e.g. a ``MAMLWrapper``).
        model: the backbone inside ``learner``.
        state: the saved ``state_dict`` of ``learner``.
        ways: the new number of classes.
        what: how to name the weights' origin in errors and in the warning.

    Example:
        >>> from metakd.meta import MAMLWrapper
        >>> from metakd.nn import create
        >>> trained = MAMLWrapper(create("maml_omniglot", num_classes=5), 0.4, 1)
        >>> net = create("maml_omniglot", num_classes=20)
        >>> learner = MAMLWrapper(net, 0.4, 1)
        >>> load_with_new_head(learner, net, trained.state_dict(), ways=20)
        >>> net.head.weight.abs().sum().item(), net.head.out_features
        (0.0, 20)
    """
    head = final_linear(model)
    if head.out_features != ways:
        raise ValueError(f"the model was built with {head.out_features} outputs, not {ways}")
    names = {id(p): n for n, p in learner.named_parameters()}
    keys = frozenset(names[id(p)] for p in head.parameters())
    load_state(learner, state, what, skip=keys)
    with torch.no_grad():
        head.weight.zero_()
        if head.bias is not None:
            head.bias.zero_()
    old = next((_shape(state[k])[0] for k in keys if k in state), "?")
    log.warning("%s was trained at %s ways: its classifier cannot be reused at %d ways, so the "
                "final layer (%s) is a zero-initialised %d-way layer that the inner loop adapts "
                "on each support set", what, old, ways, ", ".join(sorted(keys)), ways)
