"""Child process of test_crash_proof_saves: save last.ckpt over and over until killed. Checkpoint n
holds `n` in every element of its tensors, so a reader can tell a whole file from a mix of two.
Prints each n once saved.

    save_loop.py FOLDER NUMEL plugin   the Trainer's plugin, AtomicCheckpointIO (imports Lightning: slow start)
    save_loop.py FOLDER NUMEL atomic   the same save (atomic_torch_save) without Lightning
    save_loop.py FOLDER NUMEL HOW stall   after the first whole save, write half of the next temp file,
                                          print "mid" and wait to be killed: a kill that lands mid-write
                                          for certain, where a random moment may miss every write
"""

import os
import sys
import time

import torch

from lmpretrain.atomic import atomic_torch_save

folder, numel, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
stall = sys.argv[4:] == ["stall"]
if how == "plugin":
    from lmpretrain.checkpoints import AtomicCheckpointIO

    save = AtomicCheckpointIO().save_checkpoint
else:
    save = atomic_torch_save
n = 0
while True:
    n += 1
    save({"n": n, "state_dict": {"w": torch.full((numel,), float(n)), "b": torch.full((7,), float(n))}},
         f"{folder}/last.ckpt")
    print(n, flush=True)
    if stall and n == 1:
        real_write = os.write

        def write_half_then_wait(fd, data, real_write=real_write):
            real_write(fd, bytes(data[: len(data) // 2]))
            print("mid", flush=True)
            time.sleep(600)

        os.write = write_half_then_wait  # lmpretrain.atomic looks os.write up at each call
