"""What every pretraining/fine-tuning LightningModule shares: optimizer and schedule from plain
config dicts, the divergence check, the tokenizer carried inside checkpoints, and the runtime
options (compile, activation checkpointing, FSDP2 sharding, fused loss) applied in `configure_model`.

Hyperparameters are plain values only (the dicts that build the network, optimizer and
schedule), so `Module.load_from_checkpoint(path)` rebuilds the module without Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch

from lmpretrain.distributed.parallel import clip_grad_norm_
from lmpretrain.errors import ConfigError, TrainingDivergedError
from lmpretrain.models.blocks import Block
from lmpretrain.optim import build_optimizer, build_scheduler


def block_flops_per_token(blocks: list[Block], n_embd: int, seq_len: int, other_weights: float = 0) -> float:
    """Training FLOPs (forward + backward) per token of `blocks` run on every token: 6 x their
    weights + the attention scores, 12 * layers * width * seq_len (PaLM, appendix B), plus 6 x
    `other_weights` (a head's weights, times the share of tokens it runs on)."""
    n = sum(p.numel() for b in blocks for p in b.parameters())
    return 6 * (n + other_weights) + 12 * len(blocks) * n_embd * seq_len


@dataclass
class RuntimeOptions:
    """How the network runs, not what it is (`runtime:` in conf/train.yaml); never a hyperparameter.

    compile: `torch.compile` the network (in place, so checkpoint keys do not change) -- not the
        LightningModule, whose `self.log` calls Dynamo cannot trace. Off by default: on a 2-core CPU
        a compiled small model ran slower than eager; on GPUs it is the usual win.
    activation_checkpointing: recompute each Transformer block's activations in backward instead of
        storing them (about one extra forward of compute for O(layers) less activation memory).
    fused_loss: compute LM-head logits and cross-entropy `loss_chunk_tokens` rows at a time,
        recomputing each chunk in backward, so the (tokens, vocab) logits never exist at once.
    float32_matmul_precision: on a GPU, `torch.set_float32_matmul_precision` for the run: `high`
        (default) lets fp32 matmuls use TF32 tensor cores, as nanoGPT and litgpt do; `highest` keeps
        them exact. Without it, Lightning and inductor print a tip on every GPU run. CPU runs are
        left exact whatever it says.
    """

    compile: bool = False
    compile_mode: str | None = None  # default | reduce-overhead | max-autotune
    activation_checkpointing: bool = False
    fused_loss: bool = False
    loss_chunk_tokens: int = 4096
    float32_matmul_precision: str = "high"

    def __post_init__(self) -> None:
        if self.float32_matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"runtime.float32_matmul_precision={self.float32_matmul_precision!r} must be one of "
                              f"{', '.join(MATMUL_PRECISIONS)}")


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's values


def use_matmul_precision(accelerator, runtime: RuntimeOptions) -> None:
    """Apply `runtime.float32_matmul_precision` when the run is on a CUDA GPU (see RuntimeOptions)."""
    if type(accelerator).__name__ == "CUDAAccelerator":
        torch.set_float32_matmul_precision(runtime.float32_matmul_precision)


