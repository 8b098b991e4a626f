from lmpretrain.optim.optimizers import build_optimizer, check_optimizer_config, weight_decay_groups
from lmpretrain.optim.schedules import build_scheduler, cosine_with_warmup

__all__ = ["build_optimizer", "build_scheduler", "check_optimizer_config", "cosine_with_warmup", "weight_decay_groups"]
