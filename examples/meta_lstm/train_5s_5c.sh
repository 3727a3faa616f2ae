#!/bin/bash
#
# 5-shot, 5-class training with the options of markdtw/meta-learning-lstm-pytorch's
# scripts/train_5s_5c.sh (commit fcc68ba), unchanged (those it shares with eval_5s_5c.sh are in
# _options.sh); hyper-parameters of twitter/meta-learning-lstm. Run from the folder holding
# data/miniImagenet/; extra options are passed on (for example --seed 719 or
# --out-dir runs/meta_lstm/5s5c).

. "$(dirname "$0")/_options.sh"

python "$(dirname "$0")/main.py" --mode train \
               "${OPTIONS_5S_5C[@]}" \
               --log-freq 50 \
               --val-freq 1000 \
               "$@"
