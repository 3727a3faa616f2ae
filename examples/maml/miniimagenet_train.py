"""MAML on miniImageNet (Finn et al. 2017), with the options of the MAML-Pytorch port.

    python examples/maml/miniimagenet_train.py --root data/miniimagenet   # any supported format
"""

import json

from _args import config, describe_inner_loss, parser

from metakd.recipes import run

if __name__ == "__main__":
    args = parser("miniimagenet", __doc__.splitlines()[0]).parse_args()
    if args.root is None:
        raise SystemExit("miniimagenet_train.py: --root is required (the miniImageNet folder)")
    cfg = config("miniimagenet", args)
    print(describe_inner_loss(cfg))
    print(json.dumps(run(cfg), indent=2))
