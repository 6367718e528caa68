"""Periodic evaluation during training, fully jitted so it runs the same on one host or a pod.

- Robot rows: masked action decoding (the deployed decode loop) against the target bins:
  per-dim and all-8 accuracy, and L1 of the decoded action in normalized units ([-1, 1] per
  continuous dim, i.e. 2 / 256 per bin of error).
- VQA rows: free-text decoding, exact match against any reference answer. The match is made in
  token space: the decoded ids (up to EOS) must equal the tokenizer's encoding of an answer.
Metric sums are reduced inside the jitted function, so each process gets the global result.
Processes may hold different numbers of eval batches (robot data is split by episode); every
process runs the jitted collective the same number of times (`aligned_host_batches`), feeding
all-invalid padding batches once its own data runs out.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from rt2_jax import decoding, localization, sharding, train_state
from rt2_jax.models import vlm


def aligned_host_batches(batches: Iterable[dict], padding: dict, limit: int = 0,
                         any_process_has=None) -> Iterator[dict]:
    """Yields this process's host batches, then `padding` until no process has one left, so
    that every process yields the same number (at most `limit` when > 0) and none leaves a
    collective the others are still in. `any_process_has(bool) -> bool` (default: an allgather
    over processes; the local value on one process) makes the per-batch agreement."""
    if any_process_has is None:
        any_process_has = _any_process_has
    it = iter(batches)
    count = 0
    while not limit or count < limit:
        batch = next(it, None)
        if not any_process_has(batch is not None):
            return
        yield padding if batch is None else batch
        count += 1


def _any_process_has(local: bool) -> bool:
    if jax.process_count() == 1:
        return local
    return bool(np.any(multihost_utils.process_allgather(np.int32(local))))


def padding_batch(element_spec) -> dict:
    """An all-invalid host batch shaped like the eval stream's (`valid` False, source -1)."""
    out = {}
    for k, spec in element_spec.items():
        shape = tuple(spec.shape)
        if spec.dtype.name == "string":
            out[k] = np.full(shape, b"", dtype=object)
        else:
            out[k] = np.zeros(shape, spec.dtype.as_numpy_dtype)
    out["valid"] = np.zeros_like(out["valid"], bool)
    out["source"] = np.full_like(out["source"], -1)
    return out


