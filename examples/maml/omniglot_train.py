"""MAML on Omniglot (Finn et al. 2017), with the options of the MAML-Pytorch port.

    python examples/maml/omniglot_train.py                       # bundled subset, paper settings
    python examples/maml/omniglot_train.py --root data/omniglot  # full Omniglot, Vinyals split
"""

import json

from _args import config, describe_inner_loss, parser

from metakd.recipes import run

if __name__ == "__main__":
    args = parser("omniglot", __doc__.splitlines()[0]).parse_args()
    cfg = config("omniglot", args)
    print(describe_inner_loss(cfg))
    print(json.dumps(run(cfg), indent=2))
