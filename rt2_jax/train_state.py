"""Train state, its shardings, the loss and metrics, and the jitted train step.

Used by `rt2_jax.train` (the entry point) and `rt2_jax.tools.aot` (ahead-of-time compilation):
both build the same `TrainSetup`, so what the fit check compiles is what the pod runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rt2_jax import actions as actions_lib
from rt2_jax import localization, optim, preprocessing, sharding
from rt2_jax.actions import NUM_DIMS
from rt2_jax.models import params as params_lib
from rt2_jax.models.encoder_decoder import shift_right
from rt2_jax.models.vlm import VLM, wrist_inputs, wrist_keys

# Host batch keys the train step consumes (see the host-batch contract); a model with a wrist
# camera also takes its `vlm.wrist_keys` (`batch_spec` lists all of them).
MODEL_KEYS = ("image", "encoder_tokens", "encoder_mask", "decoder_tokens", "decoder_loss_mask",
              "source", "is_robot", "action")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def batch_spec(config, batch_size: int,
               with_locate: bool = True) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of one global batch (the host-batch contract); the localization-loss
    keys only with `with_locate` and the loss on."""
    size, le, ld = config.image_size, config.max_prompt_len, config.max_target_len
    return {
        "image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
        "encoder_tokens": jax.ShapeDtypeStruct((batch_size, le), jnp.int32),
        "encoder_mask": jax.ShapeDtypeStruct((batch_size, le), jnp.bool_),
        "decoder_tokens": jax.ShapeDtypeStruct((batch_size, ld), jnp.int32),
        "decoder_loss_mask": jax.ShapeDtypeStruct((batch_size, ld), jnp.float32),
        "source": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
        "is_robot": jax.ShapeDtypeStruct((batch_size,), jnp.bool_),
        "action": jax.ShapeDtypeStruct((batch_size, NUM_DIMS), jnp.float32),
        **_wrist_spec(config, batch_size),
        **(_locate_spec(config, batch_size) if with_locate else {}),
    }


