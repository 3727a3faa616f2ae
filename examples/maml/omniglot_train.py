"""MAML on Omniglot (Finn et al. 2017), with the options of the MAML-Pytorch port.

    python examples/maml/omniglot_train.py                       # bundled subset, paper settings
    python examples/maml/omniglot_train.py --root data/omniglot  # full Omniglot, Vinyals split
"""

import json

from _args import config, parser

from metakd.recipes import run

if __name__ == "__main__":
    args = parser("omniglot", __doc__.splitlines()[0]).parse_args()
    print(json.dumps(run(config("omniglot", args)), indent=2))
