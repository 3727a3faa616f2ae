"""Progress bars: the training bar, and the default that switches every other bar off.

:class:`TrainingBar` counts steps out of ``steps``, or seconds out of a time budget.

Bars that a run shows without being asked (decoding a data set into the cache, downloading
it) take ``progress=None``, which means "the current default": :func:`show_progress` reads
it, and :func:`progress_bars` sets it for a block of code. :func:`metakd.recipes.run` and the
``metakd`` command set it from their own ``progress`` setting (``--no-progress``), so a quiet
run is quiet from the data it builds to its test, without a flag threaded through every
reader. An explicit ``progress=True`` or ``False`` always wins over the default.
"""

from __future__ import annotations

from typing import Any

from metakd._progress import progress_bars, show_progress

__all__ = ["TrainingBar", "progress_bars", "show_progress"]


def _tqdm(**kwargs: Any) -> Any:
    """Create the bar (a seam: tests wrap it to capture the output)."""
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


class TrainingBar:
    """One tqdm bar for :func:`metakd.engine.fit`, counting steps or seconds.

    Without a time budget the bar counts steps up to ``steps`` and tqdm's ETA is the time to
    the last step. With ``max_seconds`` a run ends at the budget long before ``steps`` (say
    60,000 meta-iterations) on most machines, so an ETA to ``steps`` would be meaningless: the
    bar's total is then the budget in seconds (unit ``s``), it advances with the elapsed time,
    and its postfix shows the step count and the throughput.

    Args:
        steps: the run's total steps.
        start: steps already done (a resumed run).
        max_seconds: the time budget, or ``None``.
        enabled: ``False`` shows nothing.
        desc: the bar's label.

    Example:
        >>> bar = TrainingBar(steps=60_000, start=0, max_seconds=120.0, enabled=False)
        >>> bar.total, bar.unit
        (120.0, 's')
        >>> bar.close()
    """

    def __init__(self, steps: int, start: int, max_seconds: float | None, enabled: bool,
                 desc: str = "train") -> None:
        self.budget = max_seconds
        self.total: float = float(steps) if max_seconds is None else float(max_seconds)
        self.unit = "step" if max_seconds is None else "s"
        self._post: dict[str, str] = {}
        if max_seconds is None:
            self.bar = _tqdm(total=steps, initial=start, desc=desc, unit="step",
                             disable=not enabled, dynamic_ncols=True)
        else:
            self.bar = _tqdm(
                total=float(max_seconds), initial=0.0, desc=desc, unit="s", disable=not enabled,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                           "[{elapsed}<{remaining}{postfix}]",
            )
            self._post["step"] = str(start)

    def update(self, step: int, elapsed: float) -> None:
        """Record that ``step`` steps are done after ``elapsed`` seconds of this run."""
        if self.budget is None:
            self.bar.update(1)
            return
        self._post["step"] = str(step)
        self.bar.set_postfix(self._post, refresh=False)
        self.bar.update(max(0.0, min(elapsed, self.budget) - self.bar.n))

    def show(self, loss: float, accuracy: float, terms: dict[str, float], rate: float,
             unit: str) -> None:
        """Show the latest loss, accuracy, named terms (compactly) and items per second."""
        post = {"step": self._post["step"]} if "step" in self._post else {}
        post["loss"] = f"{loss:.3f}"
        if accuracy == accuracy:  # not NaN
            post["acc"] = f"{accuracy:.3f}"
        for name, v in terms.items():
            post.setdefault(name, f"{v:.3g}")
        post[f"{unit}/s"] = f"{rate:.0f}"
        self._post = post
        self.bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()