class LMModule(L.LightningModule):
    """The base of every pretraining objective and downstream task.

    Built in two steps, both explicit: the constructor takes the plain config values that are saved
    as hyperparameters (model, optimizer, schedule, ...); `connect(tokenizer_json, runtime)` hands
    over what the run decides at run time: the tokenizer (saved inside every checkpoint, so
    generation and evaluation need nothing but the .ckpt file) and the runtime options (how the
    network runs, never a hyperparameter). `lmpretrain.run` calls it once; loading a checkpoint
    calls it with the checkpoint's tokenizer.
    """

    network: torch.nn.Module
    # Whether every parameter of the network gets a gradient each step; DDP must otherwise look for
    # unused ones (strategy=ddp resolves `find_unused_parameters: auto` from this).
    uses_every_parameter = True

    def __init__(self, optimizer: dict | None = None, scheduler: dict | None = None):
        super().__init__()
        self.optimizer_cfg = dict(optimizer or {"name": "adamw", "lr": 1e-3})
        self.scheduler_cfg = dict(scheduler or {"name": "constant"})
        self.tokenizer_json: str | None = None
        self.runtime = RuntimeOptions()
        self._model_configured = False
        self._clip_params: tuple[list[torch.nn.Parameter], bool] | None = None  # see _parameters_to_clip
        self._resumed_rng: dict | None = None  # see on_train_batch_start

    def connect(self, tokenizer_json: str | None = None, runtime: RuntimeOptions | None = None) -> None:
        """Hand the module its tokenizer and runtime options (see the class docstring); a subclass
        that needs token ids (e.g. [MASK]) extends it to resolve them."""
        if runtime is not None:
            self.runtime = runtime
        if tokenizer_json is not None:
            self.tokenizer_json = tokenizer_json

    def configure_model(self) -> None:
        """Checkpointing, then sharding (when the strategy shards), then compile; once per module."""
        if self._model_configured:
            return
        self._model_configured = True
        blocks = [m for m in self.network.modules() if isinstance(m, Block)]
        if self.runtime.activation_checkpointing:
            from torch.distributed._composable import checkpoint as checkpoint_activations

            for block in blocks:  # composable API: parameter names (checkpoint keys) stay the same
                checkpoint_activations(block)
        shard = getattr(self.trainer.strategy, "shard", None) if self._trainer is not None else None
        if shard is not None:
            shard(self.network)
        if self.runtime.compile:
            # Sharded: compile block by block so FSDP's hooks stay between compiled regions.
            for module in blocks if shard is not None else [self.network]:
                module.compile(mode=self.runtime.compile_mode)

    def flops_per_token(self, seq_len: int) -> float | None:
        """Training FLOPs (forward + backward) per input token: 6N for the weights plus the attention
        scores, 12 * layers * width * seq_len (PaLM, appendix B); None if the network's shape is unknown.

        Counts every input token, so objectives that put the loss on a subset (MLM's 15%) still pay
        for the full forward and backward.
        """
        c = getattr(self.network, "config", None)
        if not hasattr(c, "n_layer") or not hasattr(c, "n_embd"):
            return None
        layers = c.n_layer
        if hasattr(c, "n_decoder_layer"):  # an encoder-decoder runs both stacks
            layers += c.n_decoder_layer or c.n_layer
        num_params = getattr(self.network, "num_params", None)  # GPT's excludes position embeddings (no matmul)
        n = num_params() if num_params else sum(p.numel() for p in self.network.parameters())
        return 6 * n + 12 * layers * c.n_embd * seq_len

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip by norm (also for parameters sharded as DTensors) and log `train/grad_norm`, the total
        norm before clipping: computed anyway when clipping, else only on logging steps. Called after
        the precision plugin unscaled the gradients."""
        if gradient_clip_algorithm not in (None, "norm"):  # "value": Lightning's
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        logging_step = self._trainer is not None and self.trainer._logger_connector.should_update_logs
        if not gradient_clip_val and not logging_step:
            return
        params, sharded = self._parameters_to_clip()
        clip = clip_grad_norm_ if sharded else torch.nn.utils.clip_grad_norm_
        norm = clip([p for p in params if p.grad is not None],
                    float(gradient_clip_val) if gradient_clip_val else float("inf"))
        if logging_step:
            self.log("train/grad_norm", norm.detach().float().to(self.device))

    def _parameters_to_clip(self) -> tuple[list[torch.nn.Parameter], bool]:
        """The parameters of `clipped_modules()` and whether any is a DTensor, listed once per fit:
        walking the module tree every step cost ~1 ms of a ~50 ms CPU step. Listed at the first
        clipping, after `configure_model` sharded the network; `on_train_start` forgets the list of an
        earlier fit."""
        if self._clip_params is None:
            params = list(self.clipped_modules().parameters())
            self._clip_params = params, any(type(p).__name__ == "DTensor" for p in params)
        return self._clip_params

    def on_train_start(self) -> None:
        self._clip_params = None

    def clipped_modules(self) -> torch.nn.Module:
        """What the one gradient norm (clipping, `train/grad_norm`) covers: the network. ELECTRA widens
        it to everything it trains; distillation clips its projections apart from it."""
        return self.network

    def trained_modules(self) -> torch.nn.Module:
        """What the optimizer updates: the network (heads included), which DDP/FSDP wrap and checkpoints
        name. An objective that trains parts outside it (distillation's projections, ELECTRA's
        generator) returns them with it."""
        return self.network

    def configure_optimizers(self):
        # A trainable parameter the optimizer does not hold would silently never be updated.
        trained = {id(p) for p in self.trained_modules().parameters()}
        if outside := [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in trained]:
            raise RuntimeError(f"{type(self).__name__} has trainable parameters it does not optimize: {outside[:5]}")
        optimizer = build_optimizer(self.trained_modules(), **self.optimizer_cfg)
        scheduler = build_scheduler(optimizer, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"train/loss is {loss.item()} at step {self.global_step}; lower optimizer.lr or set "
                f"trainer.gradient_clip_val, then resume from the last good checkpoint (ckpt_path=...)"
            )

    def log_train_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """Stop on a NaN/inf loss, log `train/loss`, return it (what every `training_step` ends with)."""
        self.check_finite(loss)
        # sync_dist: the mean over all ranks, i.e. the loss of the global batch (a no-op on one process).
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_json"] = self.tokenizer_json
        # Which class to rebuild: `python -m lmpretrain.evaluate` loads any checkpoint by it.
        checkpoint["lmpretrain_module"] = f"{type(self).__module__}.{type(self).__qualname__}"
        # The global generator that dropout draws from (tensors: loadable with weights_only=True).
        # Every rank seeds it alike (seed_everything), so rank 0's state serves them all.
        checkpoint["rng_states"] = {"torch": torch.get_rng_state(),
                                    **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_initialized() else {})}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.connect(tokenizer_json=checkpoint.get("tokenizer_json"))
        self._resumed_rng = checkpoint.get("rng_states")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """A resumed run sets the random state the checkpoint was saved with just before its first step,
        not when it loads: creating the dataloader iterators and the sanity check draw from the
        generator in between, which the uninterrupted run did not. So a model with dropout resumes to
        the losses of the uninterrupted run (it drew other dropout masks before)."""
        if self._resumed_rng is None:
            return
        torch.set_rng_state(self._resumed_rng["torch"])
        if "cuda" in self._resumed_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self._resumed_rng["cuda"])
        self._resumed_rng = None
