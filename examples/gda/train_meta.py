"""Meta-Baseline (stage 2) with the options of GDA's / W2S's ``train_meta.py``.

    # the plain student (from its classifier run; the original's plain command crashes)
    python examples/gda/train_meta.py --config examples/gda/configs/meta/train_meta_mini.yaml \\
        --res_type resnet36_bottle --root data/mini-imagenet --gpu 0,1
    # KD + GDA from the classifier teacher, or (--teacher_meta_model) from the meta teacher
    python examples/gda/train_meta.py --config examples/gda/configs/meta/train_meta_mini_kd.yaml \\
        --res_type resnet36_bottle --teacher_res_type resnet12_bottle [--teacher_meta_model] \\
        --root data/mini-imagenet --gpu 0,1

Options as ``train_classifier.py`` (see there), plus ``--teacher_meta_model``. The teacher's
temperature is its checkpoint's (a classifier teacher: 10); ``teacher_temperature: 10`` in
the YAML reproduces the original, which leaves a meta teacher at 10. Same as
``metakd train meta_baseline ...``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_classifier import main

if __name__ == "__main__":
    from metakd.cli import guarded

    raise SystemExit(guarded(lambda: main("meta"), "train_meta.py"))