def _locate_spec(config, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The localization-loss keys of a batch (none with the loss off)."""
    if not localization.enabled(config):
        return {}
    points = localization.num_points(config)
    return {"locate_uv": jax.ShapeDtypeStruct((batch_size, points, 2), jnp.float32),
            "locate_mask": jax.ShapeDtypeStruct((batch_size, points), jnp.float32)}


def _wrist_spec(config, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The wrist-camera keys of a batch (none without a wrist camera)."""
    size = config.image_size
    specs = {"wrist_image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
             "wrist_present": jax.ShapeDtypeStruct((batch_size,), jnp.bool_)}
    return {k: specs[k] for k in wrist_keys(preprocessing.wrist_camera(config))}


def init_inputs(config, batch_size: int = 1) -> tuple[list, dict]:
    """(args, kwargs) of `VLM.init` / `VLM.__call__` for a batch of the config's shapes
    (abstract: ShapeDtypeStructs)."""
    spec = batch_spec(config, batch_size, with_locate=False)
    args = [spec[k] for k in ("image", "encoder_tokens", "encoder_mask", "decoder_tokens")]
    return args, {"wrist": wrist_inputs(spec)}


@dataclasses.dataclass
class ActionTables:
    """Static arrays that turn predicted token ids into action bins inside the step."""

    id_to_bin: np.ndarray        # int32 [V]: bin of an action id, -1 elsewhere
    position_masks: np.ndarray   # bool [8, V]

    @property
    def bin_to_id(self) -> np.ndarray:
        """int32 [256]: each bin's action id (the inverse of id_to_bin)."""
        ids = np.flatnonzero(np.asarray(self.id_to_bin) >= 0)
        table = np.zeros(actions_lib.NUM_BINS, np.int32)
        table[np.asarray(self.id_to_bin)[ids]] = ids
        return table

    @classmethod
    def build(cls, action_tokenizer: actions_lib.ActionTokenizer, vocab_size: int):
        id_to_bin = np.full(vocab_size, -1, np.int32)
        id_to_bin[action_tokenizer.action_ids] = np.arange(actions_lib.NUM_BINS, dtype=np.int32)
        return cls(id_to_bin, np.asarray(action_tokenizer.position_masks(vocab_size)))


def corrupt_action_inputs(dec_in: jax.Array, is_robot: jax.Array, tables: ActionTables,
                          rate: float, rng: jax.Array) -> jax.Array:
    """Teacher forcing feeds the decoder the true earlier action tokens, so a later dim can be
    read off them (dz off dx and dy, the gripper off dz) instead of off the image, and greedy
    decoding then compounds the first token's mistakes. On robot rows this replaces each of the
    earlier action tokens the decoder is fed (inputs 1..7, i.e. terminate..dyaw) with a random
    valid one of its dim with probability `rate`; targets and loss are unchanged."""
    b = dec_in.shape[0]
    n = NUM_DIMS - 1
    k_pick, k_bin = jax.random.split(rng)
    replace = jax.random.bernoulli(k_pick, rate, (b, n)) & is_robot[:, None]
    high = jnp.array([actions_lib.NUM_TERMINATE_VALUES] + [actions_lib.NUM_BINS] * (n - 1))
    bins = jax.random.randint(k_bin, (b, n), 0, high[None])
    noise = jnp.asarray(tables.bin_to_id)[bins].astype(dec_in.dtype)
    return dec_in.at[:, 1:NUM_DIMS].set(jnp.where(replace, noise, dec_in[:, 1:NUM_DIMS]))


def cross_entropy(logits, targets, mask, z_loss: float):
    """Per-token loss [B, L] (masked) and the z-loss term, both in float32."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    loss = (log_z - target_logit) + z_loss * jnp.square(log_z)
    return loss * mask


def action_sums(pred_ids, pred_bins, batch, robot) -> dict:
    """Summed action metrics of robot rows (the train step and the evaluator share them):
    per-dim correct ids and L1 in normalized units, per-dim counts, rows with every recorded
    dim right. A dim counts only where the row's dataset records it (its loss mask is > 0)."""
    weight = robot[:, None] * (batch["decoder_loss_mask"][:, :NUM_DIMS] > 0)
    hit = pred_ids == batch["decoder_tokens"][:, :NUM_DIMS]
    pred_norm = actions_lib.normalized_from_bins(pred_bins, jnp)
    return {"action_correct": (hit.astype(jnp.float32) * weight).sum(0),
            "action_dims": weight.sum(0),
            "action_exact": (jnp.all(hit | (weight == 0), axis=1) * robot).sum(),
            "action_l1": (jnp.abs(pred_norm - batch["action"]) * weight).sum(0)}


def summarize_actions(sums: dict, per_dim_l1: bool = False) -> dict[str, float]:
    """action_acc, action_exact, action_l1 and per-dim accuracy (and L1) from action_sums
    summed over batches, plus robot_rows; {} without robot rows."""
    rows = float(sums["robot_rows"])
    if rows <= 0:
        return {}
    dims = np.asarray(sums["action_dims"], np.float64)   # per dim: rows that record it
    correct = np.asarray(sums["action_correct"], np.float64)
    l1 = np.asarray(sums["action_l1"], np.float64)
    out = {"action_acc": correct.sum() / max(dims.sum(), 1.0),
           "action_exact": float(sums["action_exact"]) / rows,
           "action_l1": l1[1:].sum() / max(dims[1:].sum(), 1.0)}
    for d, name in enumerate(actions_lib.ACTION_DIMS):
        if dims[d] > 0:
            out[f"action_acc/{name}"] = correct[d] / dims[d]
            if per_dim_l1 and d:
                out[f"action_l1/{name}"] = l1[d] / dims[d]
    return {k: float(v) for k, v in out.items()}


def keypoint_action_weight(config) -> float:
    """`config.train.keypoint_action_weight` (0 = off), checked against the model it needs."""
    w = float((config.get("train") or {}).get("keypoint_action_weight", 0.0))
    if w < 0:
        raise ValueError(f"train.keypoint_action_weight must be >= 0, got {w}")
    if w and not config.model.vit.get("keypoint_action_head", False):
        raise ValueError(f"train.keypoint_action_weight={w} trains the keypoints' action "
                         "readout: set config.model.vit.keypoint_action_head=True (and "
                         "vit.keypoints >= 1).")
    if w and preprocessing.wrist_camera(config):
        raise ValueError("train.keypoint_action_weight > 0 with a wrist camera is not "
                         "supported; set config.model.wrist_camera='' or the weight to 0.")
    return w


def terminate_weight(config) -> float:
    """`config.train.terminate_weight` (1 = plain cross-entropy): how many times a robot row
    whose action says "done" counts in the loss of its terminate token. An episode has one
    such frame and tens that say "continue", so a policy can learn to never stop; weighting
    the rare class is what repeating the done frame does, without repeating its image."""
    w = float((config.get("train") or {}).get("terminate_weight", 1.0))
    if not (np.isfinite(w) and w > 0):
        raise ValueError(f"train.terminate_weight must be a finite number > 0 (1 = unweighted),"
                         f" got {w}")
    return w


def keypoint_action_logits(intermediates) -> jax.Array:
    """The image tower's sown auxiliary action logits [B, 8, 256]."""
    try:
        return intermediates["intermediates"]["img"]["keypoint_action_logits"][0]
    except KeyError as e:
        raise ValueError("the model sowed no keypoint action logits "
                         "(config.model.vit.keypoint_action_head is off?)") from e


def recorded_robot_dims(batch) -> jax.Array:
    """float32 [B, 8]: 1 where a row is a robot row and its dataset records that action dim."""
    return (batch["is_robot"].astype(jnp.float32)[:, None]
            * (batch["decoder_loss_mask"][:, :NUM_DIMS] > 0))


def keypoint_action_sums(logits: jax.Array, batch, tables: ActionTables) -> dict:
    """Cross-entropy of the keypoints' action readout [B, 8, 256] against each robot row's
    action bins (the bins of its first 8 target tokens), over the dims the row's dataset
    records; summed, with the count of (row, dim) pairs and how many the argmax got right."""
    bins = jnp.asarray(tables.id_to_bin)[batch["decoder_tokens"][:, :NUM_DIMS]]
    weight = recorded_robot_dims(batch) * (bins >= 0)
    bins = jnp.maximum(bins, 0)
    logits = logits.astype(jnp.float32)
    ce = (jax.nn.logsumexp(logits, -1)
          - jnp.take_along_axis(logits, bins[..., None], axis=-1)[..., 0])
    hit = (jnp.argmax(logits, -1) == bins).astype(jnp.float32)
    return {"kp_action_ce_sum": (ce * weight).sum(), "kp_action_correct": (hit * weight).sum(),
            "kp_action_count": weight.sum()}


def summarize_keypoint_actions(s: dict) -> dict[str, float]:
    count = float(s.get("kp_action_count", 0.0))
    if count <= 0:
        return {}
    return {"kp_action_loss": float(s["kp_action_ce_sum"]) / count,
            "kp_action_acc": float(s["kp_action_correct"]) / count}


def compute_metrics(logits, batch, num_sources: int, tables: ActionTables, z_loss: float):
    """Sums and counts (so that they average correctly over hosts and micro-batches)."""
    targets, mask = batch["decoder_tokens"], batch["decoder_loss_mask"]
    token_loss = cross_entropy(logits, targets, mask, z_loss)
    row_loss = token_loss.sum(-1)
    row_tokens = mask.sum(-1)
    onehot = jax.nn.one_hot(batch["source"], num_sources, dtype=jnp.float32)  # [B, S]
    robot = batch["is_robot"].astype(jnp.float32)
    web = 1.0 - robot
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32) * mask

    # Action metrics on robot rows: the first 8 target positions are the action tokens.
    act_logits = logits[:, :NUM_DIMS]
    masked = jnp.where(jnp.asarray(tables.position_masks)[None], act_logits, -jnp.inf)
    pred_ids = jnp.argmax(masked, -1)                                      # always valid ids
    id_to_bin = jnp.asarray(tables.id_to_bin)
    pred_bins = id_to_bin[pred_ids]
    # Robot rows whose action says "done": one frame per episode, against tens that say
    # "continue" (train.terminate_weight weights their terminate token's loss).
    stop = robot * (mask[:, 0] > 0) * (id_to_bin[targets[:, 0]] == actions_lib.TERMINATE)
    return {
        **action_sums(pred_ids, pred_bins, batch, robot),
        "loss_sum": row_loss.sum(), "token_count": row_tokens.sum(),
        "stop_ce_sum": (token_loss[:, 0] * stop).sum(), "stop_rows": stop.sum(),
        "source_loss_sum": (row_loss[:, None] * onehot).sum(0),
        "source_token_count": (row_tokens[:, None] * onehot).sum(0),
        "source_examples": onehot.sum(0),
        "z_sum": (z_loss * jnp.square(jax.nn.logsumexp(logits, -1)) * mask).sum(),
        "robot_rows": robot.sum(),
        "web_correct": (correct * web[:, None]).sum(),
        "web_tokens": (mask * web[:, None]).sum(),
    }


