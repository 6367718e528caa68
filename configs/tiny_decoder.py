"""Tiny RT-2 config with the decoder-only (PaLM-E / PaliGemma-style prefix-LM) backbone: trains
on 2 CPU cores in minutes on the toy world, like `configs/tiny.py`.

The same 64px / patch 8 image (64 image tokens), 2-layer ViT, data and schedule as tiny.py; the
language model is a 4-layer Gemma-style decoder of width 64 (as many layers as tiny.py's 2+2
encoder-decoder), 4 query heads sharing 1 key/value head (multi-query, as Gemma-2B and PaLM),
GeGLU MLP 128 wide, RoPE, logits tied to the 1024-id shipped vocabulary. The sequence is
[64 image tokens, 32 prompt ids, 40 target ids]: image + prompt attend fully, the target
causally.
"""

from configs import base, tiny


def get_config():
    c = tiny.get_config()
    c.model = base.decoder_only_model_config(
        vocab_size=1024,
        vit=dict(patch_size=8, width=64, depth=2, mlp_dim=128, num_heads=4),
        llm=dict(width=64, depth=4, num_heads=4, num_kv_heads=1, head_dim=16, mlp_dim=128),
    )
    return c
