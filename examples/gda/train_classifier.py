"""Classifier-Baseline (stage 1) with the options of GDA's / W2S's ``train_classifier.py``.

    # the plain teacher and student encoders (the original's plain commands crash; these run)
    python examples/gda/train_classifier.py --config examples/gda/configs/classifier/train_classifier_mini.yaml \\
        --res_type resnet12_bottle --root data/mini-imagenet --gpu 0,1,2,3
    # ResNet-12 (bottle) -> ResNet-36 (bottle), KD + GDA, weak to strong
    python examples/gda/train_classifier.py --config examples/gda/configs/classifier/train_classifier_mini_kd.yaml \\
        --res_type resnet36_bottle --teacher_res_type resnet12_bottle --root data/mini-imagenet --gpu 0,1,2,3

The YAML file is the run: its values run unless an option below is given on the command line
(the original's command-line defaults silently replace its YAML values; here they do not).
``--gpu 0,1,2,3`` starts one process per GPU under ``torch.distributed.run`` (the original
used ``DataParallel``). Run folders go to ``--out_root`` (default ``$OUT_PATH`` or ``save``)
under the original's names, so ``load_encoder`` / ``teacher_load`` paths of the meta configs
find them. Same as ``metakd train classifier_baseline ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from metakd.recipes import ClassifierBaselineConfig, MetaBaselineConfig, run
from metakd.recipes.baseline_options import from_original, launch_gpus, read_original
from metakd.recipes.options import add_aliases, add_config_arguments, option_values
from metakd.recipes.originals import GDA_FEWSHOT


def parser(stage: str) -> argparse.ArgumentParser:
    """The original options (``None`` unless given), then the KD and metakd options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="a YAML config (see examples/gda/configs)")
    p.add_argument("--res_type", help="the student's encoder, a GDA name (replaces "
                   "model_args.encoder): resnet12 is GDA's, without max-pooling; resnet18 "
                   "and resnet36 are the _bottle networks (docs/originals/gda.md)")
    p.add_argument("--teacher_res_type", help="the teacher's encoder, a GDA name (with a "
                   "teacher_load)")
    if stage == "meta":
        p.add_argument("--teacher_meta_model", action="store_true",
                       help="the teacher is the 1-shot Meta-Baseline run, not the classifier")
    p.add_argument("--name", help="run folder name (default: the original's)")
    p.add_argument("--tag", help="suffix of the run folder name")
    p.add_argument("--gpu", help="GPU ids, e.g. 0,1 (several: one process each)")
    kd = p.add_argument_group("distillation (override kd_loss_config only when given) and "
                              "metakd's options")
    add_aliases(kd, MetaBaselineConfig if stage == "meta" else ClassifierBaselineConfig,
                GDA_FEWSHOT, reference="the file's, else the recipe's")
    add_config_arguments(kd, ClassifierBaselineConfig, only=("root",))
    kd.add_argument("--out_root", default=os.environ.get("OUT_PATH", "save"),
                    help="where run folders go (default: $OUT_PATH or save)")
    kd.add_argument("--device", help="torch device (default: cuda with --gpu, else cpu)")
    return p


def main(stage: str = "classifier", argv: list[str] | None = None) -> dict[str, Any]:
    """Parse, map the YAML and options onto the recipe, run, print the result line."""
    args = parser(stage).parse_args(argv)
    device = args.device or launch_gpus(args.gpu)
    cfg = from_original(read_original(args.config, stage), stage, res_type=args.res_type,
                        teacher_res_type=args.teacher_res_type,
                        teacher_meta_model=getattr(args, "teacher_meta_model", False),
                        out_root=args.out_root, name=args.name, tag=args.tag, root=args.root,
                        overrides={**option_values(args, aliases=GDA_FEWSHOT),
                                   "device": device})
    results = run(cfg, progress=sys.stderr.isatty())
    if results.get("test") is not None:
        print(f"{stage} {cfg.arch} {cfg.dataset}: test {results['test_str']}  [{cfg.out_dir}]",
              flush=True)
        print(json.dumps({**results, "out_dir": cfg.out_dir}))
    return results


if __name__ == "__main__":
    from metakd.cli import guarded

    raise SystemExit(guarded(lambda: main("classifier"), "train_classifier.py"))
