"""PaliGemma 3B shape: SigLIP So400m/14 at 224px + Gemma-2B, decoder-only (~2.9B parameters).

Verified (big_vision `proj/paligemma`, public configs): SigLIP So400m/14 (width 1152, depth 27,
MLP 4304, 16 heads; 224px -> 256 image tokens) linearly projected (`img/head`) into Gemma-2B:
width 2048, 18 layers, 8 query heads x 256 with 1 key/value head, GeGLU MLP 16384 wide,
RMSNorm, RoPE, embeddings scaled by sqrt(width) and tied to the logits, vocabulary 257,152
(Gemma's 256,000 + 1,024 `<locNNNN>` + 128 `<segNNN>` tokens). Image + prompt attend fully, the
target causally. Parameter names are big_vision's, so PaliGemma's `.npz` imports directly:

    python -m rt2_jax.tools.import_weights --config=configs/paligemma_3b.py \\
        --paligemma=paligemma-3b-pt-224.npz --tokenizer=paligemma_tokenizer.model \\
        --out=imports/paligemma_3b
    python -m rt2_jax.train --config=configs/paligemma_3b.py \\
        --config.train.init_from=imports/paligemma_3b \\
        --config.tokenizer.model_path=imports/paligemma_3b/tokenizer.model --workdir=...

Differences from PaliGemma itself: the target starts with the decoder start token (id 0, pad in
Gemma's vocabulary) where PaliGemma ends the prefix with "\\n" and starts the suffix directly;
fine-tuning adapts to it. Actions use the `least_frequent` mapping (Gemma splits numbers into
digits, so `integers` has no single token per bin). The tokenizer must be supplied
(`tokenizer.model_path`; Gemma's model has pad 0 / EOS 1 as rt2_jax needs).

Pod shape: as the other large configs (bf16, remat nothing_saveable, Adafactor, batch 256) but
with two data-parallel replicas of FSDP (data=2, fsdp=-1): SigLIP's width 1152 = 9 x 128 cannot
be split 256 ways, so on a 256-chip slice weights are sharded 128 ways (2048 and 1152 both
divide). Checked ahead of time for v5p-128 and v5e-256 (README).
"""

from configs import base

SIGLIP_SO400M = dict(patch_size=14, width=1152, depth=27, mlp_dim=4304, num_heads=16)
GEMMA_2B = dict(width=2048, depth=18, num_heads=8, num_kv_heads=1, head_dim=256, mlp_dim=16384,
                mlp_activation="gelu")


def get_config():
    c = base.base_config()
    c.model = base.decoder_only_model_config(vocab_size=257_152, vit=SIGLIP_SO400M, llm=GEMMA_2B)
    base.pod_setup(c, model_parallel=1)
    c.mesh.data = 2   # see the docstring: 1152 does not divide 256 ways
    c.actions.mapping = "least_frequent"
    return c
