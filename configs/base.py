"""Defaults shared by every experiment config; each config file overrides what it needs."""

import ml_collections


def model_config(*, vocab_size: int, vit: dict, encdec: dict) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.vocab_size = vocab_size
    m.dtype = "float32"           # compute dtype: float32 | bfloat16
    m.param_dtype = "float32"
    m.scan_layers = True
    m.remat_policy = "none"       # none | full | dots_saveable | nothing_saveable | ...
    m.vit = ml_collections.ConfigDict(dict(
        posemb="learn", parallel_block=False, qk_norm=False, qkv_bias=True, dropout_rate=0.0))
    m.vit.update(vit)
    m.encdec = ml_collections.ConfigDict(dict(
        mlp_activation="gelu", rel_pos_buckets=32, rel_pos_max_distance=128, dropout_rate=0.0))
    m.encdec.update(encdec)
    return m


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = 224
    c.max_prompt_len = 64
    c.max_target_len = 16
    c.tokenizer = ml_collections.ConfigDict(dict(model_path=""))  # "" = the shipped tiny model
    c.actions = ml_collections.ConfigDict(dict(
        mapping="integers",      # integers (PaLI-X) | least_frequent (PaLM-E)
        bounds="q01_q99",        # q01_q99 | min_max | fixed
        fixed_low=[-1.0] * 7, fixed_high=[1.0] * 7))
    return c
