"""RT-2-PaLM-E 12B: ViT-4B + an 8B decoder-only language model (~12.4B parameters).

PaLM-E-12B is PaLM-8B with a ViT-4B image tower whose tokens are projected into the language
model's input space and put in front of the prompt (a prefix LM: image + prompt attend fully,
the target causally). RT-2-PaLM-E maps actions with the `least_frequent` token mapping (PaLM's
vocabulary has no single token for every number 0..255) and co-fine-tuned on ≈66% robot data.

Verified: ViT-4B is big_vision's ViT-e (width 1792, depth 56, MLP 15360, 16 heads); patch 14 at
224px -> 256 image tokens.
ASSUMED (PaLM-8B's exact shape as listed in the project's model facts): width 4096, 32 layers,
16 query heads x 256 with one shared key/value head (multi-query), SwiGLU MLP 16384 wide
(mlp_activation="silu"), a 256,000-piece vocabulary with input and output embeddings tied
(PaLM shares them), RoPE.
Deviations from PaLM: the blocks are serial pre-norm (Gemma's: attention, then MLP) where PaLM
runs attention and MLP in parallel from one LayerNorm, the norms are RMSNorm and the input
embeddings are scaled by sqrt(width) (Gemma's convention, which the shared backbone follows).
The vocabulary must be supplied: set `tokenizer.model_path` to a 256k sentencepiece model with
pad 0 / EOS 1.

Mixture: 66% robot (the RT-1 fractal data; set its builder_dir) and 17% each VQAv2 and COCO
captions (set their builder_dirs), as RT-2 reports for RT-2-PaLM-E.

Pod shape: global batch 256, bf16 compute, remat nothing_saveable, Adafactor, weights FSDP over
the devices left after 4-way tensor parallelism (data=1, fsdp=-1, model=4: 16 heads, MLP 16384,
ViT-e's 16 heads and MLP 15360 and the 256,000-row vocabulary all divide by 4). Tensor
parallelism keeps the tied 256k x 4096 embedding from being gathered whole on every device:
with FSDP alone (model=1) a v5e-256 chip needs 15.6 of its 16 GiB. Checked ahead of time with
`python -m rt2_jax.tools.aot --config=configs/palme_12b.py --topology=v5p:4x4x4` (v5p-128) and
`--topology=v5e:16x16` (v5e-256); the results are in the README.
"""

from configs import base
from data_pipelines import config as data_config

ROBOT_FRACTION = 0.66


def get_config():
    c = base.base_config()
    c.model = base.decoder_only_model_config(
        vocab_size=256_000,
        vit=dict(patch_size=14, width=1792, depth=56, mlp_dim=15360, num_heads=16),  # ViT-e
        llm=dict(width=4096, depth=32, num_heads=16, num_kv_heads=1, head_dim=256,
                 mlp_dim=16384, mlp_activation="silu"),
    )
    base.pod_setup(c, model_parallel=4)
    web = (1.0 - ROBOT_FRACTION) / 2
    c.data.sources = dict(
        robot=data_config.robot_source(weight=ROBOT_FRACTION, builder_dir="",
                                       mapping="fractal20220817_data"),
        vqa=data_config.web_source(kind="vqa", weight=web, mapping="vqav2", builder_dir=""),
        captions=data_config.web_source(kind="caption", weight=web, mapping="coco_captions",
                                        builder_dir=""),
    )
    c.actions.mapping = "least_frequent"
    return c
