"""Robot actions as text: continuous action <-> 256 bins per dim <-> vocabulary token ids.

A leaf module: it imports only numpy, sentencepiece (through rt2_jax.tokenizer) and the standard
library, so a robot-side client can decode actions without JAX or TensorFlow.

The action has 8 entries in RT-2 order `terminate, dx, dy, dz, droll, dpitch, dyaw, gripper`.

terminate convention (ours; the RT-2 paper leaves it undefined): 1 = the episode should end
now, 0 = continue. Its bin equals its value. The paper's mid-episode examples start with `1`
(probably RT-1's one-hot argmax, where index 1 meant "continue"); under our convention a
mid-episode target starts with `0`. Encoding accepts terminate values in [0, 1] and rounds
at 0.5; a value outside [0, 1] is a ValueError (it is a flag, not a measurement).

The 7 continuous dims are clipped to per-dim bounds [low, high] and cut into 256 equal bins:
bin = floor((x - low) / (high - low) * 256), with x == high in bin 255; bin i decodes to its
centre low + (i + 0.5) * (high - low) / 256. So all 256 bins are reachable, decode to 256
distinct values, and a value inside the bounds round-trips within half a bin width. Values
outside the bounds are clipped (counted in `ActionTokenizer.num_clipped`) and land in bin 0 or
255. A dim whose bounds are narrower than `MIN_BOUND_WIDTH * max(1, |centre|)` (for instance
low == high, a dim the data never moves) is widened symmetrically about its centre to that width
before binning, so there is no division by zero and the 256 centres stay distinct in float32.

Text form: `format_action_bins(bins)` -> '1 128 91 241 5 101 127 217'; `parse_action_text` is
its strict inverse. Token mappings, chosen by name:

- `integers` (PaLI-X): bin i is the vocabulary's single piece for the number i as it appears
  in running text (sentencepiece's '▁i'); the action text tokenizes to exactly the 8 action ids.
- `least_frequent` (PaLM-E): the 256 lowest-scoring learned pieces are overwritten (a
  sentencepiece score is a log probability for unigram models, minus the merge rank for BPE
  ones: lowest = rarest / latest merged). Eligible
  are normal pieces only (never control, unknown, user-defined, unused or byte pieces), with at
  least two characters after a leading '▁' (single characters and the bare '▁' spell text
  that has no other segmentation), no digits, and not produced by the prompt templates. Bin i
  is the i-th smallest chosen id. As in PaLM-E, ordinary text whose segmentation uses one of
  those pieces shares its id with an action token.

(Over 400 lines on purpose: bounds, binning, both token mappings, parsing and the decode masks
are one contract, and robot-side code imports this single leaf module.)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np

from rt2_jax import tokenizer as tokenizer_lib

ACTION_DIMS = ("terminate", "dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper")
CONTINUOUS_DIMS = ACTION_DIMS[1:]
NUM_DIMS = len(ACTION_DIMS)
NUM_CONTINUOUS = len(CONTINUOUS_DIMS)
NUM_BINS = 256
NUM_TERMINATE_VALUES = 2  # 0 = continue, 1 = terminate (bin == value)
TERMINATE, CONTINUE = 1, 0


def normalized_from_bins(bins, xp=np):
    """Bins [..., 8] (terminate value, then 7 bin indices) -> the normalized action the data
    pipeline targets: terminate as is, each continuous dim at its bin centre in [-1, 1].
    `xp` is numpy or jax.numpy (the trainer and evaluator call it inside jit)."""
    bins = xp.asarray(bins).astype(xp.float32)
    centres = (bins[..., 1:] + 0.5) / NUM_BINS * 2.0 - 1.0
    return xp.concatenate([bins[..., :1], centres], axis=-1)


BOUND_MODES = ("q01_q99", "min_max", "fixed")
MAPPINGS = ("integers", "least_frequent")
MIN_BOUND_WIDTH = 2e-4  # relative to max(1, |centre|); see the module docstring
_JSON_FORMAT = "rt2_jax.action_bounds.v1"
_CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")


# ---------------------------------------------------------------------------------------------
# Bounds
# ---------------------------------------------------------------------------------------------


def _float_vector(values, name: str, sizes: Sequence[int] = (NUM_CONTINUOUS,)) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a list of numbers, got {values!r}") from err
    if array.ndim != 1 or array.shape[0] not in sizes:
        raise ValueError(
            f"{name} must have shape ({' or '.join(map(str, sizes))},) "
            f"(dims {', '.join(CONTINUOUS_DIMS)}), got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        bad = [int(i) for i in np.flatnonzero(~np.isfinite(array))]
        raise ValueError(f"{name} has non-finite entries at indices {bad}: {array.tolist()}")
    return array


@dataclasses.dataclass(frozen=True)
class ActionBounds:
    """Per-dim [low, high] of the 7 continuous dims (dx .. gripper), as given (not widened)."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def __post_init__(self):
        low = _float_vector(self.low, "ActionBounds.low")
        high = _float_vector(self.high, "ActionBounds.high")
        inverted = np.flatnonzero(low > high)
        if inverted.size:
            dims = [f"{CONTINUOUS_DIMS[i]} ({low[i]} > {high[i]})" for i in inverted]
            raise ValueError(f"ActionBounds low > high for {', '.join(dims)}")
        object.__setattr__(self, "low", tuple(float(v) for v in low))
        object.__setattr__(self, "high", tuple(float(v) for v in high))

    @classmethod
    def from_stats(
        cls,
        stats: Mapping[str, Sequence[float]] | None,
        mode: str = "q01_q99",
        fixed_low: Sequence[float] | None = None,
        fixed_high: Sequence[float] | None = None,
    ) -> ActionBounds:
        """Bounds from dataset statistics.

        `stats` maps 'mean', 'std', 'min', 'max', 'q01', 'q99' to arrays over the 7 continuous
        dims, or over all 8 action dims in RT-2 order (then entry 0, terminate, is ignored).
        Only the keys the mode needs are read. mode: 'q01_q99' (default; robust to outliers),
        'min_max', or 'fixed' (uses fixed_low/fixed_high, 7 values each; stats may be None).
        """
        if mode == "fixed":
            if fixed_low is None or fixed_high is None:
                raise ValueError(
                    "bound mode 'fixed' needs fixed_low and fixed_high (7 values each)")
            return cls(tuple(fixed_low), tuple(fixed_high))
        if mode not in BOUND_MODES:
            raise ValueError(f"unknown bound mode {mode!r}; choose one of {BOUND_MODES}")
        low_key, high_key = mode.split("_")
        if stats is None:
            raise ValueError(f"bound mode {mode!r} needs dataset statistics; got stats=None")
        vectors = []
        for key in (low_key, high_key):
            if key not in stats:
                raise ValueError(
                    f"action statistics lack key {key!r} needed by bound mode {mode!r}; "
                    f"present keys: {sorted(stats)}"
                )
            vector = _float_vector(stats[key], f"stats[{key!r}]", (NUM_CONTINUOUS, NUM_DIMS))
            vectors.append(vector[1:] if vector.shape[0] == NUM_DIMS else vector)
        return cls(tuple(vectors[0]), tuple(vectors[1]))

    def to_json_dict(self) -> dict:
        """Plain-JSON form (json.dumps-able) that travels with checkpoints and exports."""
        return {
            "format": _JSON_FORMAT,
            "dims": list(CONTINUOUS_DIMS),
            "low": list(self.low),
            "high": list(self.high),
        }

    @classmethod
    def from_json_dict(cls, data: Mapping) -> ActionBounds:
        if not isinstance(data, Mapping) or "low" not in data or "high" not in data:
            raise ValueError(
                f"action bounds JSON must be an object with 'low' and 'high': {data!r}")
        if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
            raise ValueError(f"action bounds JSON has format {data['format']!r}, "
                             f"expected {_JSON_FORMAT!r}")
        if "dims" in data and list(data["dims"]) != list(CONTINUOUS_DIMS):
            raise ValueError(f"action bounds JSON dims {data['dims']} differ from "
                             f"{list(CONTINUOUS_DIMS)}")
        return cls(tuple(data["low"]), tuple(data["high"]))

    def limits(self) -> tuple[np.ndarray, np.ndarray]:
        """float64[7] (low, high) used for binning: too-narrow dims widened about their centre."""
        low = np.asarray(self.low, dtype=np.float64)
        high = np.asarray(self.high, dtype=np.float64)
        centre = (low + high) / 2
        min_width = MIN_BOUND_WIDTH * np.maximum(1.0, np.abs(centre))
        narrow = (high - low) < min_width
        low = np.where(narrow, centre - min_width / 2, low)
        high = np.where(narrow, centre + min_width / 2, high)
        return low, high

    def bin_width(self) -> np.ndarray:
        low, high = self.limits()
        return (high - low) / NUM_BINS


