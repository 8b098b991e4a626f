"""One objective=distill run for test_distill_ddp.py: `python distill_worker.py OUT.json overrides...`.

As fit_worker.py (whose GlobalLoss it reuses), rank 0 writes the global-batch loss per optimizer step
and each val/loss to OUT.json. Every rank also writes OUT.rank<r>.json: what its teacher was at each
step (eval mode, gradients, parameter types, whether the strategy's wrapped model or the optimizer
holds any of its parameters), whether its weights after fitting are bit-identical to the teacher
checkpoint's, and a digest of each tensor of the trained module (student network and projections). Lightning starts the other ranks by re-running this script (hydra.* arguments ignored).
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest
from fit_worker import GlobalLoss

from conftest import make_cfg
from lmpretrain.checkpoints import read_checkpoint
from lmpretrain.train import build


class TeacherWatch(L.Callback):
    def __init__(self):
        self.steps = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        teacher = pl_module.distill.teacher
        mine = {id(p) for p in teacher.parameters()}
        wrapped = {id(p) for p in trainer.strategy.model.parameters()}
        optimized = {id(p) for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]}
        self.steps.append({
            "training": any(m.training for m in teacher.modules()),
            "requires_grad": any(p.requires_grad for p in teacher.parameters()),
            "has_grad": any(p.grad is not None for p in teacher.parameters()),
            "param_types": sorted({type(p).__name__ for p in teacher.parameters()}),
            "in_wrapped_model": bool(mine & wrapped),
            "in_optimizer": bool(mine & optimized),
            "wrapper": type(trainer.strategy.model).__name__,
            "student_training": pl_module.network.training,
        })


def main() -> None:
    out, overrides = Path(sys.argv[1]), [a for a in sys.argv[2:] if not a.startswith("hydra.")]
    cfg = make_cfg(out.parent, overrides)
    datamodule, module, trainer = build(cfg)
    rec, watch = GlobalLoss(), TeacherWatch()
    trainer.callbacks.extend([rec, watch])
    trainer.fit(module, datamodule=datamodule)
    saved = {k[len("network."):]: v for k, v in
             read_checkpoint(str(cfg.objective.teacher), "teacher")["state_dict"].items()}
    state = module.distill.teacher.state_dict()
    identical = state.keys() == saved.keys() and all(
        v.dtype == saved[k].dtype and torch.equal(v.cpu(), saved[k]) for k, v in state.items())
    rank = trainer.global_rank
    digests = {}
    for name, value in module.state_dict().items():  # same order on every rank: full_tensor() is collective
        full = value.full_tensor() if hasattr(value, "full_tensor") else value
        digests[name] = hashlib.sha256(full.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
    out.with_suffix(f".rank{rank}.json").write_text(json.dumps({
        "rank": rank, "steps": watch.steps, "teacher_identical": identical,
        "teacher_numel": sum(v.numel() for v in state.values()), "student_digests": digests}))
    if rank == 0:
        sharded = [type(p).__name__ for p in module.network.parameters()]
        out.write_text(json.dumps({"loss": rec.loss, "val": rec.val, "world_size": trainer.world_size,
                                   "accumulate": trainer.accumulate_grad_batches, "param_types": sorted(set(sharded))}))


if __name__ == "__main__":
    main()
