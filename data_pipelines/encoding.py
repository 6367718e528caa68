"""Host batches from example batches: prompts, answers and robot actions tokenized with the
project's tokenizers (one `tf.numpy_function` call per batch, behind a lock: sentencepiece and
the action tokenizer's counters are host state), action targets normalized, eval batches padded.

Tokenizing stays on the host rather than in the graph (tensorflow-text's sentencepiece op) because
the action targets need the action tokenizer's bin -> id tables and clip counters, and the
truncation counters the trainer reports; with one numpy call per batch the pipeline delivers
~1,400 examples/s at 64 px and ~580 at 224 px on 2 cores (benchmarks/data_throughput.py), more
than a host's training step consumes.
"""
import threading

import numpy as np
import tensorflow as tf

from rt2_jax import actions as actions_lib
from rt2_jax import localization, preprocessing
from rt2_jax.models import vlm


class BatchEncoder:
    """`action_tokenizers[i]`: the ActionTokenizer of source i (a robot dataset's own bounds),
    None for web sources; each robot row is binned and normalized with its source's.
    `present[i]`: bool [8] (or None = all), the action dims source i records; the target
    tokens of the others (zeros, i.e. the bin of 0) get loss mask 0."""

    def __init__(self, tokenizer, action_tokenizers, prompt_len, target_len, counters,
                 present=None):
        self.tokenizer = tokenizer
        self.action_tokenizers = list(action_tokenizers)
        self.absent = [None if p is None or all(p) else np.flatnonzero(~np.asarray(p, bool))
                       for p in (present or [None] * len(self.action_tokenizers))]
        self.prompt_len = prompt_len
        self.target_len = target_len
        self.counters = counters
        self.limits = [None if t is None else t.bounds.limits() for t in self.action_tokenizers]
        self._lock = threading.Lock()

    def __call__(self, prompt, answer, action, is_robot, source):
        with self._lock:
            return self._encode(prompt, answer, action, is_robot, source)

    def _encode(self, prompt, answer, action, is_robot, source):
        tok = self.tokenizer
        before = tok.num_truncated
        enc, enc_mask = preprocessing.encode_prompts(tok, [p.decode("utf-8") for p in prompt],
                                                     self.prompt_len)
        self.counters.add_host("truncated_prompts", tok.num_truncated - before)
        before = tok.num_truncated
        dec, dec_mask = tok.encode_batch([a.decode("utf-8") for a in answer], self.target_len,
                                         add_eos=True)
        self.counters.add_host("truncated_targets", tok.num_truncated - before)
        norm = np.zeros_like(action, dtype=np.float32)
        for index in np.unique(source[is_robot]):
            rows = np.flatnonzero(is_robot & (source == index))
            action_tok, (low, high) = self.action_tokenizers[index], self.limits[index]
            robot_actions = action[rows]
            outside = (robot_actions[:, 1:] < low) | (robot_actions[:, 1:] > high)
            self.counters.add_host("clipped_actions", outside.any(axis=1).sum())
            self.counters.add_host("clipped_values", outside.sum())
            ids = action_tok.target_token_ids(robot_actions)
            dec[rows] = tok.pad_id
            dec[rows, :ids.shape[1]] = ids
            dec_mask[rows] = False
            dec_mask[rows, :ids.shape[1]] = True
            if self.absent[index] is not None:
                dec_mask[np.ix_(rows, self.absent[index])] = False
            norm[rows] = preprocessing.normalize_actions(robot_actions, low, high)
        return enc, enc_mask, dec, dec_mask.astype(np.float32), norm


def tokenize_batches(ds, encoder, batch_size):
    def tokenize(batch):
        enc, enc_mask, dec, dec_loss, norm = tf.numpy_function(
            encoder, [batch["prompt"], batch["answer"], batch["action"], batch["is_robot"],
                      batch["source"]],
            [tf.int32, tf.bool, tf.int32, tf.float32, tf.float32], stateful=False)
        out = {
            "image": batch["image"],
            "encoder_tokens": tf.ensure_shape(enc, [batch_size, encoder.prompt_len]),
            "encoder_mask": tf.ensure_shape(enc_mask, [batch_size, encoder.prompt_len]),
            "decoder_tokens": tf.ensure_shape(dec, [batch_size, encoder.target_len]),
            "decoder_loss_mask": tf.ensure_shape(dec_loss, [batch_size, encoder.target_len]),
            "source": batch["source"],
            "is_robot": batch["is_robot"],
            "action": tf.ensure_shape(norm, [batch_size, actions_lib.NUM_DIMS]),
        }
        # With a wrist camera only; with the localization loss only (rt2_jax/localization.py).
        for key in (*vlm.WRIST_KEYS, *localization.BATCH_KEYS):
            if key in batch:
                out[key] = batch[key]
        if "answers" in batch:
            out.update(answers=batch["answers"], valid=batch["valid"],
                       action_raw=batch["action"])
        return out

    return ds.map(tokenize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def pad_batch(batch_size):
    def pad(batch):
        n = tf.shape(batch["source"])[0]
        padded = {k: tf.pad(v, [[0, batch_size - n]] + [[0, 0]] * (len(v.shape) - 1))
                  for k, v in batch.items()}
        padded["valid"] = tf.range(batch_size) < n
        padded["source"] = tf.where(padded["valid"], padded["source"], -1)
        return {k: tf.ensure_shape(v, [batch_size, *v.shape[1:]]) for k, v in padded.items()}
    return pad
