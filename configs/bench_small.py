"""Small PaLI-style config for decode-latency benchmarks (f32, runs on a CPU).

ViT-S/16-like image tower (224px images, patch 16 -> 196 image tokens, width 384, depth 6, 6 heads,
MLP 1536) feeding a T5.1.1-small-like encoder-decoder (d_model 512, 6+6 layers, 8 heads x 64,
gated-GELU d_ff 1024, untied logits) over a 32,000-id vocabulary. Prompts are 24 tokens, so the
encoder sees 196 + 24 = 220 positions. The shipped tiny sentencepiece model supplies the action
tokens (its ids are < 1024, inside the larger vocabulary); the weights are random, so the numbers
measure speed only.
"""

from configs import base


def get_config():
    c = base.base_config()
    c.image_size = 224
    c.max_prompt_len = 24
    c.max_target_len = 12
    c.model = base.model_config(
        vocab_size=32_000,
        vit=dict(patch_size=16, width=384, depth=6, mlp_dim=1536, num_heads=6),
        encdec=dict(d_model=512, num_heads=8, head_dim=64, d_ff=1024, mlp_activation="gelu",
                    num_encoder_layers=6, num_decoder_layers=6),
    )
    return c
