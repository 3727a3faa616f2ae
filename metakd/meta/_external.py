"""The learn2learn and higher backends of :class:`~metakd.meta.MAMLWrapper`.

Each imports its package when it is built, never at ``import metakd.meta`` time.

Internal module: use :class:`~metakd.meta.MAMLWrapper`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metakd._quiet import drop_cuda_home_warning, import_quietly
from metakd.meta._backends import Backend, MAMLLearner
from metakd.meta.inner import InnerLoop, Mode
from metakd.meta.objectives import total

__all__ = ["HigherBackend", "Learn2LearnBackend"]


# -------------------------------------------------------------------------------- learn2learn
def _sgd_rates(loop: InnerLoop, backend: str) -> dict[str, float | Tensor]:
    rates = getattr(loop.rule, "sgd_rates", lambda names: None)(loop.adapted)
    if rates is None:
        raise ValueError(
            f"backend={backend!r} implements only the update rules of the form p - lr * g "
            f"(metakd.meta.SGD, MetaSGD), not {type(loop.rule).__name__}; use backend='func', "
            "'vmap' or 'auto'"
        )
    return rates


def _support_loss(loop: InnerLoop, logits: Tensor, sy: Tensor, extras: Mapping[str, Tensor],
                  k: int) -> Tensor:
    return total(loop.support(logits, sy, extras, k))


def _import_learn2learn() -> Any:
    drop_cuda_home_warning()
    try:
        learn2learn = import_quietly("learn2learn")  # without gym's banner
    except ImportError as e:
        raise ImportError(
            "backend='learn2learn' needs the learn2learn package: `pip install metakd[learn2learn]`"
            " (learn2learn 0.2.0 has no wheel for Python >= 3.11; scripts/install_learn2learn.sh "
            "builds it, see the README, 'Installing'), or use backend='func'"
        ) from e
    return learn2learn


class Learn2LearnBackend(Backend):
    """learn2learn's ``MAML.clone()``, then ``maml_update`` (scalar α) or ``update_module``.

    It keeps no reference to the learn2learn package or to its ``MAML`` wrapper (rebuilt on
    demand around ``loop.model``), so a wrapper on it is deep-copied and pickled like one on
    the func backend.
    """

    name = "learn2learn"

    def __init__(self, loop: InnerLoop, first_order: bool) -> None:
        super().__init__(loop)
        rates = _sgd_rates(loop, "learn2learn")
        _import_learn2learn()  # fail now, with the installation hint, if it is missing
        first = next(iter(rates.values()))
        self.lr = float(first) if not isinstance(first, Tensor) else 1.0
        self.first_order = first_order
        self._maml: Any = None

    def __getstate__(self) -> dict[str, object]:
        # copy.deepcopy / pickle: the learn2learn wrapper is rebuilt around the copied model.
        return {**self.__dict__, "_maml": None}

    def _wrapper(self) -> Any:
        if self._maml is None or self._maml.module is not self.loop.model:
            l2l = _import_learn2learn()
            self._maml = l2l.algorithms.MAML(
                self.loop.model, lr=self.lr, first_order=self.first_order, allow_unused=True,
                allow_nograd=True,
            )
        return self._maml

    def adapt(
        self, sx: Tensor, sy: Tensor, extras: Mapping[str, Tensor], steps: int, mode: Mode
    ) -> MAMLLearner:
        pb = self.loop
        lrs = _sgd_rates(pb, "learn2learn")
        l2l = _import_learn2learn()
        clone = self._wrapper().clone()
        module = clone.module
        adapted = set(pb.adapted)
        scalar_lr = all(not isinstance(v, Tensor) for v in lrs.values()) and len(
            {lrs[n] for n in pb.adapted}
        ) == 1
        with torch.enable_grad():
            for k in range(steps):
                pb.set_step(module, k)
                named = list(module.named_parameters())
                targets = [(n, p) for n, p in named if n in adapted]
                loss = _support_loss(pb, module(sx), sy, extras, k)
                grads = torch.autograd.grad(
                    loss, [p for _, p in targets], create_graph=mode == "second",
                    allow_unused=True,
                )
                by_name = dict(zip((n for n, _ in targets), grads))
                full = [by_name.get(n) for n, _ in named]
                with torch.no_grad() if mode == "none" else contextlib.nullcontext():
                    if scalar_lr:
                        l2l.algorithms.maml.maml_update(module, lrs[pb.adapted[0]], full)
                    else:
                        for (n, p), g in zip(named, full):
                            if g is not None:
                                p.update = -lrs[n] * g
                        l2l.utils.update_module(module)
                if mode == "none":  # no meta-graph in evaluation, but the next step needs grads
                    for n, p in module.named_parameters():
                        if n in adapted:
                            p.requires_grad_()
        params = {n: p for n, p in module.named_parameters() if n in adapted}

        def forward(x: Tensor) -> Tensor:
            pb.set_step(module, steps - 1)
            out: Tensor = clone(x)
            return out

        return MAMLLearner(forward, params)


# ------------------------------------------------------------------------------------- higher
def _import_higher() -> Any:
    drop_cuda_home_warning()
    try:
        higher = import_quietly("higher")
    except ImportError as e:
        raise ImportError(
            "backend='higher' needs the higher package: `pip install higher` (it is a dependency "
            "of metakd, so reinstalling metakd also brings it), or use backend='func'"
        ) from e
    return higher


class HigherBackend(Backend):
    """``higher.innerloop_ctx`` with a differentiable SGD, one parameter group per parameter.

    The SGD it hands to higher is built for each adaptation from ``loop.model`` (it holds no
    state: higher reads its parameter groups), so the backend keeps no package or optimiser
    and a wrapper on it is deep-copied and pickled like one on the func backend.
    """

    name = "higher"

    def __init__(self, loop: InnerLoop) -> None:
        super().__init__(loop)
        _sgd_rates(loop, "higher")
        _import_higher()  # fail now, with the installation hint, if it is missing

    def adapt(
        self, sx: Tensor, sy: Tensor, extras: Mapping[str, Tensor], steps: int, mode: Mode
    ) -> MAMLLearner:
        pb = self.loop
        lrs = _sgd_rates(pb, "higher")
        override = {"lr": [lrs[n] for n in pb.adapted]}
        meta = dict(pb.model.named_parameters())
        opt = torch.optim.SGD([{"params": [meta[n]]} for n in pb.adapted], lr=1.0)
        ctx = _import_higher().innerloop_ctx(
            pb.model, opt, copy_initial_weights=False, override=override,
            track_higher_grads=mode != "none",
        )
        with ctx as (fmodel, diffopt), torch.enable_grad():
            callback = None
            if mode == "first":

                def callback(grads: list[Tensor | None]) -> list[Tensor | None]:
                    return [None if g is None else g.detach() for g in grads]

            for k in range(steps):
                pb.set_step(fmodel, k)
                diffopt.step(_support_loss(pb, fmodel(sx), sy, extras, k), grad_callback=callback)
        names = [n for n, _ in pb.model.named_parameters()]
        fast = dict(zip(names, fmodel.parameters(time=-1)))
        params = {n: fast[n] for n in pb.adapted}

        def forward(x: Tensor) -> Tensor:
            pb.set_step(fmodel, steps - 1)
            out: Tensor = fmodel(x)
            return out

        return MAMLLearner(forward, params)
