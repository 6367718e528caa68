"""Optimizers from `config.train`: Adafactor (the PaLI/T5X default) or AdamW, warmup + decay,
global-norm clipping and frozen parameter groups by regex."""

from __future__ import annotations

import re

import flax
import optax

SCHEDULES = ("constant", "linear", "cosine", "rsqrt")
OPTIMIZERS = ("adafactor", "adamw")


def learning_rate_schedule(train_cfg) -> optax.Schedule:
    """Linear warmup to `learning_rate`, then `schedule` down to end_lr_fraction * lr."""
    lr = float(train_cfg.learning_rate)
    warmup = int(train_cfg.warmup_steps)
    total = int(train_cfg.num_steps)
    end = lr * float(train_cfg.end_lr_fraction)
    name = train_cfg.schedule
    decay_steps = max(total - warmup, 1)
    if name == "constant":
        decay = optax.constant_schedule(lr)
    elif name == "linear":
        decay = optax.linear_schedule(lr, end, decay_steps)
    elif name == "cosine":
        decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=end / lr if lr else 0.0)
    elif name == "rsqrt":
        decay = lambda step: lr * (max(warmup, 1) / (step + max(warmup, 1))) ** 0.5
    else:
        raise ValueError(f"Unknown config.train.schedule {name!r}; use one of {SCHEDULES}.")
    if warmup <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def trainable_mask(params, freeze_regex: str):
    """Pytree of bools: False for parameters whose 'a/b/c' path matches freeze_regex."""
    flat = flax.traverse_util.flatten_dict(params, sep="/")
    if not freeze_regex:
        mask = {k: True for k in flat}
    else:
        pattern = re.compile(freeze_regex)
        mask = {k: not pattern.search(k) for k in flat}
        if all(mask.values()):
            raise ValueError(f"config.train.freeze_regex={freeze_regex!r} matches no parameter; "
                             f"names look like {sorted(flat)[:3]}.")
        if not any(mask.values()):
            raise ValueError(f"config.train.freeze_regex={freeze_regex!r} freezes every "
                             "parameter; nothing would train.")
    return flax.traverse_util.unflatten_dict(mask, sep="/")


def make_optimizer(train_cfg, params) -> optax.GradientTransformation:
    """The full update rule; `params` (unboxed, may be abstract) is used for the frozen mask."""
    schedule = learning_rate_schedule(train_cfg)
    name = train_cfg.optimizer
    if name == "adafactor":
        # T5X-style Adafactor: factored second moments, update clipping, no first moment.
        core = optax.adafactor(learning_rate=schedule, multiply_by_parameter_scale=False,
                               clipping_threshold=1.0, decay_rate=0.8,
                               weight_decay_rate=float(train_cfg.weight_decay) or None)
    elif name == "adamw":
        core = optax.adamw(learning_rate=schedule, b1=float(train_cfg.b1), b2=float(train_cfg.b2),
                           weight_decay=float(train_cfg.weight_decay))
    else:
        raise ValueError(f"Unknown config.train.optimizer {name!r}; use one of {OPTIMIZERS}.")
    chain = []
    if float(train_cfg.grad_clip_norm) > 0:
        chain.append(optax.clip_by_global_norm(float(train_cfg.grad_clip_norm)))
    chain.append(core)
    tx = optax.chain(*chain)
    if train_cfg.freeze_regex:
        mask = trainable_mask(params, train_cfg.freeze_regex)
        labels = flax.traverse_util.unflatten_dict(
            {k: "train" if v else "freeze"
             for k, v in flax.traverse_util.flatten_dict(mask, sep="/").items()}, sep="/")
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return tx
