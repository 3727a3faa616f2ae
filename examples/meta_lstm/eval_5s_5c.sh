#!/bin/bash
#
# 5-shot, 5-class evaluation with the options of markdtw/meta-learning-lstm-pytorch's
# scripts/eval_5s_5c.sh (commit fcc68ba), unchanged. --resume takes the original's
# meta-learner-<episode>.pth.tar or a metakd run folder; as the original, the test runs
# --episode-val (100) episodes. Change --resume and pass --seed (the original's README says
# the same), e.g.: bash examples/meta_lstm/eval_5s_5c.sh --seed 719

python "$(dirname "$0")/main.py" --mode test \
               --resume logs-719/ckpts/meta-learner-42000.pth.tar \
               --n-shot 5 \
               --n-eval 15 \
               --n-class 5 \
               --input-size 4 \
               --hidden-size 20 \
               --lr 1e-3 \
               --episode 50000 \
               --episode-val 100 \
               --epoch 8 \
               --batch-size 25 \
               --image-size 84 \
               --grad-clip 0.25 \
               --bn-momentum 0.95 \
               --bn-eps 1e-3 \
               --data miniimagenet \
               --data-root data/miniImagenet/ \
               --pin-mem True \
               --log-freq 100 \
               "$@"
