"""Run the seqtext CLI in a subprocess that SIGKILLs itself at a chosen moment.

    python tests/killable.py step N  seqtext-args...   # die inside the N-th classifier loss call
    python tests/killable.py trainstep N seqtext-args...  # die at the start of the N-th training
                                                          # step, any task (each rank under torchrun)
    python tests/killable.py checkpoint N seqtext-args...  # die in the N-th checkpoint write,
                                                          # after the temp file, before the rename

Under torchrun, KILL_RANK=R kills that rank only (the others must notice).
"""

import os
import signal
import sys

from seqtext.cli import main
from seqtext.tasks.classify import ClassifyTask
from seqtext.train import Trainer

mode, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
count = 0


def die_at_n():
    global count
    count += 1
    if count == n and os.environ.get("KILL_RANK", os.environ.get("RANK")) == os.environ.get("RANK"):
        os.kill(os.getpid(), signal.SIGKILL)


if mode == "step":
    real_loss = ClassifyTask.loss

    def loss(self, net, batch):
        die_at_n()
        return real_loss(self, net, batch)

    ClassifyTask.loss = loss
elif mode == "trainstep":
    real_step = Trainer._step

    def _step(self, batch):
        die_at_n()
        return real_step(self, batch)

    Trainer._step = _step
elif mode == "checkpoint":
    real_replace = os.replace

    def replace(src, dst, *a, **kw):
        if str(dst).endswith("checkpoint.safetensors"):
            die_at_n()
        return real_replace(src, dst, *a, **kw)

    os.replace = replace
main(args)
