"""SigLIP B/16 + T5 v1.1-base from open weights (~335M parameters): fine-tunes on one GPU.

Image tower: SigLIP B/16 at 224 px (width 768, depth 12, MLP 3072, 12 heads; 196 image tokens),
from big_vision's `webli_en_b16_224_63724782.npz` or Hugging Face `google/siglip-base-patch16-224`.
Encoder-decoder: T5 v1.1-base shape (d_model 768, 12 heads x 64, gated-GELU d_ff 2048, 12+12
layers, vocabulary 32,128 with untied logits), from Hugging Face `google/t5-v1_1-base` or
`google/flan-t5-base` (same shape). The projection `img/head` (768 -> 768) starts at its
initialization. Import, then train:

    python -m rt2_jax.tools.import_weights --config=configs/siglip_t5_base.py \
        --vit=siglip-base-patch16-224 --encdec=flan-t5-base --out=imports/siglip_t5_base
    python -m rt2_jax.train --config=configs/siglip_t5_base.py:imports/siglip_t5_base \
        --workdir=runs/siglip_t5_base

The argument after ':' is the import directory: training starts from its parameters
(`train.init_from`) and uses its sentencepiece model. Without it the config trains from scratch
with the shipped tiny vocabulary (a smoke test only). Actions use `least_frequent`: the import
says whether T5's vocabulary has one piece per number 0..255 (then
`--config.actions.mapping=integers` works as well). Data: the embedded toy world at 224 px by
default; set `data.sources` for real robot and web data as in the other configs.
"""

import os

from configs import base
from data_pipelines import config as data_config


def get_config(import_dir: str = ""):
    c = base.base_config()
    c.model = base.model_config(
        vocab_size=32_128,
        vit=dict(patch_size=16, width=768, depth=12, mlp_dim=3072, num_heads=12),
        encdec=dict(d_model=768, num_heads=12, head_dim=64, d_ff=2048, mlp_activation="gelu",
                    num_encoder_layers=12, num_decoder_layers=12),
    )
    c.model.dtype = "bfloat16"          # compute; parameters and optimizer state stay float32
    c.actions.mapping = "least_frequent"
    c.data = data_config.get_data_config(global_batch_size=64)
    c.train.update(optimizer="adafactor", learning_rate=1e-3, schedule="cosine",
                   warmup_steps=500, num_steps=20_000, log_every=50, eval_every=1000,
                   checkpoint_every=1000)
    if import_dir:
        c.train.init_from = import_dir
        c.tokenizer.model_path = os.path.join(import_dir, "tokenizer.model")
    return c
