# The options markdtw/meta-learning-lstm-pytorch's scripts/train_5s_5c.sh and eval_5s_5c.sh
# (commit fcc68ba) share, in their order: 5-shot, 5-class miniImageNet with the
# hyper-parameters of twitter/meta-learning-lstm. Sourced by train_5s_5c.sh and eval_5s_5c.sh.

OPTIONS_5S_5C=(
               --n-shot 5
               --n-eval 15
               --n-class 5
               --input-size 4
               --hidden-size 20
               --lr 1e-3
               --episode 50000
               --episode-val 100
               --epoch 8
               --batch-size 25
               --image-size 84
               --grad-clip 0.25
               --bn-momentum 0.95
               --bn-eps 1e-3
               --data miniimagenet
               --data-root data/miniImagenet/
               --pin-mem True
)