class Evaluator:
    def __init__(self, config, setup: train_state.TrainSetup, train_mixture):
        from data_pipelines import mixture as mixture_lib

        self.config = config
        self.setup = setup
        self.mixture = mixture_lib.build_mixture(
            config, split="val", process_index=jax.process_index(),
            process_count=jax.process_count(), progress=False)
        self.tokenizer = self.mixture.tokenizer
        self.source_kinds = tuple(train_mixture.source_kinds)
        decoder = decoding.Decoder(setup.model, train_mixture.action_tokenizer,
                                   int(config.model.vocab_size),
                                   max_text_len=int(config.eval.max_text_len))
        # Decoded action ids are always valid, so the table's -1 entries are never read.
        self._id_to_bin = train_state.ActionTables.build(train_mixture.action_tokenizer,
                                                     int(config.model.vocab_size)).id_to_bin
        self._action_spec = decoder.spec("action")
        self._text_spec = decoder.spec("text")
        self._fn = jax.jit(self._metrics)
        self._padding = padding_batch(self.mixture.dataset.element_spec)

    def _metrics(self, params, batch):
        # Traced under the mesh's activation rules, like the train step.
        with sharding.activation_context(self.setup.mesh, self.setup.rules):
            return self._metrics_in_context(params, batch)

    def _metrics_in_context(self, params, batch):
        model = self.setup.model
        rng = jax.random.PRNGKey(0)
        greedy = decoding.Sampling()
        args = (params, batch["image"], batch["encoder_tokens"], batch["encoder_mask"], rng,
                vlm.wrist_inputs(batch))
        act = decoding.decode_loop(model, self._action_spec, greedy, *args)["action_ids"]
        txt = decoding.decode_loop(model, self._text_spec, greedy, *args)["tokens"]
        valid = batch["valid"]
        robot = (valid & batch["is_robot"]).astype(jnp.float32)
        vqa = (valid & batch["is_vqa"]).astype(jnp.float32)
        match = jnp.any(jnp.all(txt[:, None, :] == batch["answer_ids"], axis=-1), axis=-1)
        out = {
            **train_state.action_sums(act, jnp.asarray(self._id_to_bin)[act], batch, robot),
            "robot_rows": robot.sum(), "vqa_rows": vqa.sum(),
            "vqa_exact": (match.astype(jnp.float32) * vqa).sum(),
        }
        if "locate_uv" in batch:
            # Where keypoints 0..P-1 point on the pointing questions (one more image-tower
            # pass).
            _, sown = model.apply(params, batch["image"], batch["encoder_tokens"],
                                  batch["encoder_mask"], method="encode",
                                  mutable=["intermediates"])
            kp = localization.pointing_keypoints(sown, batch)
            out.update(localization.sums(kp, {
                "locate_uv": batch["locate_uv"],
                "locate_mask": batch["locate_mask"] * valid.astype(jnp.float32)[:, None]}))
        return out

    def _answer_ids(self, answers: np.ndarray, steps: int) -> np.ndarray:
        """bytes [B, K] -> int32 [B, K, steps]: each answer's ids + EOS, pad after; -2 rows for
        empty answers (they never match)."""
        tok = self.tokenizer
        out = np.full((*answers.shape, steps), -2, np.int32)
        for idx in np.ndindex(answers.shape):
            text = answers[idx].decode("utf-8")
            if not text:
                continue
            ids = [*tok.encode(text), tok.eos_id]
            if len(ids) <= steps:
                out[idx] = tok.pad_id
                out[idx][: len(ids)] = ids
        return out

    def _global_batch(self, host: dict) -> dict:
        kinds = np.asarray(self.source_kinds)
        source = host["source"]
        is_vqa = np.where(source >= 0, kinds[np.clip(source, 0, None)] == "vqa", False)
        arrays = {k: host[k] for k in ("image", "encoder_tokens", "encoder_mask",
                                       "decoder_tokens", "decoder_loss_mask", "is_robot",
                                       "action", "valid")}
        arrays.update({k: host[k] for k in (*vlm.WRIST_KEYS, *localization.BATCH_KEYS)
                       if k in host})
        arrays["is_vqa"] = is_vqa
        arrays["answer_ids"] = self._answer_ids(host["answers"], self._text_spec.max_steps)
        out = {}
        for k, v in arrays.items():
            spec = sharding.batch_sharding(self.setup.mesh, self.setup.rules, v.ndim)
            out[k] = jax.make_array_from_process_local_data(spec, v)
        return out

    def run(self, params) -> dict[str, float]:
        """Evaluates on config.eval.num_batches batches of the val split (the same ones every
        time: the val stream restarts)."""
        limit = int(self.config.eval.num_batches)
        sums = None
        for host in aligned_host_batches(self.mixture.dataset.as_numpy_iterator(),
                                         self._padding, limit):
            out = self._fn({"params": params}, self._global_batch(host))
            out = jax.tree.map(np.asarray, out)
            sums = out if sums is None else jax.tree.map(np.add, sums, out)
        if sums is None:
            return {}
        # Per dim: which parts of the action the model has learned (terminate and gripper
        # come early; the position deltas need the model to read the image).
        results = train_state.summarize_actions(sums, per_dim_l1=True)
        if results:
            results["robot_examples"] = float(sums["robot_rows"])
        if sums["vqa_rows"] > 0:
            results["vqa_exact_match"] = float(sums["vqa_exact"] / sums["vqa_rows"])
            results["vqa_examples"] = float(sums["vqa_rows"])
        results.update(localization.summarize(sums))
        return results
