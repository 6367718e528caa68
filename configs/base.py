"""Defaults shared by every experiment config; each config file overrides what it needs."""

import ml_collections


def model_config(*, vocab_size: int, vit: dict, encdec: dict) -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    m.vocab_size = vocab_size
    m.dtype = "float32"           # compute dtype: float32 | bfloat16
    m.param_dtype = "float32"
    m.scan_layers = True
    m.remat_policy = "none"       # none | full | dots_saveable | nothing_saveable | ...
    m.wrist_camera = ""           # "" (one camera) | side_by_side | tokens (rt2_jax/preprocessing)
    m.vit = ml_collections.ConfigDict(dict(
        posemb="learn", parallel_block=False, qk_norm=False, qkv_bias=True, dropout_rate=0.0,
        keypoints=0,             # > 0: spatial-softmax keypoint tokens (robot policies)
        keypoint_query=False,    # keypoints conditioned on the prompt (its mean embedding)
        keypoint_query_attention=False,  # ... on a learned weighting of its words instead
        keypoint_query_per_keypoint=False,  # ... one weighting per keypoint (each keypoint
        #                                     can read a different word of the prompt)
        keypoint_scale=10.0,     # initial inverse temperature of the keypoint softmax
        keypoint_coord="shared",  # (u, v) -> token: one map for all keypoints | per_keypoint
        keypoint_action_head=False,  # action readout of the keypoints (training only),
        #                              trained by train.keypoint_action_weight
        keypoint_convs=((32, 1), (32, 1), (64, 2))))  # (channels, stride) of the keypoint
    #                                                   head's 3x3 convs
    m.vit.update(vit)
    m.encdec = ml_collections.ConfigDict(dict(
        mlp_activation="gelu", rel_pos_buckets=32, rel_pos_max_distance=128, dropout_rate=0.0))
    m.encdec.update(encdec)
    return m


def decoder_only_model_config(*, vocab_size: int, vit: dict,
                              llm: dict) -> ml_collections.ConfigDict:
    """`config.model` of the decoder-only (PaLM-E / PaliGemma) backbone: `llm` takes width,
    depth, num_heads, num_kv_heads (1 = multi-query), head_dim, mlp_dim and optionally
    mlp_activation (gelu = GeGLU as Gemma, silu = SwiGLU as PaLM) and rope_max_wavelength."""
    m = model_config(vocab_size=vocab_size, vit=vit, encdec={})
    del m.encdec
    m.backbone = "decoder_only"   # rt2_jax/models/vlm.py; unset = encoder_decoder
    m.llm = ml_collections.ConfigDict(dict(mlp_activation="gelu", rope_max_wavelength=10_000.0))
    m.llm.update(llm)
    return m


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.image_size = 224
    c.max_prompt_len = 64
    c.max_target_len = 16
    c.tokenizer = ml_collections.ConfigDict(dict(model_path=""))  # "" = the shipped tiny model
    c.actions = ml_collections.ConfigDict(dict(
        mapping="integers",      # integers (PaLI-X) | least_frequent (PaLM-E)
        bounds="q01_q99",        # q01_q99 | min_max | fixed
        fixed_low=[-1.0] * 7, fixed_high=[1.0] * 7))

    # ---- devices (rt2_jax.sharding) ----
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, model=1))  # -1 = the rest
    c.sharding_rules = ()  # () = rt2_jax.sharding.DEFAULT_RULES; else ((logical, mesh axes), ...)

    # ---- training (rt2_jax.train) ----
    c.train = ml_collections.ConfigDict(dict(
        num_steps=1000,
        optimizer="adafactor",       # adafactor (PaLI/T5X default) | adamw
        learning_rate=1e-3,          # RT-2-PaLI-X: 1e-3
        schedule="cosine",           # constant | linear | cosine | rsqrt
        warmup_steps=100,
        end_lr_fraction=0.0,
        weight_decay=0.0,
        b1=0.9, b2=0.999,            # adamw only
        grad_clip_norm=1.0,          # 0 = off
        grad_accum_steps=1,          # micro-batches per step (global batch is split)
        freeze_regex="",             # e.g. "^img/" freezes the ViT
        init_from="",                # an export dir whose params start a fresh run
        init_from_regex="",          # only params matching it are loaded ("" = all)
        z_loss=1e-4,
        # Robot rows: chance that each earlier action token fed to the decoder is replaced by a
        # random valid one (train_state.corrupt_action_inputs), so later dims are read off the
        # image rather than off the true earlier tokens teacher forcing gives. 0 = off.
        action_token_noise=0.0,
        # > 0: web pointing answers ("x y") of sources with locate_answers=True also regress
        # ViT keypoint 0 onto their point, with this weight (rt2_jax/localization.py). 0 = off.
        locate_weight=0.0,
        # Points of a pointing answer that train keypoints 0..P-1 (2: "x1 y1 x2 y2" answers of
        # the toy world's data.toy_world.locate_pairs_per_scene also train keypoint 1).
        locate_points=1,
        # Robot rows whose action says "done" (one frame per episode) count this many times in
        # their terminate token's loss (train_state.terminate_weight). 1 = unweighted.
        terminate_weight=1.0,
        # > 0: robot rows also train the keypoint head's own action readout
        # (model.vit.keypoint_action_head) with this weight: a direct path from actions to the
        # keypoints' convs (train_state.keypoint_action_sums). Decoding never uses it. 0 = off.
        keypoint_action_weight=0.0,
        log_every=10,
        eval_every=200,              # 0 = never
        checkpoint_every=200,
        keep_checkpoints=3,
        async_checkpoints=True,
        export_at_end=False,         # also write {workdir}/export after the last step
        export_dtype="bfloat16",
    ))
    c.eval = ml_collections.ConfigDict(dict(
        num_batches=4,               # per evaluation; 0 = the whole eval split
        max_text_len=8,              # free-text decoding limit for VQA exact match
    ))
    return c


def pod_setup(c: ml_collections.ConfigDict, *, model_parallel: int) -> None:
    """The large configs' co-fine-tuning shape on a TPU pod: bf16 compute, remat nothing_saveable,
    Adafactor, global batch 256 at base_config()'s 224px / 64 prompt / 16 target ids, weights
    sharded FSDP over the devices left after `model_parallel`-way tensor parallelism. The data
    block has one robot source; set its builder_dir to the RT-1 (fractal) RLDS directory and add
    web sources for co-training."""
    from data_pipelines import config as data_config

    c.model.dtype = "bfloat16"
    c.model.remat_policy = "nothing_saveable"
    c.data = data_config.get_data_config(
        global_batch_size=256,
        sources=dict(robot=data_config.robot_source(weight=1.0, builder_dir="",
                                                    mapping="fractal20220817_data")))
    c.mesh.update(dict(data=1, fsdp=-1, model=model_parallel))
    c.train.optimizer = "adafactor"
