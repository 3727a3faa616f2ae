#!/bin/bash
#
# 5-shot, 5-class evaluation with the options of markdtw/meta-learning-lstm-pytorch's
# scripts/eval_5s_5c.sh (commit fcc68ba), unchanged (those it shares with train_5s_5c.sh are in
# _options.sh). --resume takes the original's meta-learner-<episode>.pth.tar or a metakd run
# folder; as the original, the test runs --episode-val (100) episodes. Change --resume and pass
# --seed (the original's README says the same), e.g.:
# bash examples/meta_lstm/eval_5s_5c.sh --seed 719

. "$(dirname "$0")/_options.sh"

python "$(dirname "$0")/main.py" --mode test \
               --resume logs-719/ckpts/meta-learner-42000.pth.tar \
               "${OPTIONS_5S_5C[@]}" \
               --log-freq 100 \
               "$@"
