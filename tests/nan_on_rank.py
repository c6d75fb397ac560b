"""Run the seqtext CLI with the classifier's N-th training loss made NaN on one torchrun rank only.

    python tests/nan_on_rank.py RANK N seqtext-args...
"""

import os
import sys

from seqtext.cli import main
from seqtext.tasks.classify import ClassifyTask

rank, n, args = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
real_loss = ClassifyTask.loss
calls = 0


def loss(self, net, batch):
    global calls
    calls += 1
    out = real_loss(self, net, batch)
    return out * float("nan") if calls == n and int(os.environ.get("RANK", 0)) == rank else out


ClassifyTask.loss = loss
main(args)
