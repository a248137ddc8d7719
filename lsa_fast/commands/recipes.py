"""The MNIST recipes that `lsa-fast train --help` ends with; the README's section
"MNIST: a first real run" gives the same command lines (a test checks that they agree)
with the measurements behind the numbers."""

MNIST_QUICK = ("lsa-fast train --model B --dataset mnist --data DIR --limit 5000 --base pgd --steps 3 --eps 0.3 "
               "--eps-warmup-epochs 2 --epochs 3 --optimizer adam --learning-rate 0.001 --out runs/mnist-quick")
MNIST_TABLE_3 = ("lsa-fast train --model B --dataset mnist --data DIR --base apgd --lr-layers 0 --gamma 1.0 --eps 0.3 "
                 "--steps 10 --epochs 10 --optimizer adam --learning-rate 0.001 --out runs/mnist-apgd-lr-l0")

TRAIN_EPILOG = f"""\
MNIST recipes (model B; DIR holds the four IDX files of MNIST):

  quick check: 5 000 training images, PGD-3 at eps 0.3 after an eps ramp (epoch 1
  clean, epoch 2 at 0.15), Adam; about 2.5 min of CPU time (a few minutes on two
  cores); clean test accuracy about 90 %, FGSM eps 0.3 about 43 %:
    {MNIST_QUICK}

  the paper's Table 3 (AT-APGD-LR-L0 on all 60 000 images, 10 epochs): about 3.5 h
  on two CPU cores (~50 img/s), a few minutes on a GPU (~4.3k img/s per process on
  an H200); the paper reports 98.97 % clean and 97.17 % under FGSM at eps 0.3:
    {MNIST_TABLE_3}

  then: lsa-fast eval --checkpoint runs/mnist-quick --attack fgsm --eps 0,0.1,0.2,0.3

If the test accuracy stays at the share of one class (about 11 %), the model has
collapsed (train says so): add --eps-warmup-epochs 2, or more epochs or steps.
See the README's "MNIST: a first real run".
"""