# ---------------------------------------------------------------------------------------------
# Bins and text
# ---------------------------------------------------------------------------------------------


def _describe_index(flat_index: int, shape: tuple[int, ...]) -> str:
    index = np.unravel_index(flat_index, shape)
    dim = ACTION_DIMS[int(index[-1])]
    batch = tuple(int(i) for i in index[:-1])
    return f"dim {dim!r}" + (f" of action {batch}" if batch else "")


def check_bins(bins) -> np.ndarray:
    """Validate bins int[..., 8] (terminate in {0, 1}, others in 0..255); return them as int32."""
    array = np.asarray(bins)
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"action bins must be integers, got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[-1] != NUM_DIMS:
        raise ValueError(f"action bins must have shape [..., {NUM_DIMS}], got {array.shape}")
    limits = np.array([NUM_TERMINATE_VALUES] + [NUM_BINS] * NUM_CONTINUOUS)
    bad = np.flatnonzero((array < 0) | (array >= limits))
    if bad.size:
        first = int(bad[0])
        value = int(array.reshape(-1)[first])
        allowed = "0 or 1" if first % NUM_DIMS == 0 else f"0..{NUM_BINS - 1}"
        raise ValueError(
            f"action bin {value} for {_describe_index(first, array.shape)} is out of range "
            f"(allowed: {allowed}); {bad.size} bad value(s) in total"
        )
    return array.astype(np.int32)


