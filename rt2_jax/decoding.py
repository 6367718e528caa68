"""Jitted decoding: masked action decoding, chain-of-thought, and free text.

One loop serves all three modes. The ViT and encoder run once (`VLM.prefill`); the decoder then
runs one cached step per token inside a `lax.while_loop`. Each batch row carries a small state
machine, so rows of one batch may be in different phases:

  TEXT    free text; the vocabulary is limited to real pieces (no padding ids); in free-text mode
          EOS ends the row, in chain-of-thought mode the row moves on when it has written the
          `Action:` marker (or hit the plan length limit, after which the marker is forced).
  MARKER  the marker's tokens are forced, one per step (chain-of-thought only).
  ACTION  8 steps; step j allows only the ids of `position_masks[j]` (step 0: the two terminate
          ids; steps 1-7: the 256 bin ids). Logits outside the mask become -inf before argmax or
          sampling, so whatever the weights, an action-mode output is a valid action.
  DONE    pad.

The masks are static numpy arrays built once from the action tokenizer and closed over by the
jitted function: a second call with the same input shapes reuses the compiled loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rt2_jax import actions as actions_lib
from rt2_jax import tokenizer as tokenizer_lib
from rt2_jax.models.vlm import VLM

TEXT, MARKER, ACTION, DONE = 0, 1, 2, 3
MODES = ("action", "cot", "text")
NEG_INF = -1e30


@dataclasses.dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy (argmax); top_k 0 = no top-k truncation.

    terminate_threshold: the probability of the terminate token (among the two terminate ids,
    action position 0) above which a greedy decode says "done"; 0.5 is plain argmax. Below 0.5
    a policy stops more readily: RT-2's data has one terminal frame per episode, so a model
    that has learned when the task is done may still put terminate just under even odds. It
    is applied as a bias log((1 - t) / t) on the terminate logit, so when sampling it
    multiplies the sampled distribution's terminate odds by (1 - t) / t."""

    temperature: float = 0.0
    top_k: int = 0
    terminate_threshold: float = 0.5

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}.")
        if not 0.0 < self.terminate_threshold < 1.0:
            raise ValueError("terminate_threshold must be strictly between 0 and 1 (0.5 = "
                             f"argmax), got {self.terminate_threshold}.")

    @property
    def terminate_bias(self) -> float:
        """What is added to the terminate logit (0 at the default threshold 0.5), scaled by
        the temperature so the sampled odds change by exactly (1 - t) / t."""
        t = self.terminate_threshold
        return float(np.log((1.0 - t) / t)) * (self.temperature or 1.0)


