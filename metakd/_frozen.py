"""The frozen teacher a student is trained against, held outside the student's registries.

:class:`FrozenTeacher` is the one definition of what a teacher is for every model that uses
one (:class:`metakd.distill.Distiller`, :class:`metakd.distill.PMAML`,
:class:`metakd.meta.MetaBaseline`) and for the recipes that hand them teachers. It sits below
both :mod:`metakd.meta` and :mod:`metakd.distill`, depends on ``torch`` alone, and is
re-exported by :mod:`metakd.distill`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

__all__ = ["FrozenTeacher", "device_of", "freeze"]


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode with ``requires_grad=False`` on every parameter; return it.

    Example:
        >>> net = freeze(nn.Linear(2, 2))
        >>> net.training, any(p.requires_grad for p in net.parameters())
        (False, False)
    """
    model.eval()
    model.requires_grad_(False)
    return model


def device_of(module: nn.Module) -> torch.device | None:
    """The device of ``module``'s first parameter or buffer (``None`` if it has neither).

    Example:
        >>> device_of(nn.Linear(2, 2)), device_of(nn.ReLU())
        (device(type='cpu'), None)
    """
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return None


def _same_device(have: torch.device, want: torch.device) -> bool:
    return have.type == want.type and (want.index is None or have.index == want.index)


class FrozenTeacher:
    """A frozen teacher model, kept out of the parameters and checkpoints of its owner.

    The holder is not an ``nn.Module``, so a model that stores it as an attribute keeps the
    teacher out of its ``parameters()`` (what the optimiser receives), its ``state_dict()``
    (what checkpoints hold) and its ``train()``. The teacher

    - is **frozen**: ``requires_grad=False``, and put in eval mode at every use;
    - is **loaded at first use** when given as a loader (a function of no argument), which
      is then called once and dropped; a run read back for evaluation never calls it;
    - is **moved** to the device asked for (the student's) at every use;
    - runs **channels-last on the CPU**: when it is used there, its 4-D weights are laid out
      channels-last (``module.to(memory_format=torch.channels_last)``), so its convolutions,
      batch norms and poolings run in oneDNN's NHWC layout (on the 2-core CPU with torch
      2.14.1 and one thread, PMAML's Conv-4/64 teacher pass over 4 tasks of 75 Omniglot
      images took 0.074 s against 0.204 s in the plain layout,
      ``benchmarks/results/method_speed_cpu_2026-12-07.json``); the
      values are the same up to float rounding, and the layout is set once, at first use on
      a device (contiguous on any other device), so a run's numbers never change mid-run;
    - runs **without a graph** when called (``torch.no_grad``).

    A deep copy or a pickle of the holder is one of the teacher (or of the loader, if the
    teacher is not loaded yet).

    Args:
        teacher: the teacher module, or a function of no argument that returns it.
        kind: the class (or tuple of classes) the teacher must be an instance of; checked when
            the module is given and when the loader returns it.

    Raises:
        TypeError: ``teacher`` is neither a module nor callable, or it (or what the loader
            returns) is not a ``kind``.

    Example:
        >>> class Student(nn.Module):
        ...     def __init__(self, teacher):
        ...         super().__init__()
        ...         self.net = nn.Linear(2, 3)
        ...         self.teacher = FrozenTeacher(teacher)
        >>> s = Student(nn.Linear(2, 3))
        >>> list(s.state_dict()), len(list(s.parameters()))
        (['net.weight', 'net.bias'], 2)
        >>> s.teacher(torch.randn(4, 2), device=device_of(s.net)).requires_grad
        False
        >>> lazy = FrozenTeacher(lambda: nn.Linear(2, 3).train())
        >>> lazy.loaded, lazy.get().training, lazy.loaded
        (False, False, True)
    """

    def __init__(self, teacher: nn.Module | Callable[[], nn.Module], *,
                 kind: type | tuple[type, ...] = nn.Module) -> None:
        self.kind = kind
        self._layout_device: str | None = None  # the device type the layout was set for
        self._module: nn.Module | None = None
        self._loader: Callable[[], nn.Module] | None = None
        if isinstance(teacher, FrozenTeacher):
            raise TypeError("the teacher is already held by a FrozenTeacher: pass that one")
        if isinstance(teacher, nn.Module):
            self._module = freeze(self._checked(teacher, "the teacher is"))
        elif callable(teacher):
            self._loader = teacher
        else:
            raise TypeError(f"a teacher is a module or a function returning one, not a "
                            f"{type(teacher).__name__}")

    def _checked(self, module: Any, what: str) -> nn.Module:
        if not isinstance(module, self.kind):
            kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
            names = " or ".join(k.__name__ for k in kinds)
            raise TypeError(f"{what} a {type(module).__name__}, not a {names}")
        return cast(nn.Module, module)

    @property
    def loaded(self) -> bool:
        """Whether the teacher is in memory (a loader given is called at first use)."""
        return self._module is not None

    def get(self, device: torch.device | str | None = None) -> nn.Module:
        """The teacher: loaded if need be, frozen, in eval mode, on ``device`` if given.

        Args:
            device: where the teacher must be (the student's device); ``None``: where it is.

        Example:
            >>> t = FrozenTeacher(nn.Linear(2, 2))
            >>> t.get().train() is t.get(), t.get().training
            (True, False)
        """
        module = self._module
        if module is None:
            assert self._loader is not None
            module = freeze(self._checked(self._loader(), "the teacher loader returned"))
            self._module, self._loader = module, None
        if module.training:
            module.eval()
        if device is not None:
            want, have = torch.device(device), device_of(module)
            if have is not None and not _same_device(have, want):
                module.to(want)
        here = device_of(module)
        if here is not None and here.type != self._layout_device:
            fmt = torch.channels_last if here.type == "cpu" else torch.contiguous_format
            module.to(memory_format=fmt)
            self._layout_device = here.type
        return module

    def __call__(self, *inputs: Any, device: torch.device | str | None = None,
                 method: str | None = None) -> Any:
        """The teacher's outputs of ``inputs``, without a graph.

        Args:
            *inputs: the arguments of the teacher's forward (or of ``method``).
            device: where the teacher must be (see :meth:`get`).
            method: a method of the teacher to call instead of its forward (``"logits"``).

        Example:
            >>> t = FrozenTeacher(nn.Linear(2, 3))
            >>> t(torch.randn(4, 2)).shape
            torch.Size([4, 3])
        """
        module = self.get(device)
        fn = module if method is None else getattr(module, method)
        with torch.no_grad():
            return fn(*inputs)

    def apply_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn`` to the loaded teacher's parameters and buffers (as ``.to()``, ``.double()``).

        An owner's ``_apply`` calls it, so that ``owner.to(...)`` or ``owner.double()`` reach
        the teacher too. A teacher not loaded yet is left alone (it is moved to the student's
        device when it is loaded).

        Example:
            >>> t = FrozenTeacher(nn.Linear(2, 3))
            >>> t.apply_tensors(lambda x: x.double())
            >>> t.get().weight.dtype
            torch.float64
        """
        if self._module is not None:
            self._module._apply(fn)

    def __repr__(self) -> str:
        if self._module is None:
            return "FrozenTeacher(loaded at first use)"
        return f"FrozenTeacher({type(self._module).__name__})"
