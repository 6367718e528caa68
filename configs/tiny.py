"""Tiny RT-2 config: trains on 2 CPU cores in minutes on the toy world (the embedded default).

Dimensions are chosen for speed, not quality: a 64px image cut into 8px patches (64 image tokens),
a 2-layer ViT and a 2+2-layer encoder-decoder of width 64. The vocabulary is the shipped tiny
sentencepiece model (rt2_jax/assets), padded to 1024 ids.
"""

from configs import base
from data_pipelines import config as data_config


def get_config():
    c = base.base_config()
    c.image_size = 64
    c.max_prompt_len = 32  # robot prompts of the toy world are at most 23 ids
    c.max_target_len = 40  # the longest toy-world captions; actions need 9 (8 ids + EOS)
    c.model = base.model_config(
        vocab_size=1024,
        vit=dict(patch_size=8, width=64, depth=2, mlp_dim=128, num_heads=4),
        encdec=dict(d_model=64, num_heads=4, head_dim=16, d_ff=128,
                    num_encoder_layers=2, num_decoder_layers=2),
    )
    c.data = data_config.get_data_config(global_batch_size=16)
    # Evaluate action decoding and VQA on 64 held-out examples each (captions are not scored).
    c.data.sources.captions.eval_split = ""
    c.data.eval.max_examples_per_source = 64
    c.eval.num_batches = 0  # all of the (capped) eval split

    c.train.num_steps = 2000
    c.train.learning_rate = 3e-3
    c.train.warmup_steps = 100
    c.train.log_every = 100
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    return c
