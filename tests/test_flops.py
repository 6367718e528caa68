"""The model-FLOP counter: a hand computation for a tiny case, and XLA's own count."""

import jax
import jax.numpy as jnp
import pytest

from configs import base, tiny
from rt2_jax.models import params as params_lib
from rt2_jax.models.vlm import VLM
from rt2_jax.tools import flops


def _handmade_config():
    c = base.base_config()
    c.image_size, c.max_prompt_len, c.max_target_len = 8, 3, 2
    c.model = base.model_config(
        vocab_size=32,
        vit=dict(patch_size=4, width=8, depth=1, mlp_dim=16, num_heads=2),
        encdec=dict(d_model=8, num_heads=2, head_dim=4, d_ff=16,
                    num_encoder_layers=1, num_decoder_layers=1))
    return c


def test_matches_hand_computation():
    parts = flops.forward_flops(_handmade_config(), batch_size=1)
    # ViT: 4 patch tokens; per token 4*4*3*8 (patchify) + 4*8*8 + 2*8*16 (block) + 8*8 (head).
    assert parts["vit_matmul"] == 2 * 4 * (384 + 256 + 256 + 64)
    assert parts["vit_attention"] == 2 * 2 * 4 * 4 * 8          # scores + context, 2 heads x 4
    # Encoder over 4 + 3 = 7 positions: q, k, v, o (4*8*8) and the gated MLP (3*8*16).
    assert parts["encoder_matmul"] == 2 * 7 * (256 + 384)
    assert parts["encoder_attention"] == 2 * 2 * 7 * 7 * 8
    # Decoder over 2 targets: self q/k/v/o, cross q/o, MLP; cross k/v over the 7 encoder tokens.
    assert parts["decoder_matmul"] == 2 * (2 * (256 + 128 + 384) + 7 * 128)
    assert parts["decoder_attention"] == 2 * 2 * 2 * 2 * 8 + 2 * 2 * 2 * 7 * 8
    assert parts["logits"] == 2 * 2 * 8 * 32
    assert parts["total"] == 25_184
    assert flops.train_flops(_handmade_config(), batch_size=5)["total"] == 3 * 5 * 25_184
    no_vit = flops.forward_flops(_handmade_config(), batch_size=1, include_vit=False)
    assert no_vit["total"] == 25_184 - 7680 - 512


def _xla_forward_flops(config, batch: int) -> float:
    model = VLM.from_config(config)
    args = (jnp.zeros((batch, config.image_size, config.image_size, 3), jnp.uint8),
            jnp.zeros((batch, config.max_prompt_len), jnp.int32),
            jnp.ones((batch, config.max_prompt_len), bool),
            jnp.zeros((batch, config.max_target_len), jnp.int32))
    params = jax.eval_shape(
        lambda: params_lib.unbox(model.init(jax.random.PRNGKey(0), *args)))
    compiled = jax.jit(lambda p, *a: model.apply(p, *a)).lower(params, *args).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("overrides,keypoints", [
    ({}, 0), ({"max_prompt_len": 8, "max_target_len": 9}, 0), ({}, 16)])
def test_matches_xla_cost_analysis(overrides, keypoints):
    """XLA also counts elementwise work (softmax, norms, GELU), so it is a little higher."""
    config = tiny.get_config()
    config.update(overrides)
    if keypoints:   # the keypoint head's convs then dominate the image tower
        config.model.vit.keypoints = keypoints
    # XLA's cost analysis counts a while-loop body once, so compare with unscanned layers.
    config.model.scan_layers = False
    ours = flops.forward_flops(config, batch_size=2)["total"]
    xla = _xla_forward_flops(config, batch=2)
    assert ours == pytest.approx(xla, rel=0.12)
    assert ours <= xla
