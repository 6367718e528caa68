"""Tiny RT-2 config: trains on 2 CPU cores in minutes on the toy world (the embedded default).

Dimensions are chosen for speed, not quality: a 64px image cut into 8px patches (64 image tokens),
a 2-layer ViT and a 2+2-layer encoder-decoder of width 64. The vocabulary is the shipped tiny
sentencepiece model (rt2_jax/assets), padded to 1024 ids.
"""
import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = 64

    # ---- model (rt2_jax.models) ----
    c.model = ml_collections.ConfigDict()
    c.model.vocab_size = 1024
    c.model.dtype = "float32"          # compute dtype
    c.model.param_dtype = "float32"
    c.model.scan_layers = True
    c.model.remat_policy = "none"      # none | full | dots_saveable | nothing_saveable
    c.model.vit = ml_collections.ConfigDict(dict(
        patch_size=8, width=64, depth=2, mlp_dim=128, num_heads=4,
        posemb="learn", parallel_block=False, qk_norm=False, qkv_bias=True, dropout_rate=0.0))
    c.model.encdec = ml_collections.ConfigDict(dict(
        d_model=64, num_heads=4, head_dim=16, d_ff=128, mlp_activation="gelu",
        num_encoder_layers=2, num_decoder_layers=2,
        rel_pos_buckets=32, rel_pos_max_distance=128, dropout_rate=0.0))

    # ---- text and actions (rt2_jax.tokenizer, rt2_jax.actions) ----
    c.tokenizer = ml_collections.ConfigDict(dict(model_path=""))  # "" = the shipped tiny model
    c.actions = ml_collections.ConfigDict(dict(
        mapping="integers",      # integers (PaLI-X) | least_frequent (PaLM-E)
        bounds="q01_q99",        # q01_q99 | min_max | fixed
        fixed_low=[-1.0] * 7, fixed_high=[1.0] * 7))
    c.max_prompt_len = 24
    c.max_target_len = 12

    return c