def sample_token(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """logits [B,V] (masked ids at -inf) -> ids [B]."""
    if sampling.temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def cot_marker_ids(tokenizer: tokenizer_lib.Tokenizer) -> np.ndarray:
    """Token ids that end every chain-of-thought prefix (`... Action:`), found as the longest
    common suffix of the encodings of several plans."""
    plans = ("pick up the red block", "move the ball near the star", "push it left", "go")
    encodings = [tokenizer.encode(tokenizer_lib.cot_prefix(p)) for p in plans]
    suffix: list[int] = []
    for ids in zip(*(e[::-1] for e in encodings), strict=False):
        if len(set(ids)) != 1:
            break
        suffix.append(ids[0])
    if not suffix:
        raise ValueError("The tokenizer encodes the chain-of-thought marker 'Action:' differently "
                         "after different plans; chain-of-thought decoding needs a fixed marker.")
    return np.asarray(suffix[::-1], np.int32)


class RowState(NamedTuple):
    """Per-row state of the decode loop's state machine (all [B, ...] arrays)."""

    phase: jax.Array           # TEXT, MARKER, ACTION or DONE
    index: jax.Array           # position within the phase (marker piece / action dim)
    window: jax.Array          # the last len(marker) tokens written (marker detection)
    tokens: jax.Array          # [B, steps] every token written, pad after DONE
    action: jax.Array          # [B, NUM_DIMS] the action ids written so far
    forced_marker: jax.Array   # the loop wrote the chain-of-thought marker (length limit)


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static description of one decoding mode (all arrays are numpy, hashed by identity)."""

    mode: str
    max_steps: int
    text_mask: np.ndarray = dataclasses.field(compare=False)       # bool [V]
    position_masks: np.ndarray = dataclasses.field(compare=False)  # bool [8, V]
    marker: np.ndarray = dataclasses.field(compare=False)          # int32 [m]
    logit_bias: np.ndarray | None = dataclasses.field(default=None, compare=False)  # f32 [V]
    # Vocabulary ids the mode can ever emit; when set, only those columns of the output
    # projection are computed (action mode: the 256 action ids instead of the whole vocabulary).
    output_ids: np.ndarray | None = dataclasses.field(default=None, compare=False)  # int32 [K]
    pad_id: int = 0
    eos_id: int = 1
    start_id: int = 0
    terminate_id: int = -1   # the vocabulary id of "terminate" (action position 0); -1: none


def decode_loop(model: VLM, spec: DecodeSpec, sampling: Sampling, params: Any,
                 image: jax.Array, tokens: jax.Array, mask: jax.Array, rng: jax.Array,
                 wrist: dict | None = None):
    """The decode loop as a traceable function (call it under `jax.jit`): `Decoder` wraps it
    (and lowers it for the AOT check); the evaluator jits it together with its metrics.
    `wrist`: the wrist-camera inputs of a model that takes them (`VLM`'s docstring).

    Each step first `choose`s every row's token (sampled within its phase's mask, or forced),
    then `advance`s the rows' `RowState`."""
    batch = image.shape[0]
    steps = spec.max_steps
    text_mask, pos_masks, bias = spec.text_mask, spec.position_masks, spec.logit_bias
    out_ids = None
    if spec.output_ids is not None:  # score only the ids this mode can emit
        out_ids = jnp.asarray(spec.output_ids)
        text_mask, pos_masks = text_mask[spec.output_ids], pos_masks[:, spec.output_ids]
        bias = None if bias is None else bias[spec.output_ids]
    text_mask, pos_masks = jnp.asarray(text_mask), jnp.asarray(pos_masks)
    marker = jnp.asarray(spec.marker)
    m = marker.shape[0]
    n_act = actions_lib.NUM_DIMS
    # The terminate threshold is a bias on one column at action position 0 (a static one-hot
    # over the columns this mode scores); None at the default 0.5.
    term_bias = None
    if sampling.terminate_bias != 0.0:
        if spec.terminate_id < 0:
            raise ValueError("a terminate_threshold other than 0.5 needs a DecodeSpec that "
                             "names its terminate_id")
        cols = (np.asarray(spec.output_ids) if spec.output_ids is not None
                else np.arange(text_mask.shape[0]))
        hit = cols == spec.terminate_id
        if not hit.any():
            raise ValueError(f"terminate id {spec.terminate_id} is not among the ids this "
                             f"mode ({spec.mode!r}) can emit")
        term_bias = jnp.asarray(hit * np.float32(sampling.terminate_bias))
    cot = spec.mode == "cot"
    start_phase = ACTION if spec.mode == "action" else TEXT

    start = jnp.full((batch, 1), spec.start_id, jnp.int32)
    logits, cache = model.apply(params, image, tokens, mask, start, steps + 1, out_ids,
                                wrist, method=VLM.prefill)

    def choose(t, logits, rows: RowState, rng):
        """The token each row writes at step t: sampled within its phase's mask, or forced."""
        if bias is not None:
            logits = logits + jnp.asarray(bias)[None]
        if term_bias is not None:
            first = (rows.phase == ACTION) & (rows.index == 0)
            logits = logits + jnp.where(first[:, None], term_bias[None], 0.0)
        allowed = jnp.where((rows.phase == ACTION)[:, None],
                            pos_masks[jnp.minimum(rows.index, n_act - 1)], text_mask[None])
        tok = sample_token(jnp.where(allowed, logits, NEG_INF), jax.random.fold_in(rng, t),
                           sampling)
        if out_ids is not None:
            tok = out_ids[tok]
        tok = jnp.where(rows.phase == MARKER, marker[jnp.minimum(rows.index, m - 1)], tok)
        return jnp.where(rows.phase == DONE, spec.pad_id, tok)

    def advance(t, tok, rows: RowState) -> RowState:
        """Records `tok` and moves each row's state machine on."""
        phase, j = rows.phase, rows.index
        out = rows.tokens.at[:, t].set(tok)
        act = jnp.where((phase == ACTION)[:, None] & (jnp.arange(n_act)[None] == j[:, None]),
                        tok[:, None], rows.action)
        window = jnp.concatenate([rows.window[:, 1:], tok[:, None]], axis=1)
        forced = rows.forced_marker
        text_steps_left = steps - (t + 1) - n_act  # room left for marker + action after t
        in_text = phase == TEXT
        if cot:
            matched = jnp.all(window == marker[None], axis=1)
            to_action = in_text & matched
            to_marker = in_text & ~matched & (text_steps_left <= m)
            new_phase = jnp.where(to_action, ACTION, jnp.where(to_marker, MARKER, phase))
            forced = forced | to_marker
        else:
            new_phase = jnp.where(in_text & (tok == spec.eos_id), DONE, phase)
        j_next = jnp.where(new_phase != phase, 0, j + 1)
        marker_done = (phase == MARKER) & (j_next == m)
        action_done = (phase == ACTION) & (j_next == n_act)
        new_phase = jnp.where(marker_done, ACTION, jnp.where(action_done, DONE, new_phase))
        j_next = jnp.where(marker_done | action_done, 0, j_next)
        return RowState(phase=new_phase, index=j_next, window=window, tokens=out, action=act,
                        forced_marker=forced)

    rows = RowState(
        phase=jnp.full((batch,), start_phase, jnp.int32),
        index=jnp.zeros((batch,), jnp.int32),
        window=jnp.full((batch, m), -1, jnp.int32),
        tokens=jnp.full((batch, steps), spec.pad_id, jnp.int32),
        action=jnp.zeros((batch, n_act), jnp.int32),
        forced_marker=jnp.zeros((batch,), bool),
    )
    tok = choose(0, logits[:, 0], rows, rng)
    rows = advance(0, tok, rows)

    def cond(carry):
        t, _, _, rows = carry
        return (t < steps) & jnp.any(rows.phase != DONE)

    def body(carry):
        t, tok, cache, rows = carry
        logits, cache = model.apply(params, cache, tok, out_ids, method=VLM.decode_step)
        tok = choose(t, logits, rows, rng)
        return t + 1, tok, cache, advance(t, tok, rows)

    num_steps, _, _, rows = jax.lax.while_loop(cond, body, (jnp.int32(1), tok, cache, rows))
    return {"tokens": rows.tokens, "action_ids": rows.action, "num_steps": num_steps,
            "forced_marker": rows.forced_marker}


class Decoder:
    """Decodes actions, chain-of-thought plans + actions, or free text with one compiled loop per
    (mode, sampling, input shapes).

        decoder = Decoder(model, action_tokenizer, vocab_size=config.model.vocab_size)
        out = decoder.actions(params, image, prompt_tokens, prompt_mask)   # {'action', 'bins', ...}
    """

    def __init__(self, model: VLM, action_tokenizer: actions_lib.ActionTokenizer,
                 vocab_size: int, max_text_len: int = 32, logit_bias: np.ndarray | None = None,
                 mesh=None, rules=None):
        """`logit_bias` [V] (optional, static) is added to every step's logits before masking.
        With `mesh` and `rules` the loop is traced under `sharding.activation_context`, so the
        model's logical activation constraints shard it on that mesh (what `lower` compiles
        ahead of time is then exactly what runs)."""
        if (mesh is None) != (rules is None):
            raise ValueError("pass both mesh and rules (or neither) to Decoder")
        self.mesh, self.rules = mesh, rules
        self.model = model
        self.action_tokenizer = action_tokenizer
        self.tokenizer = action_tokenizer.tokenizer
        self.vocab_size = vocab_size
        self.max_text_len = max_text_len
        tok = self.tokenizer
        text_mask = np.zeros(vocab_size, bool)
        text_mask[: tok.vocab_size] = True  # padding ids of an enlarged model vocab never appear
        text_mask[tok.pad_id] = False
        self._text_mask = text_mask
        cot_text_mask = text_mask.copy()
        cot_text_mask[tok.eos_id] = False   # a plan ends with the marker, not with EOS
        self._cot_text_mask = cot_text_mask
        self._position_masks = np.asarray(action_tokenizer.position_masks(vocab_size))
        if logit_bias is not None:
            logit_bias = np.asarray(logit_bias, np.float32)
            if logit_bias.shape != (vocab_size,):
                raise ValueError(f"logit_bias must have shape ({vocab_size},), "
                                 f"got {logit_bias.shape}.")
        self._logit_bias = logit_bias
        self._marker = None
        self._compiled: dict[tuple, Any] = {}
        self.num_compilations = 0

    def spec(self, mode: str) -> DecodeSpec:
        """The static description of `mode` ('action', 'cot' or 'text') for `decode_loop`."""
        if mode not in MODES:
            raise ValueError(f"Unknown decode mode {mode!r}; use one of {MODES}.")
        if mode == "cot" and self._marker is None:
            self._marker = cot_marker_ids(self.tokenizer)
        marker = self._marker if mode == "cot" else np.zeros((1,), np.int32)
        n_act = actions_lib.NUM_DIMS
        steps = {"action": n_act, "text": self.max_text_len,
                 "cot": self.max_text_len + len(marker) + n_act}[mode]
        tok = self.tokenizer
        return DecodeSpec(
            mode=mode, max_steps=steps,
            text_mask=self._cot_text_mask if mode == "cot" else self._text_mask,
            position_masks=self._position_masks, marker=marker, logit_bias=self._logit_bias,
            output_ids=(np.flatnonzero(self._position_masks.any(0)).astype(np.int32)
                        if mode == "action" else None),
            pad_id=tok.pad_id,
            eos_id=tok.eos_id, start_id=tok.decoder_start_id,
            terminate_id=int(self.action_tokenizer.terminate_ids[1]))

    def _traced(self, mode: str, sampling: Sampling):
        spec = self.spec(mode)

        def traced(*args):
            self.num_compilations += 1  # runs only when jax traces, i.e. compiles
            if self.mesh is None:
                return decode_loop(self.model, spec, sampling, *args)
            from rt2_jax import sharding

            with sharding.activation_context(self.mesh, self.rules):
                return decode_loop(self.model, spec, sampling, *args)

        return traced

    def _fn(self, mode: str, sampling: Sampling):
        key = (mode, sampling)
        if key not in self._compiled:
            self._compiled[key] = jax.jit(self._traced(mode, sampling))
        return self._compiled[key]

    def lower(self, mode: str, params, image, tokens, mask, rng,
              sampling: Sampling = Sampling(), wrist: dict | None = None):
        """The loop `run` would compile for these (possibly abstract, sharded) arguments,
        lowered: for ahead-of-time fit checks of the program that runs."""
        params = params if "params" in params else {"params": params}
        return jax.jit(self._traced(mode, sampling)).lower(params, image, tokens, mask, rng,
                                                           wrist)

    def run(self, mode: str, params, image, tokens, mask, *, rng=None,
            sampling: Sampling = Sampling(), wrist: dict | None = None) -> dict[str, np.ndarray]:
        """Raw decode: {'tokens' [B,steps], 'action_ids' [B,8], 'num_steps', 'forced_marker' [B]
        (chain-of-thought: the loop wrote the marker because the plan hit its length limit)}.
        `wrist`: the wrist-camera inputs of a model that takes them."""
        if sampling.temperature > 0 and rng is None:
            raise ValueError("Sampling with temperature > 0 needs an explicit PRNG key `rng`.")
        rng = jax.random.PRNGKey(0) if rng is None else rng
        params = params if "params" in params else {"params": params}
        wrist = None if wrist is None else {k: jnp.asarray(v) for k, v in wrist.items()}
        out = self._fn(mode, sampling)(params, jnp.asarray(image), jnp.asarray(tokens),
                                       jnp.asarray(mask, bool), rng, wrist)
        return jax.tree.map(np.asarray, out)

    def actions(self, params, image, tokens, mask, **kw) -> dict[str, np.ndarray]:
        """Masked action decoding -> {'action' float32 [B,8] (robot units), 'bins', 'ids'}."""
        out = self.run("action", params, image, tokens, mask, **kw)
        bins = self.action_tokenizer.token_ids_to_bins(out["action_ids"])
        return {"action": self.action_tokenizer.decode(bins), "bins": bins,
                "ids": out["action_ids"]}

    def chain_of_thought(self, params, image, tokens, mask, **kw) -> list[dict[str, Any]]:
        """Plan text, then a masked action -> per row {'plan', 'action', 'bins'}."""
        out = self.run("cot", params, image, tokens, mask, **kw)
        results = []
        for row, act_ids, forced in zip(out["tokens"], out["action_ids"], out["forced_marker"],
                                        strict=True):
            plan, well_formed = self._parse_plan(row)
            well_formed = well_formed and not bool(forced)
            bins = self.action_tokenizer.token_ids_to_bins(act_ids)
            results.append({"plan": plan, "well_formed": well_formed, "ids": row, "bins": bins,
                            "action": self.action_tokenizer.decode(bins)})
        return results

    def _parse_plan(self, row: np.ndarray) -> tuple[str, bool]:
        """(plan, parses): parses is False when the text is not `Plan: ... Action:`. The caller
        also marks a plan whose marker the loop forced as not well formed, even if it parses."""
        ids = [int(i) for i in row]
        marker = self._marker.tolist()
        m = len(marker)
        end = next((e for e in range(len(ids) - m + 1) if ids[e:e + m] == marker), None)
        if end is None:  # cannot happen: the loop forces the marker before the action
            raise RuntimeError(f"chain-of-thought output {ids} lacks the marker {marker}")
        try:
            plan, _ = tokenizer_lib.split_cot_text(self.tokenizer.decode(ids[:end + m]))
            return plan, True
        except ValueError:
            return self.tokenizer.decode(ids[:end]).strip(), False

    def text(self, params, image, tokens, mask, **kw) -> list[str]:
        """Free text (VQA answers, captions), stopping at EOS or max_text_len."""
        out = self.run("text", params, image, tokens, mask, **kw)
        return [self.tokenizer.decode([int(i) for i in row]) for row in out["tokens"]]
