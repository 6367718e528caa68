"""RT-2-PaLI-X 5B: ViT-G/14 + an mT5-XL-shaped encoder-decoder (~5.6B parameters).

ASSUMED dimensions (RT-2 used a 5B PaLI-X whose exact shape is not published):
- Image tower: ViT-G/14 (width 1664, depth 48, MLP 8192, 16 heads; big_vision's "G" variant),
  ~1.8B parameters, the size class a 5B PaLI-X would pair with a ~3.7B language model.
- Encoder-decoder: mT5-XL shape (d_model 2048, 32 heads x 64, gated-GELU d_ff 5120, 24+24 layers,
  mT5 vocabulary of 250,112 pieces), ~3.7B parameters, untied logits.
- 224px images at patch 14 -> 256 image tokens.
The vocabulary must be supplied: set `tokenizer.model_path` to the mT5/PaLI sentencepiece model.

Pod shape: FSDP over all devices, remat nothing_saveable, Adafactor, global batch 256. Checked with
`python -m rt2_jax.tools.aot --config=configs/palix_5b.py --topology=v5p:4x4x4`: 9.86 GiB per
device on v5p-128 (benchmarks/results/aot_palix_5b_v5p-128.*). The cheaper remat policy
dots_with_no_batch_dims_saveable needs 130 GiB of temporaries per device at this batch: too much.
"""

from configs import base


def get_config():
    c = base.base_config()
    c.model = base.model_config(
        vocab_size=250_112,
        vit=dict(patch_size=14, width=1664, depth=48, mlp_dim=8192, num_heads=16),
        encdec=dict(d_model=2048, num_heads=32, head_dim=64, d_ff=5120, mlp_activation="gelu",
                    num_encoder_layers=24, num_decoder_layers=24),
    )
    # FSDP over all devices; no tensor parallelism needed at this size.
    base.pod_setup(c, model_parallel=1)
    return c