def summarize(sums: dict[str, np.ndarray], source_names: tuple[str, ...]) -> dict[str, float]:
    """Turns summed metrics into the logged averages."""
    s = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    out = {"loss": s["loss_sum"] / max(s["token_count"], 1.0)}
    for i, name in enumerate(source_names):
        if s["source_token_count"][i] > 0:
            out[f"loss/{name}"] = s["source_loss_sum"][i] / s["source_token_count"][i]
        out[f"examples/{name}"] = s["source_examples"][i]
    out.update(summarize_actions(s))
    if s.get("stop_rows", 0.0) > 0:
        out["loss/terminate_stop"] = s["stop_ce_sum"] / s["stop_rows"]
    out.update(localization.summarize(s))
    out.update(summarize_keypoint_actions(s))
    if s["web_tokens"] > 0:
        out["web_token_acc"] = s["web_correct"] / s["web_tokens"]
    return out


@dataclasses.dataclass
class TrainSetup:
    """Everything needed to initialize, restore and step the model on a mesh."""

    config: Any
    model: VLM
    mesh: Mesh
    rules: tuple
    tx: optax.GradientTransformation
    abstract_state: TrainState          # ShapeDtypeStructs
    state_sharding: TrainState          # NamedShardings
    batch_sharding: dict[str, NamedSharding]


