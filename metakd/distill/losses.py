"""Pure knowledge-distillation loss functions on logits.

Every function here is plain tensor code: no module state, no Python branching on tensor
*values* (only on shapes and arguments), so each one works on a single task's query logits
``[M, N]`` under :func:`torch.func.vmap` over a stack of tasks ``[T, M, N]``. Logits are
``[..., B, C]`` (rows, classes); the functions that reduce over rows reduce over every leading
row.

Conventions:
    * **The teacher is always stop-gradient.** Each function detaches ``teacher_logits`` itself,
      so no gradient reaches the teacher, whatever the caller did.
    * **Hinton KD** (:func:`kd_loss`) is ``KL(softmax(z_t/T) || softmax(z_s/T))`` per row
      (sum over classes), times ``T²`` when ``t_squared``. Its ``reduction`` picks which code
      it reproduces:

      - ``"batchmean"`` (mean over rows): mdistiller's ``kd_loss``, GDA's ``kd_loss`` and
        torchdistill's ``KDLoss``. torchdistill drops the ``T²`` when its ``alpha`` is unset:
        ``t_squared=False``.
      - ``"mean_elements"`` (sum over all ``B·C`` elements divided by ``B·C``, i.e.
        ``batchmean / C``): ``nn.KLDivLoss()``'s default ``'mean'``, which the official PMAML
        code uses, so its KD weight λ acts as ``λ/C`` on the batchmean KL.
    * **DKD** (:func:`dkd_parts`, :func:`dkd_loss`, :func:`warmup_factor`) follows mdistiller's
      ``DKD``: both parts are sums over the batch divided by ``B`` and multiplied by ``T²``.
      The binary target/non-target probabilities are taken in log space, which equals
      mdistiller's ``log(cat_mask(softmax))`` but never gives ``-inf``.
    * **GDA** (:func:`fisher_rao_loss`, :func:`sinkhorn_loss`, :func:`gda_loss`) follows the
      ``FishRao_Sinkhorn`` class of the official GDA code (``Logit-Distillation-GDA``):
      a Fisher–Rao distance between per-row Gaussian fits of the logits, and an entropic
      optimal-transport (Sinkhorn) cost between the *batches* of standardised distributions.
      ``guard=False`` and ``debias=False`` give the official terms exactly; the defaults add
      numerical guards (finite gradients where the official code gives NaN) and remove the
      entropic bias of the Sinkhorn term (zero at student == teacher).
    * The Sinkhorn term is a **sum** over the batch (it grows about linearly with ``B``), and
      under ``torch.distributed`` each rank computes it on its own slice of the batch: nothing
      is gathered, as in the official code under DDP.
"""

from __future__ import annotations

from metakd.distill.gda import (
    fisher_rao_loss,
    fisher_rao_normal,
    gda_loss,
    logit_moments,
)
from metakd.distill.kd import dkd_loss, dkd_parts, kd_loss, warmup_factor
from metakd.distill.transport import sinkhorn, sinkhorn_cost, sinkhorn_loss, standardize

__all__ = [
    "dkd_loss",
    "dkd_parts",
    "fisher_rao_loss",
    "fisher_rao_normal",
    "gda_loss",
    "kd_loss",
    "logit_moments",
    "sinkhorn",
    "sinkhorn_cost",
    "sinkhorn_loss",
    "standardize",
    "warmup_factor",
]
