"""The Meta-LSTM of Ravi & Larochelle ("Optimization as a model for few-shot learning",
ICLR 2017): an LSTM whose cell state is the learner's parameters, as an update rule of the
core, and the meta-learner that trains it.

For every learner coordinate ``j`` (all ``P`` coordinates share the meta-learner's weights),
with the support loss ``L_t`` and gradient ``g_t`` taken as constants::

    x_t      = [pre(L_t), pre(g_t,j)]                          pre: preprocess, p = 10
    h_t, s_t = LSTM_1(x_t, (h_{t-1}, s_{t-1}))                  4 -> H (= 20) units
    f~_t     = W_F . [h_t, c_{t-1}, f~_{t-1}] + b_F            b_F ~ U(4, 5)
    i~_t     = W_I . [h_t, c_{t-1}, i~_{t-1}] + b_I            b_I ~ U(-5, -4)
    c_t      = sigmoid(f~_t) c_{t-1} - sigmoid(i~_t) g_t,j      c_0 = the learner's initial weights

``c_t`` is the learner's parameter vector after update ``t``. As in both codes (twitter's Lua
and markdtw's PyTorch port) the gates fed back are the *pre-sigmoid* values ``f~, i~``;
``gate_feedback="sigmoid"`` feeds back ``sigmoid(f~), sigmoid(i~)``, the paper's form. Every
weight not named above is drawn from ``U(-0.01, 0.01)``. ``c_0`` is the learner's own
parameters, meta-learned with the rule's weights: the meta-gradient reaches them, and the
rule's weights, through the recurrence over all updates of an episode (never through the
gradients, which are inputs).

:class:`MetaLSTMOptimizer` is that cell as an :class:`metakd.meta.UpdateRule`
(``constant_grads = True``); :class:`metakd.meta.MetaLSTM`
(:mod:`metakd.meta.meta_lstm_learner`) is the meta-learner of the original code: the
inner loop is several epochs over the support set in minibatches, the learner's batch-norm
running statistics are reset per episode, the query set is normalised with its own batch
statistics at meta-training and with this episode's support-collected running statistics at
meta-test. The attention variant (MLAL) adds :class:`metakd.meta.MetaAttention` inside the
rule and :class:`metakd.meta.AttentionLearner` in front of the learner.

Example:
    >>> import torch
    >>> from metakd.meta.meta_lstm import preprocess
    >>> preprocess(torch.tensor([1.0, 0.0])).tolist()
    [[0.0, 1.0], [-1.0, 0.0]]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from metakd.meta.functional import flatten_params, unflatten_params
from metakd.meta.meta_lstm_attention import MetaAttention
from metakd.meta.rules import UpdateRule

__all__ = ["GATE_FEEDBACK", "MetaLSTMOptimizer", "preprocess"]

GATE_FEEDBACK = ("logit", "sigmoid")
"""What the meta-learner cell feeds back as its previous gates: ``"logit"`` (pre-sigmoid, the
original code) or ``"sigmoid"`` (the paper's equations)."""

Params = dict[str, Tensor]
State = tuple[Tensor, Tensor, Tensor, Tensor]


def preprocess(x: Tensor, p: float = 10.0, dim: int = -1) -> Tensor:
    """The gradient and loss preprocessing of Andrychowicz et al. (2016), ``[...] -> [..., 2]``.

    ``(log|x| / p, sign x)`` where ``|x| >= e^-p``, ``(-1, e^p x)`` elsewhere (markdtw's
    ``>=``; without its ``1e-8`` inside the logarithm). The two features are stacked along
    ``dim`` of the result (``dim=0``: ``[2, ...]``).

    Example:
        >>> import math, torch
        >>> preprocess(torch.tensor([-math.exp(-5), math.exp(-12)])).tolist()  # doctest: +ELLIPSIS
        [[-0.5, -1.0], [-1.0, 0.135...]]
    """
    if p <= 0:
        raise ValueError(f"p must be positive, got {p}")
    threshold = math.exp(-p)
    big = x.abs() >= threshold
    first = torch.where(big, torch.log(x.abs().clamp_min(threshold)) / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim)


def _tanh(v: Tensor) -> Tensor:
    """``tanh(v)`` as ``2 sigmoid(2v) - 1``: the same function, equal up to float rounding.

    With torch 2.14.1 on the CPU, ``tanh`` costs several times what ``sigmoid`` does on the
    cell's ``[H, P]`` states (the Meta-LSTM step's profile in
    ``benchmarks/results/method_speed_cpu_2026-12-07_pool.json``: 152 ms of ``tanh``, two
    calls per update, against 43 ms of ``sigmoid``, three calls on the same shapes and two on
    ``[P]``). Doubling ``v`` and ``2s - 1`` are two cheap passes.

    Example:
        >>> v = torch.linspace(-6, 6, 101, dtype=torch.float64)
        >>> bool(torch.allclose(_tanh(v), torch.tanh(v), rtol=0, atol=1e-15))
        True
    """
    return torch.sigmoid(v * 2).mul(2).sub_(1)


class MetaLSTMOptimizer(UpdateRule):
    """The Meta-LSTM cell of Ravi & Larochelle (ICLR 2017) as an inner-loop update rule.

    See the module docstring for the equations. The state carried across an episode's updates
    is ``(h, s, f~, i~)``: the first LSTM layer's hidden and cell states ``[H, P]`` and the
    previous gates ``[P]``. Gradients and the loss reach the rule as constants
    (``constant_grads = True``).

    The states are held unit-major, ``[H, P]``: each unit's values over the ``P``
    coordinates lie next to each other, so every gate is one contiguous block of the cell's
    single ``[4H, P]`` matrix product and its sigmoid runs on contiguous memory (on the
    2-core CPU with torch 2.14.1, a sigmoid over a strided ``[P, H]`` column block took
    7 times as long as over a contiguous one, and the cell dominated the Meta-LSTM's step).
    The two loss features, the same for every coordinate, enter that product as part of its
    bias, and both tanh are taken through the sigmoid (:func:`_tanh`).

    Args:
        params: the adapted parameters (``{name: tensor}`` or ``named_parameters()``); only
            their number ``P`` is used (the rule works on the flattened vector).
        hidden_size: ``H``, the first layer's units (20; MLAL: 4).
        p: the preprocessing's ``p``.
        gate_feedback: ``"logit"`` (the code) or ``"sigmoid"`` (the paper).
        grad_scale: the gradients are multiplied by it before use (both codes divide the
            mean-loss gradient by the configured batch size: ``1 / batch_size``).
        attention: MLAL's self-attention over the LSTM states (:class:`MetaAttention`).
        attention_chunk: coordinates per attention row (default from ``P``).
        attention_key_dim: width of the attention's queries and keys.
        attention_softmax: normalise the attention map with a softmax.
        forget_bias: the range of ``b_F``.
        input_bias: the range of ``b_I``.
        init_range: every other weight is ``U(-init_range, init_range)``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Linear(3, 2)
        >>> rule = MetaLSTMOptimizer(net.named_parameters())
        >>> params = dict(net.named_parameters())
        >>> grads = {n: torch.ones_like(p) for n, p in params.items()}
        >>> new, state = rule(grads, params, rule.init_state(params), 0, torch.tensor(0.7))
        >>> new["weight"].shape, state[0].shape
        (torch.Size([2, 3]), torch.Size([20, 8]))
    """

    constant_grads = True

    def __init__(
        self,
        params: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]],
        hidden_size: int = 20,
        p: float = 10.0,
        gate_feedback: str = "logit",
        grad_scale: float = 1.0,
        attention: bool = False,
        attention_chunk: int | None = None,
        attention_key_dim: int = 20,
        attention_softmax: bool = False,
        forget_bias: tuple[float, float] = (4.0, 5.0),
        input_bias: tuple[float, float] = (-5.0, -4.0),
        init_range: float = 0.01,
    ) -> None:
        super().__init__()
        items = list(params.items() if isinstance(params, Mapping) else params)
        if not items:
            raise ValueError("MetaLSTMOptimizer needs at least one parameter")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        if gate_feedback not in GATE_FEEDBACK:
            raise ValueError(f"gate_feedback={gate_feedback!r}; use one of {GATE_FEEDBACK}")
        if not math.isfinite(grad_scale) or grad_scale <= 0:
            raise ValueError(f"grad_scale must be a positive float, got {grad_scale}")
        if p <= 0:
            raise ValueError(f"p must be positive, got {p}")
        self.names = [n for n, _ in items]
        self.num_params = sum(t.numel() for _, t in items)
        self.hidden_size, self.p = int(hidden_size), float(p)
        self.gate_feedback, self.grad_scale = gate_feedback, float(grad_scale)
        h = self.hidden_size
        r = init_range
        self.lstm_weight = nn.Parameter(torch.empty(4 + h, 4 * h).uniform_(-r, r))
        self.lstm_bias = nn.Parameter(torch.empty(4 * h).uniform_(-r, r))
        self.forget_weight = nn.Parameter(torch.empty(h + 2).uniform_(-r, r))
        self.forget_bias = nn.Parameter(torch.empty(()).uniform_(*forget_bias))
        self.input_weight = nn.Parameter(torch.empty(h + 2).uniform_(-r, r))
        self.input_bias = nn.Parameter(torch.empty(()).uniform_(*input_bias))
        self.attention: MetaAttention | None = (
            MetaAttention(self.num_params, h, attention_chunk, attention_key_dim,
                          attention_softmax) if attention else None)
        self._pinned: tuple[float, float] | None = None

    def pin_gates(self, forget: float | None, input: float | None = None) -> None:
        """Replace ``sigmoid(f~)`` and ``sigmoid(i~)`` by constants (``None``: unpin).

        With ``forget=1`` and ``input=lr`` the cell is plain SGD with rate ``lr`` (a test of
        the wiring; the learned weights are then unused).

        Example:
            >>> import torch
            >>> rule = MetaLSTMOptimizer({"w": torch.zeros(1)})
            >>> rule.pin_gates(1.0, 0.5)
            >>> rule({"w": torch.ones(1)}, {"w": torch.zeros(1)}, rule.init_state({"w": torch.zeros(1)}),
            ...      0, torch.tensor(1.0))[0]["w"].tolist()
            [-0.5]
        """
        if forget is None:
            self._pinned = None
            return
        if input is None:
            raise ValueError("pin_gates needs both forget and input")
        self._pinned = (float(forget), float(input))

    def init_state(self, params: Mapping[str, Tensor]) -> State:
        """Zero LSTM states ``[H, P]`` and zero previous gates ``[P]``."""
        ref = next(iter(params.values()))
        n = sum(t.numel() for t in params.values())
        h = ref.new_zeros(self.hidden_size, n)
        return h, h.clone(), ref.new_zeros(n), ref.new_zeros(n)

    def forward(
        self, grads: Mapping[str, Tensor], params: Mapping[str, Tensor], state: Any, step: int,
        loss: Tensor | None,
    ) -> tuple[Params, State]:
        """One update of the whole parameter vector (see the module docstring)."""
        if loss is None:
            raise ValueError("MetaLSTMOptimizer needs the support loss (it is an input)")
        theta = flatten_params(params)
        if theta.numel() != self.num_params:
            raise ValueError(f"MetaLSTMOptimizer was built for {self.num_params} parameters, "
                             f"got {theta.numel()}")
        g = flatten_params({n: grads[n] for n in params})
        if self.grad_scale != 1.0:
            g = g * self.grad_scale
        if state is None:
            state = self.init_state(params)
        h, s, f_prev, i_prev = state
        hs = self.hidden_size
        weight = self.lstm_weight
        # The loss's two features are the same for every coordinate: their share of the
        # product is a [4H] vector, added to the bias instead of two rows of every column.
        lp = preprocess(loss.detach().reshape(()).to(theta.dtype), self.p)
        bias = torch.addmv(self.lstm_bias, weight[:2].t(), lp)
        # The cell gate's tanh(v) is taken as 2 sigmoid(2v) - 1 (see _tanh), with its columns
        # of the weights and bias doubled (exact in floating point) instead of a pass over v.
        double = torch.cat([bias.new_ones(3 * hs), bias.new_full((hs,), 2.0)])
        x = torch.cat([preprocess(g, self.p, dim=0), h], 0)  # [2 + H, P]
        z = torch.addmm((bias * double)[:, None], (weight[2:] * double).t(), x)  # [4H, P]
        zi, zf, zo, zg2 = z.chunk(4, 0)  # contiguous [H, P] blocks, one kernel call each
        cell = torch.sigmoid(zg2).mul(2).sub_(1)
        s = torch.addcmul(torch.sigmoid(zf) * s, torch.sigmoid(zi), cell)
        h = torch.sigmoid(zo) * _tanh(s)
        a = h if self.attention is None else self.attention(h.t()).t()
        wf, wi = self.forget_weight, self.input_weight
        f = wf[:hs] @ a + theta * wf[hs] + f_prev * wf[hs + 1] + self.forget_bias
        i = wi[:hs] @ a + theta * wi[hs] + i_prev * wi[hs + 1] + self.input_bias
        if self._pinned is not None:
            theta = self._pinned[0] * theta - self._pinned[1] * g
        else:
            theta = torch.sigmoid(f) * theta - torch.sigmoid(i) * g
        if self.gate_feedback == "sigmoid":
            f, i = torch.sigmoid(f), torch.sigmoid(i)
        return unflatten_params(theta, params), (h, s, f, i)

    def extra_repr(self) -> str:
        return (f"params={self.num_params}, hidden={self.hidden_size}, p={self.p}, "
                f"gate_feedback={self.gate_feedback!r}, grad_scale={self.grad_scale:g}")