def _abstract_boxed_params(model: VLM, config):
    args, kwargs = init_inputs(config)
    return jax.eval_shape(lambda a, k: model.init(jax.random.PRNGKey(0), *a, **k),
                          args, kwargs)["params"]


def _sharding_like_param(leaf, param, mesh: Mesh) -> NamedSharding:
    """Sharding of an optimizer-state leaf that belongs to `param`: the parameter's own sharding
    for a same-shaped leaf (Adam moments, unfactored Adafactor), the parameter's spec without the
    reduced axis for a factored leaf (Adafactor's row/column statistics), else replicated."""
    spec = tuple(param.sharding.spec) + (None,) * (len(param.shape) - len(param.sharding.spec))
    if tuple(leaf.shape) == tuple(param.shape):
        return NamedSharding(mesh, PartitionSpec(*spec))
    for axis in range(len(param.shape)):
        if tuple(leaf.shape) == tuple(param.shape[:axis] + param.shape[axis + 1:]):
            return NamedSharding(mesh, PartitionSpec(*(spec[:axis] + spec[axis + 1:])))
    return sharding.replicated(mesh)


def optimizer_state_sharding(tx, abstract_opt, abstract_params, mesh: Mesh):
    """Shards each optimizer-state leaf like the parameter it tracks (counts etc. replicated).
    XLA's propagation would leave freshly initialized zeros replicated on every device."""
    try:
        return optax.tree_utils.tree_map_params(
            tx, lambda leaf, param: _sharding_like_param(leaf, param, mesh), abstract_opt,
            abstract_params, transform_non_params=lambda _: sharding.replicated(mesh))
    except ValueError:
        # Partitioned optimizers (frozen groups: multi_transform's masked inner states) do not
        # mirror the parameter tree: match each state leaf to its parameter by path instead.
        return _sharding_by_param_path(abstract_opt, abstract_params, mesh)


