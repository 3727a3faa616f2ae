"""Generate the figures of the documentation site (``docs/images/*.png``).

    .venv/bin/python docs/scripts/make_figures.py            # all of them, full length
    .venv/bin/python docs/scripts/make_figures.py --steps 20 --out /tmp/figs   # a quick check

- ``maml_learning_curve.png`` and ``maml_episode.png`` (the MAML tutorial): a short MAML run
  on the bundled Omniglot, with the same settings as the tutorial, drawn with
  :func:`metakd.engine.plot_learning_curve` and :func:`metakd.cli.episode_picture`;
- ``maml_speed_cpu.png`` (the Benchmarks page): the speed table of
  ``benchmarks/results/maml_speed_cpu_2026-12-07_heap_ab.json`` as a bar chart.

``tests/test_docs.py`` calls these functions with a tiny budget, so the code that drew the
committed pictures keeps working.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "docs" / "images"
SPEED_JSON = ROOT / "benchmarks" / "results" / "maml_speed_cpu_2026-12-07_heap_ab.json"
SPEED_RUN = "run of 2026-12-07: the default, and commit 40d8d66's default (glibc's heap)"

# (JSON method key, label) in the order of the Benchmarks page's table
SPEED_METHODS = (
    ("metakd:auto", "metakd default"),
    ("metakd:auto:heap=plain", "40d8d66 default (glibc's heap)"),
    ("learn2learn", "learn2learn"),
)


def maml_figures(out_dir: str | Path, steps: int = 300, val_tasks: int = 100, seed: int = 0) -> list[Path]:
    """Train MAML on the bundled Omniglot for ``steps`` meta-iterations; draw its curve and an episode.

    Returns the two PNG paths (``maml_learning_curve.png``, ``maml_episode.png``).
    """
    import tempfile

    import torch

    import metakd
    from metakd.cli import episode_picture
    from metakd.engine import plot_learning_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train = metakd.few_shot(metakd.Omniglot(split="train"), 5, 1, 15, meta_batch_size=16,
                            seed=seed, progress=False)
    val = metakd.few_shot(metakd.Omniglot(split="test"), 5, 1, 15, num_tasks=val_tasks, seed=1,
                          progress=False)
    maml = metakd.MAMLWrapper(metakd.create("maml_omniglot", num_classes=5), inner_lr=0.4)
    optimizer = torch.optim.Adam(maml.parameters(), lr=3e-3)
    with tempfile.TemporaryDirectory() as run_dir:
        metakd.fit(maml, train, optimizer, steps, val_data=val, val_every=max(1, steps // 6),
                   out_dir=run_dir, log_every=max(1, steps // 60), progress=False,
                   tensorboard=False)
        curve = plot_learning_curve(Path(run_dir, "log.jsonl"), out / "maml_learning_curve.png",
                                    title=f"MAML, 5-way 1-shot, bundled Omniglot ({steps} steps)")
    episode = next(iter(val))
    pic = out / "maml_episode.png"
    episode_picture(episode, scale=2).save(pic)
    return [Path(curve), pic]


def speed_chart(png: str | Path, results: str | Path = SPEED_JSON) -> Path:
    """Bar chart of tasks/s per config and method from a ``benchmarks.maml_speed`` JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(results).read_text())["results"]
    configs = list(data)
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.6), squeeze=False)
    for ax, config in zip(axes[0], configs):
        rows = [(label, data[config][key]["tasks_per_s"]) for key, label in SPEED_METHODS
                if key in data[config]]
        labels, values = zip(*rows)
        colors = ["#3b6ea5" if not label.startswith("learn2learn") else "#999999" for label in labels]
        bars = ax.bar(range(len(values)), values, color=colors)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(config, fontsize=10)
        ax.set_ylabel("tasks / s (higher is better)")
        ax.margins(y=0.15)
    fig.suptitle(f"MAML meta-training speed, 2-core CPU ({SPEED_RUN})", fontsize=11)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(IMAGES), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=300, help="MAML meta-iterations")
    args = parser.parse_args()
    paths = [*maml_figures(args.out, args.steps), speed_chart(Path(args.out) / "maml_speed_cpu.png")]
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
