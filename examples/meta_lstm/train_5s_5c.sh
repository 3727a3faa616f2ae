#!/bin/bash
#
# 5-shot, 5-class training with the options of markdtw/meta-learning-lstm-pytorch's
# scripts/train_5s_5c.sh (commit fcc68ba), unchanged; hyper-parameters of
# twitter/meta-learning-lstm. Run from the folder holding data/miniImagenet/; extra options
# are passed on (for example --seed 719 or --out-dir runs/meta_lstm/5s5c).

python "$(dirname "$0")/main.py" --mode train \
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
               --log-freq 50 \
               --val-freq 1000 \
               "$@"