def _sharding_by_param_path(abstract_opt, abstract_params, mesh: Mesh):
    """Each optimizer-state leaf sharded like the parameter whose 'a/b/c' path ends its own
    path (e.g. `...inner_states['train']...mu['encdec']['decoder']...['kernel']`), replicated
    when none does (step counts)."""
    def dict_keys(path) -> tuple:
        return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))

    params = {dict_keys(path): leaf
              for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params)}

    def leaf_sharding(path, leaf):
        keys = dict_keys(path)
        for start in range(len(keys)):
            param = params.get(keys[start:])
            if param is not None:
                return _sharding_like_param(leaf, param, mesh)
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_opt)


def make_setup(config, mesh: Mesh | None = None) -> TrainSetup:
    model = VLM.from_config(config)
    rules = sharding.rules_from_config(config)
    mesh = mesh or sharding.make_mesh(config)
    dp = sharding.data_parallel_size(mesh, rules)
    gbs = int(config.data.global_batch_size)
    accum = int(config.train.grad_accum_steps)
    if gbs % (dp * accum):
        raise ValueError(f"config.data.global_batch_size={gbs} must be divisible by the "
                         f"data-parallel size {dp} (mesh {dict(mesh.shape)}) times "
                         f"config.train.grad_accum_steps={accum}.")
    boxed = _abstract_boxed_params(model, config)
    param_sharding = sharding.logical_sharding(boxed, mesh, rules)
    abstract_params = params_lib.unbox(boxed)
    tx = optim.make_optimizer(config.train, abstract_params)
    abstract_params = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_params,
        param_sharding)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_sharding = optimizer_state_sharding(tx, abstract_opt, abstract_params, mesh)
    repl = sharding.replicated(mesh)
    state_sharding = TrainState(step=repl, params=param_sharding, opt_state=opt_sharding,
                                rng=repl)
    abstract_state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
        params=abstract_params,
        opt_state=jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                               abstract_opt, opt_sharding),
        rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=repl))
    bspec = batch_spec(config, gbs)
    batch_sharding = {k: sharding.batch_sharding(mesh, rules, len(v.shape))
                      for k, v in bspec.items()}
    return TrainSetup(config, model, mesh, rules, tx, abstract_state, state_sharding,
                      batch_sharding)


def initial_params(model: VLM, config, rng: jax.Array):
    """The parameters a training run initializes from `rng` = PRNGKey(config.seed) (traceable).
    The weight import uses it too, so a target it leaves at initialization gets these values."""
    args, kwargs = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), init_inputs(config))
    init_rng, _ = jax.random.split(rng)
    return params_lib.unbox(model.init(init_rng, *args, **kwargs)["params"])


def init_state(setup: TrainSetup, seed: int) -> TrainState:
    """Initializes parameters and optimizer state directly in their shardings."""
    config, model, tx = setup.config, setup.model, setup.tx

    def init(rng):
        params = initial_params(model, config, rng)
        _, state_rng = jax.random.split(rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=tx.init(params), rng=state_rng)

    return jax.jit(init, out_shardings=setup.state_sharding)(jax.random.PRNGKey(seed))


