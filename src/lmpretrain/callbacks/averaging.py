"""`callbacks=ema`: an exponential moving average of the weights, on Lightning's EMAWeightAveraging.

Lightning's callback keeps the average beside the trained weights, swaps it in for validation, saves
it as the checkpoint's `state_dict` (the trained weights ride along as `current_model_state`) and
leaves it in the module at the end of fit. Outside fit it is not inert, and that is what `EMA` fixes:
after `trainer.fit`, the same Trainer's `trainer.test(ckpt_path=best)` (how every run here scores its
test split) loaded the best checkpoint's average and then, in `on_load_checkpoint`, overwrote it with
that checkpoint's trained weights, so the test score never saw the average. (`trainer.validate` came
out right only because its validation hooks swap the average back in.) Here the callback acts during
fit only, its validation swaps included, since outside fit its average is no longer reloaded from the
checkpoint: the module keeps what the checkpoint's `state_dict` holds, the average.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    @staticmethod
    def _fitting(trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._fitting(trainer):  # a resume: both the trained weights and the average come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
