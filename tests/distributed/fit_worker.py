"""One training run for the multi-process tests: `python fit_worker.py OUT.json [ckpt=PATH] overrides...`.

Lightning starts the other ranks by re-running this script (it appends hydra.* arguments, ignored
here). Rank 0 writes, per optimizer step, the loss of the global batch (mean over micro-batches
and ranks) and each validation's val/loss.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest
from conftest import make_cfg  # noqa: E402
from lmpretrain.train import build  # noqa: E402


class GlobalLoss(L.Callback):
    def __init__(self):
        self.loss, self.val, self._sum = {}, {}, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._sum += float(outputs["loss"])  # Lightning divides it by accumulate_grad_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            total = trainer.strategy.reduce(torch.tensor(self._sum), reduce_op="mean")
            self.loss[trainer.global_step] = float(total)
            self._sum = 0.0

    def on_validation_end(self, trainer, pl_module):
        if "val/loss" in trainer.callback_metrics:
            self.val[trainer.global_step] = float(trainer.callback_metrics["val/loss"])


def main() -> None:
    out, args = Path(sys.argv[1]), [a for a in sys.argv[2:] if not a.startswith("hydra.")]
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), None)
    overrides = [a for a in args if not a.startswith("ckpt=")]
    cfg = make_cfg(out.parent, overrides)
    datamodule, module, trainer = build(cfg)
    rec = GlobalLoss()
    trainer.callbacks.append(rec)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    sharded = [type(p).__name__ for p in module.network.parameters()]
    spread = replica_spread(module) if set(sharded) == {"Parameter"} else None  # a collective: every rank
    if trainer.global_rank == 0:
        out.write_text(json.dumps({"loss": rec.loss, "val": rec.val, "world_size": trainer.world_size,
                                   "accumulate": trainer.accumulate_grad_batches, "param_types": sorted(set(sharded)),
                                   "replica_spread": spread}))


def replica_spread(module) -> float:
    """The largest difference between ranks of a fingerprint of every weight the optimizer trains (the
    network and whatever `trained_modules` adds, e.g. ELECTRA's generator): 0 when the replicas agree."""
    flat = torch.cat([p.detach().float().flatten() for p in module.trained_modules().parameters()])
    fingerprint = torch.stack([flat.sum(), flat.square().sum(), (flat * torch.linspace(0, 1, len(flat))).sum()])
    if not torch.distributed.is_initialized():
        return 0.0
    high, low = fingerprint.clone(), fingerprint.clone()
    torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
    return float((high - low).abs().max())


if __name__ == "__main__":
    main()