def make_train_step(setup: TrainSetup, tables: ActionTables, num_sources: int):
    """The jitted step: (state, batch) -> (state, metric sums). State is donated."""
    config, model, tx = setup.config, setup.model, setup.tx
    accum = int(config.train.grad_accum_steps)
    z_loss = float(config.train.z_loss)
    token_noise = float(config.train.get("action_token_noise", 0.0))
    if not 0 <= token_noise < 1:
        raise ValueError(f"train.action_token_noise must be in [0, 1), got {token_noise}")
    locate_weight = localization.weight(config)
    kpa_weight = keypoint_action_weight(config)
    stop_weight = terminate_weight(config)
    start_id = 0  # T5 convention: the decoder start token is pad

    def loss_fn(params, batch, rng, scales):
        dec_in = shift_right(batch["decoder_tokens"], start_id)
        if token_noise > 0:
            rng, noise_rng = jax.random.split(rng)
            dec_in = corrupt_action_inputs(dec_in, batch["is_robot"], tables, token_noise,
                                           noise_rng)
        args = (batch["image"], batch["encoder_tokens"], batch["encoder_mask"], dec_in)
        kwargs = dict(train=True, wrist=wrist_inputs(batch), rngs={"dropout": rng})
        if locate_weight or kpa_weight:
            logits, sown = model.apply({"params": params}, *args, mutable=["intermediates"],
                                       **kwargs)
        else:
            logits = model.apply({"params": params}, *args, **kwargs)
        metrics = compute_metrics(logits, batch, num_sources, tables, z_loss)
        # The objective is (text token sum) / (batch tokens) + w (point error sum) / (batch
        # points) + w' (readout cross-entropy sum) / (batch robot dims). Micro-batches hold
        # different numbers of target tokens (9 for an action, up to 40 for a caption), of
        # points and of robot rows: the token *sum* plus each auxiliary sum x its scale (=
        # batch tokens / batch points or robot dims, from the whole batch) is differentiated
        # here, and the accumulated gradient divided by the whole batch's token count, so
        # accumulating equals one big batch's objective.
        objective = metrics["loss_sum"]
        if stop_weight != 1.0:   # the stop rows' terminate token counts stop_weight times
            objective = objective + (stop_weight - 1.0) * metrics["stop_ce_sum"]
        if locate_weight:
            kp = localization.pointing_keypoints(sown, batch)
            metrics.update(localization.sums(kp, batch))
            objective = objective + locate_weight * scales["locate"] * metrics["locate_sq_sum"]
        if kpa_weight:
            metrics.update(keypoint_action_sums(keypoint_action_logits(sown), batch, tables))
            objective = objective + kpa_weight * scales["readout"] * metrics["kp_action_ce_sum"]
        if accum == 1:
            return objective / jnp.maximum(metrics["token_count"], 1.0), metrics
        return objective, metrics

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch):
        with sharding.activation_context(setup.mesh, setup.rules):
            return _step(state, batch)

    def _step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        tokens = jnp.sum(batch["decoder_loss_mask"])
        scales = {"locate": tokens / jnp.maximum(jnp.sum(batch["locate_mask"]), 1.0)
                  if locate_weight else 0.0,
                  "readout": tokens / jnp.maximum(jnp.sum(recorded_robot_dims(batch)), 1.0)
                  if kpa_weight else 0.0}
        if accum == 1:
            (_, metrics), grads = grad_fn(state.params, batch, rng, scales)
        else:
            micro = jax.tree.map(
                lambda x: x.reshape((accum, x.shape[0] // accum, *x.shape[1:])), batch)

            def body(carry, xs):
                grads_acc, metrics_acc = carry
                mb, i = xs
                (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i), scales)
                return (jax.tree.map(jnp.add, grads_acc, g),
                        jax.tree.map(jnp.add, metrics_acc, m)), None

            zeros_g = jax.tree.map(jnp.zeros_like, state.params)
            first = jax.tree.map(lambda x: x[0], micro)
            zeros_m = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: loss_fn(state.params, first, rng, scales)[1]))
            (grads, metrics), _ = jax.lax.scan(body, (zeros_g, zeros_m),
                                               (micro, jnp.arange(accum)))
            total = jnp.maximum(metrics["token_count"], 1.0)
            grads = jax.tree.map(lambda g: g / total, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads),
                       param_norm=optax.global_norm(params))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(step, in_shardings=(setup.state_sharding, setup.batch_sharding),
                   out_shardings=(setup.state_sharding, sharding.replicated(setup.mesh)),
                   donate_argnums=(0,))