def format_action_bins(bins) -> str:
    """'1 128 91 241 5 101 127 217' for one action's 8 bins."""
    array = check_bins(bins)
    if array.shape != (NUM_DIMS,):
        raise ValueError(f"format_action_bins takes one action of {NUM_DIMS} bins, "
                         f"got shape {array.shape}")
    return " ".join(str(int(value)) for value in array)


def parse_action_text(text: str) -> np.ndarray:
    """int32[8] bins from '1 128 91 241 5 101 127 217'; strict (ValueError names the problem).

    Outer whitespace is ignored; fields must be separated by single spaces and be canonical
    decimal integers (no sign, no leading zeros).
    """
    if not isinstance(text, str):
        raise TypeError(f"action text must be a str, got {type(text).__name__}")
    fields = text.strip().split(" ")
    if text.strip() and "" in fields:
        raise ValueError(f"action text fields must be separated by single spaces: {text!r}")
    if len(fields) != NUM_DIMS or not text.strip():
        raise ValueError(
            f"action text must have {NUM_DIMS} space-separated integers "
            f"({' '.join(ACTION_DIMS)}), got {len(fields) if text.strip() else 0}: {text!r}"
        )
    for position, field in enumerate(fields):
        if not _CANONICAL_INT.fullmatch(field):
            raise ValueError(
                f"action text field {position} ({ACTION_DIMS[position]}) is {field!r}, not a "
                f"non-negative integer without sign or leading zeros: {text!r}"
            )
    return check_bins(np.array([int(field) for field in fields], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Token mappings
# ---------------------------------------------------------------------------------------------


def integer_action_ids(tok: tokenizer_lib.Tokenizer) -> np.ndarray:
    """int32[256]: id of the single piece for each number 0..255 as it appears in action text.

    Raises ValueError naming the first number that is not exactly one piece.
    """
    ids = []
    for number in range(NUM_BINS):
        pieces = tok.encode(str(number))
        if len(pieces) != 1:
            bare = tok.processor.piece_to_id(str(number)) != tok.unk_id
            bare_note = "exists but is not what running text uses" if bare else "is absent"
            raise ValueError(
                f"mapping 'integers' needs one vocabulary piece per number 0..{NUM_BINS - 1}, "
                f"but number {number} encodes to {len(pieces)} pieces "
                f"{[tok.id_to_piece(i) for i in pieces]} in {tok.model_path} (the bare piece "
                f"{str(number)!r} {bare_note}"
                "). Use a vocabulary with these pieces (e.g. user_defined_symbols '▁0'..'▁255', "
                "see rt2_jax.tools.make_tokenizer) or mapping 'least_frequent'."
            )
        ids.append(pieces[0])
    # Numbers must keep their ids in running text, not only alone.
    text = " ".join(str(number) for number in range(NUM_BINS))
    in_context = tok.encode(text)
    if in_context != ids:
        first = next((i for i, (a, b) in enumerate(zip(in_context, ids, strict=False)) if a != b),
                     min(len(in_context), len(ids)))
        raise ValueError(
            f"mapping 'integers': in running text '0 1 2 ... 255' number {first} does not "
            f"encode to its own single piece in {tok.model_path}"
        )
    if len(set(ids)) != NUM_BINS:
        raise ValueError(f"mapping 'integers': numbers share pieces in {tok.model_path}")
    return np.asarray(ids, dtype=np.int32)


def least_frequent_candidates(tok: tokenizer_lib.Tokenizer) -> np.ndarray:
    """Ids eligible for the least_frequent mapping (rules in the module docstring)."""
    reserved = tok.template_token_ids() | {tok.pad_id, tok.eos_id, tok.unk_id}
    eligible = []
    for piece_id in range(tok.vocab_size):
        if tok.piece_types[piece_id] != tokenizer_lib.PIECE_NORMAL or piece_id in reserved:
            continue
        piece = tok.processor.id_to_piece(piece_id)
        text = piece.removeprefix("\u2581")
        if len(text) < 2 or any(char.isdigit() for char in piece):
            continue
        eligible.append(piece_id)
    return np.asarray(eligible, dtype=np.int32)


def least_frequent_action_ids(tok: tokenizer_lib.Tokenizer) -> np.ndarray:
    """int32[256]: the 256 lowest-scoring eligible pieces, in increasing id order."""
    candidates = least_frequent_candidates(tok)
    if candidates.size < NUM_BINS:
        raise ValueError(
            f"mapping 'least_frequent' needs {NUM_BINS} eligible pieces but {tok.model_path} has "
            f"only {candidates.size}; use a larger vocabulary or mapping 'integers'"
        )
    scores = np.array([tok.processor.get_score(int(i)) for i in candidates])
    # Lowest score first; among equal scores the later (rarer-by-construction) id first.
    order = np.lexsort((-candidates, scores))
    return np.sort(candidates[order[:NUM_BINS]]).astype(np.int32)


_MAPPING_FUNCTIONS = {
    "integers": integer_action_ids,
    "least_frequent": least_frequent_action_ids,
}


# ---------------------------------------------------------------------------------------------
# ActionTokenizer
# ---------------------------------------------------------------------------------------------


class ActionTokenizer:
    """Continuous action <-> bins <-> token ids for one set of bounds and one token mapping."""

    def __init__(
        self,
        bounds: ActionBounds,
        tokenizer: tokenizer_lib.Tokenizer,
        mapping: str = "integers",
    ):
        if mapping not in _MAPPING_FUNCTIONS:
            raise ValueError(f"unknown action token mapping {mapping!r}; choose one of {MAPPINGS}")
        self.bounds = bounds
        self.tokenizer = tokenizer
        self.mapping = mapping
        self._low, self._high = bounds.limits()
        self._width = (self._high - self._low) / NUM_BINS
        action_ids = _MAPPING_FUNCTIONS[mapping](tokenizer)
        action_ids.setflags(write=False)
        self.action_ids = action_ids
        terminate_ids = action_ids[:NUM_TERMINATE_VALUES].copy()
        terminate_ids.setflags(write=False)
        self.terminate_ids = terminate_ids
        self._id_to_bin = np.full(int(action_ids.max()) + 1, -1, dtype=np.int32)
        self._id_to_bin[action_ids] = np.arange(NUM_BINS, dtype=np.int32)
        self._mask_cache: dict[tuple[str, int], np.ndarray] = {}
        self.num_encoded = 0
        self.num_clipped = 0
        self.num_clipped_per_dim = np.zeros(NUM_CONTINUOUS, dtype=np.int64)

    @classmethod
    def from_config(cls, config, *, stats: Mapping[str, Sequence[float]] | None = None,
                    bounds: ActionBounds | None = None,
                    tokenizer: tokenizer_lib.Tokenizer | None = None) -> ActionTokenizer:
        """The action tokenizer an experiment config describes: `config.actions.mapping` over
        `tokenizer` (default: `config.tokenizer.model_path`'s), with `bounds` if given, else
        `config.actions.bounds` (q01_q99, min_max or fixed with fixed_low/fixed_high) applied to
        the robot dataset's `stats`. The one place training data, the ahead-of-time compile
        and tools build it."""
        actions_cfg = config.actions
        if tokenizer is None:
            tokenizer = tokenizer_lib.Tokenizer(config.tokenizer.get("model_path") or None)
        if bounds is None:
            if stats is None and actions_cfg.bounds != "fixed":
                raise ValueError(f"Action bounds mode {actions_cfg.bounds!r} needs a robot "
                                 "source for statistics; add one or use "
                                 "config.actions.bounds='fixed'.")
            bounds = ActionBounds.from_stats(
                stats, actions_cfg.bounds,
                fixed_low=list(actions_cfg.get("fixed_low", [])) or None,
                fixed_high=list(actions_cfg.get("fixed_high", [])) or None)
        return cls(bounds, tokenizer, actions_cfg.mapping)

    def __repr__(self) -> str:
        return (f"ActionTokenizer(mapping={self.mapping!r}, bounds={self.bounds}, "
                f"tokenizer={self.tokenizer!r})")

    # --- action <-> bins ---

    def encode(self, action) -> np.ndarray:
        """int32[..., 8] bins of float actions [..., 8]; clips (and counts) out-of-bound values."""
        values = np.asarray(action, dtype=np.float64)
        if values.ndim == 0 or values.shape[-1] != NUM_DIMS:
            raise ValueError(f"actions must have shape [..., {NUM_DIMS}] "
                             f"({', '.join(ACTION_DIMS)}), got {values.shape}")
        if np.isnan(values).any():
            first = int(np.flatnonzero(np.isnan(values))[0])
            raise ValueError(f"action has NaN at {_describe_index(first, values.shape)}")
        terminate = values[..., 0]
        if ((terminate < 0) | (terminate > 1)).any():
            bad = terminate[(terminate < 0) | (terminate > 1)]
            raise ValueError(
                f"terminate must be in [0, 1] (1 = end episode, 0 = continue), got {bad[:5]}"
            )
        continuous = values[..., 1:]
        clipped = (continuous < self._low) | (continuous > self._high)
        per_dim = clipped.reshape(-1, NUM_CONTINUOUS).sum(axis=0)
        self.num_clipped_per_dim += per_dim
        self.num_clipped += int(per_dim.sum())
        self.num_encoded += int(np.prod(values.shape[:-1]))
        span = self._high - self._low
        fraction = (np.clip(continuous, self._low, self._high) - self._low) / span
        continuous_bins = np.minimum(np.floor(fraction * NUM_BINS), NUM_BINS - 1)
        bins = np.concatenate([(terminate >= 0.5)[..., None], continuous_bins], axis=-1)
        return bins.astype(np.int32)

    def decode(self, bins) -> np.ndarray:
        """float32[..., 8] actions: terminate as 0.0/1.0, each continuous bin at its centre."""
        bins = check_bins(bins)
        continuous = self._low + (bins[..., 1:] + 0.5) * self._width
        return np.concatenate([bins[..., :1], continuous], axis=-1).astype(np.float32)

    def bin_centres(self) -> np.ndarray:
        """float32[7, 256]: the value each bin of each continuous dim decodes to."""
        centres = self._low[:, None] + (np.arange(NUM_BINS) + 0.5) * self._width[:, None]
        return centres.astype(np.float32)

    # --- bins <-> token ids ---

    def bins_to_token_ids(self, bins) -> np.ndarray:
        return self.action_ids[check_bins(bins)]

    def token_ids_to_bins(self, ids) -> np.ndarray:
        """int32[..., 8] bins of action token ids [..., 8]; ValueError on a non-action id."""
        ids = np.asarray(ids)
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 0 or ids.shape[-1] != NUM_DIMS:
            raise ValueError(f"action token ids must have shape [..., {NUM_DIMS}], got {ids.shape}")
        in_table = (ids >= 0) & (ids < self._id_to_bin.shape[0])
        bins = np.where(in_table, self._id_to_bin[np.where(in_table, ids, 0)], -1)
        bad = np.flatnonzero(bins.reshape(-1) < 0)
        if bad.size:
            first = int(bad[0])
            token = int(ids.reshape(-1)[first])
            piece = (repr(self.tokenizer.id_to_piece(token))
                     if 0 <= token < self.tokenizer.vocab_size else "outside the vocabulary")
            raise ValueError(
                f"token id {token} ({piece}) at {_describe_index(first, ids.shape)} is not an "
                f"action token of mapping {self.mapping!r}"
            )
        return check_bins(bins)

    def target_token_ids(self, action) -> np.ndarray:
        """int32[..., 9]: the 8 action token ids of `action` [..., 8] followed by EOS."""
        ids = self.bins_to_token_ids(self.encode(action))
        eos = np.full((*ids.shape[:-1], 1), self.tokenizer.eos_id, dtype=np.int32)
        return np.concatenate([ids, eos], axis=-1).astype(np.int32)

    def action_from_token_ids(self, ids) -> np.ndarray:
        """float32[..., 8] action from 8 action token ids per action."""
        return self.decode(self.token_ids_to_bins(ids))

    # --- chain of thought ---

    def cot_target_token_ids(self, plan: str, action) -> np.ndarray:
        """int32[n]: `Plan: {plan}. Action:` then the 8 action ids of one action, then EOS."""
        prefix = self.tokenizer.encode(tokenizer_lib.cot_prefix(plan))
        return np.concatenate([np.asarray(prefix, dtype=np.int32),
                               self.target_token_ids(np.asarray(action).reshape(NUM_DIMS))])

    def parse_cot_token_ids(self, ids) -> tuple[str, np.ndarray]:
        """(plan, bins int32[8]) from chain-of-thought ids (cut at EOS, pad ignored)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) != self.tokenizer.pad_id]
        if self.tokenizer.eos_id in ids:
            ids = ids[:ids.index(self.tokenizer.eos_id)]
        if len(ids) < NUM_DIMS + 1:
            raise ValueError(f"chain-of-thought output has {len(ids)} tokens; needs a plan and "
                             f"{NUM_DIMS} action tokens")
        plan, rest = tokenizer_lib.split_cot_text(self.tokenizer.decode(ids[:-NUM_DIMS]))
        if rest:
            raise ValueError(f"unexpected text {rest!r} between 'Action:' and the action tokens")
        return plan, self.token_ids_to_bins(np.asarray(ids[-NUM_DIMS:]))

    # --- vocabulary masks (static, cached per vocab_size, read-only) ---

    def _check_vocab_size(self, vocab_size: int) -> None:
        if vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer's "
                             f"{self.tokenizer.vocab_size} pieces")

    def action_mask(self, vocab_size: int) -> np.ndarray:
        """bool[vocab_size]: True exactly at the 256 action token ids."""
        key = ("action", vocab_size)
        if key not in self._mask_cache:
            self._check_vocab_size(vocab_size)
            mask = np.zeros(vocab_size, dtype=bool)
            mask[self.action_ids] = True
            mask.setflags(write=False)
            self._mask_cache[key] = mask
        return self._mask_cache[key]

    def position_masks(self, vocab_size: int) -> np.ndarray:
        """bool[8, vocab_size]: row 0 allows the 2 terminate ids, rows 1..7 the 256 bin ids."""
        key = ("positions", vocab_size)
        if key not in self._mask_cache:
            masks = np.repeat(self.action_mask(vocab_size)[None], NUM_DIMS, axis=0)
            masks[0] = False
            masks[0, self.terminate_ids] = True
            masks.setflags(write=False)
            self._mask_cache[key] = masks
        return self._mask_cache[key]

