#!/usr/bin/env bash
# The CIFAR-100 commands of GDA's "Image Classification/train.sh", with metakd.
# The original (6 GPUs, a ResNet-56 teacher checkpoint named resnet56_72.94.pth):
#   python -m torch.distributed.launch --nproc_per_node=6 train.py --data_dir cache/data/cifar/ \
#     --config configs/cifar_v0.yaml --model resnet20 --distiller kd --teacher resnet56 \
#     --teacher-pretrained cache/ckpt/cifar/resnet56_72.94.pth --gt-loss-weight 2.0 \
#     --kd-loss-weight 1.0 --fisher-rao-lamda 0.02 --sinkhorn-lamda 0.1 --kd-temperature 4.0
# configs/cifar_v0.yaml is the "gda" recipe of metakd's cifar_kd (240 epochs, batch 128 per
# process, Nesterov SGD lr 0.2, cosine with 10 warm-up epochs), so --config is not needed.
# DATA must hold cifar-100-python/ (metakd.data.CIFAR100(DATA, download=True) fetches it).
set -euo pipefail
DATA=${DATA:-cache/data/cifar}
GPUS=${GPUS:-6}
HERE=$(dirname "$0")

# 1. The teacher, trained by the same script without --teacher-pretrained (cross-entropy).
#    Or use a released checkpoint instead: TEACHER=cache/ckpt/cifar/resnet56_72.94.pth
TEACHER=${TEACHER:-runs/gda/resnet56}
if [ ! -e "$TEACHER" ]; then
  torchrun --nproc-per-node="$GPUS" "$HERE/train_cifar.py" --data_dir "$DATA" \
    --model resnet56 --output "$TEACHER"
fi

# 2. The student: ResNet-56 -> ResNet-20 with KD + GDA, the weights of the original train.sh.
torchrun --nproc-per-node="$GPUS" "$HERE/train_cifar.py" --data_dir "$DATA" \
  --model resnet20 --distiller kd --teacher resnet56 --teacher-pretrained "$TEACHER" \
  --gt-loss-weight 2.0 --kd-loss-weight 1.0 --fisher-rao-lamda 0.02 --sinkhorn-lamda 0.1 \
  --kd-temperature 4.0 --output runs/gda/resnet56-resnet20-kd-gda
