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

Starting from open weights (`configs/palix_5b.py:siglip`): no PaLI-X checkpoint is public, so the
recipe pairs SigLIP So400m/14 (width 1152, depth 27, MLP 4304, 16 heads; big_vision
`webli_en_so400m_224_57633886.npz` or Hugging Face `google/siglip-so400m-patch14-224`) with
mT5-XL (Hugging Face `google/mt5-xl`, exactly this encoder-decoder's shape) — ~4.1B parameters:

    python -m rt2_jax.tools.import_weights --config=configs/palix_5b.py:siglip \
        --vit=webli_en_so400m_224_57633886.npz --encdec=mt5-xl --out=imports/palix_5b_siglip
    python -m rt2_jax.train --config=configs/palix_5b.py:siglip \
        --config.train.init_from=imports/palix_5b_siglip \
        --config.tokenizer.model_path=imports/palix_5b_siglip/tokenizer.model --workdir=...

mT5's vocabulary has no single piece for most numbers 10..255, so this variant maps actions with
`least_frequent`. UL2 imports the same way into a config with its dimensions (d_model 4096,
16 heads x 256, gated-SiLU d_ff 16384, 32+32 layers, vocabulary 32,128; ~20B), not this one.
"""

from configs import base

VITS = {
    "": dict(patch_size=14, width=1664, depth=48, mlp_dim=8192, num_heads=16),   # ViT-G/14
    "siglip": dict(patch_size=14, width=1152, depth=27, mlp_dim=4304, num_heads=16),  # So400m/14
}


def get_config(variant: str = ""):
    if variant not in VITS:
        raise ValueError(f"configs/palix_5b.py:{variant}: variants are {sorted(VITS)}.")
    c = base.base_config()
    c.model = base.model_config(
        vocab_size=250_112,
        vit=VITS[variant],
        encdec=dict(d_model=2048, num_heads=32, head_dim=64, d_ff=5120, mlp_activation="gelu",
                    num_encoder_layers=24, num_decoder_layers=24),
    )
    # FSDP over all devices; no tensor parallelism needed at this size.
    base.pod_setup(c, model_parallel=1)
    if variant == "siglip":
        c.actions.mapping = "least_frequent"
    return c
