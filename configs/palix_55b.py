"""RT-2-PaLI-X 55B: ViT-22B + the 32B UL2-style encoder-decoder (~54B parameters).

Verified: ViT-22B is width 6144, depth 48, MLP 24576, 48 heads, with parallel attention+MLP
blocks, QK LayerNorm and no QKV biases; PaLI-X's encoder-decoder has 50 encoder + 50 decoder
layers; UL2-20B is d_model 4096, 16 heads x 256, gated-SiLU d_ff 16384.
ASSUMED: the 32B encoder-decoder keeps UL2-20B's width, heads and d_ff (with 50+50 layers and an
untied 250,112-piece mT5 vocabulary this gives ~32B, matching the reported size); patch 14 at
224px -> 256 image tokens (RT-2's robot images); learned position embeddings.
The vocabulary must be supplied: set `tokenizer.model_path` to the PaLI-X sentencepiece model.
"""

from configs import base


def get_config():
    c = base.base_config()
    c.model = base.model_config(
        vocab_size=250_112,
        vit=dict(patch_size=14, width=6144, depth=48, mlp_dim=24576, num_heads=48,
                 parallel_block=True, qk_norm=True, qkv_bias=False),
        encdec=dict(d_model=4096, num_heads=16, head_dim=256, d_ff=16384, mlp_activation="silu",
                    num_encoder_layers=50, num_decoder_layers=50),
    )
    c.model.dtype = "bfloat16"
    c.model.remat_policy = "nothing_saveable"
    return c
