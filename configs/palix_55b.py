"""RT-2-PaLI-X 55B: ViT-22B + the 32B UL2-style encoder-decoder (~54B parameters).

Verified: ViT-22B is width 6144, depth 48, MLP 24576, 48 heads, with parallel attention+MLP
blocks, QK LayerNorm and no QKV biases; PaLI-X's encoder-decoder has 50 encoder + 50 decoder
layers; UL2-20B is d_model 4096, 16 heads x 256, gated-SiLU d_ff 16384.
ASSUMED: the 32B encoder-decoder keeps UL2-20B's width, heads and d_ff (with 50+50 layers and an
untied 250,112-piece mT5 vocabulary this gives ~32B, matching the reported size); patch 14 at
224px -> 256 image tokens (RT-2's robot images); learned position embeddings.
The vocabulary must be supplied: set `tokenizer.model_path` to the PaLI-X sentencepiece model.

Pod shape (checked ahead of time with `python -m rt2_jax.tools.aot --config=configs/palix_55b.py
--topology=v5p:4x4x4` and `--topology=v4:4x4x4`; results in benchmarks/results/aot_palix_55b_*):
64 chips (v5p-128 or v4-128, one JAX device per chip), global batch 256 of 224px images
(256 image tokens) + 64 prompt + 16 target ids.
- Mesh data=1, fsdp=-1 (16), model=4. Pure data parallelism cannot work: 54B float32 weights
  are 216 GB per replica. FSDP over 16 shards the weights (3.4 GB of parameters per device) while
  each FSDP shard still sees 16 examples (5k encoder tokens), enough to hide the per-layer weight
  all-gathers; tensor parallelism over 4 (heads, MLP, vocabulary) divides every matmul evenly
  (48 and 16 heads, 24576 / 16384 MLP, 250,112 vocabulary) and cuts the gathered weight traffic
  by 4, which matters most for the decoder (16 tokens per example).
- Remat nothing_saveable on every scanned layer (ViT, encoder, decoder): activations kept between
  layers are the layer inputs only. Adafactor (factored second moments, no first moment) keeps
  the optimizer state small. No gradient accumulation is needed.
- Result: about 20 GiB per device (arguments 3.6 GiB, temporaries 16.3 GiB): fits a v5p chip
  (95 GiB) with ~75 GiB to spare and a v4 chip (32 GiB) with ~12 GiB to spare. On v5p the spare
  HBM can buy speed: a cheaper remat policy (dots_with_no_batch_dims_saveable) or a larger batch.
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
    # 64 chips (v5p-128 / v4-128): FSDP over 16 x tensor parallelism over 4.
    base.pod_setup(c, model_parallel=4)
    return c
