"""Meta-learners: adapt on a task's support set, score on its query set.

:class:`MAMLWrapper` covers MAML (Finn et al., ICML 2017), first-order MAML, Meta-SGD (Li et
al., 2017) and ANIL (Raghu et al., ICLR 2020) with four interchangeable inner-loop backends
(``func``, ``vmap``, ``learn2learn``, ``higher``). Importing this package imports neither
learn2learn nor higher: a backend imports its package when it is chosen.

Example:
    >>> import torch
    >>> from metakd.meta import MAMLWrapper
    >>> maml = MAMLWrapper(torch.nn.Linear(8, 5), inner_lr=0.1, inner_steps=2)
    >>> maml.adapt(torch.randn(10, 8), torch.arange(5).repeat(2))(torch.randn(3, 8)).shape
    torch.Size([3, 5])
"""

from metakd.meta.maml import MAMLLearner, MAMLWrapper, default_backend

__all__ = ["MAMLLearner", "MAMLWrapper", "default_backend"]
