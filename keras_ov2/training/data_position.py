"""`TrackedBatches`: the Grain iterator state after each batch, by step.

Keras reads batches ahead of the step it trains (to peek at their spec, to
prefetch, tf.data's buffers), so the live iterator's `get_state()` at the
end of step k is already past batch k: saving it would skip batches on
resume. This wrapper records the state after every batch it yields; the
pipeline is deterministic from its state, so every iterator over it has the
same state after its n-th batch, and `state_at(k)` is the state to resume
from after step k.
"""

import json
import threading

import grain
import numpy as np


def plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Grain iterator state holds a {type(value).__name__}, not JSON.")


def json_state(state):
    """A JSON round trip (NumPy scalars -> Python): a snapshot, safe to keep."""
    return json.loads(json_bytes(state))


def json_bytes(state):
    return json.dumps(state, default=plain).encode()


def resplit(states, saved_shards, shards, where):
    """The data state each of `shards` data shards resumes from, given the
    states the saving run's hosts wrote (one per host, `saved_shards`
    distinct shards among them): the resume of a run on another number of
    hosts.

    The pretraining pipeline's shards interleave one shuffled order (shard
    i of c reads records i, i + c, ...), and its state is
    `{"next_index": n}`, the records the shard has read. When every shard
    has read n, every record before n * c is read, so each of `shards`
    shards goes on from n * c / shards, and the same global batches follow
    (as sets of records). Exact within an epoch, and across epochs when the
    source's size divides by both shard counts. Other states (with Grain
    worker processes, or after skipped records left the shards unequal)
    cannot be re-split: a ValueError says so.
    """
    advice = f"Resume on as many hosts as the run was saved with ({len(states)})."
    if any(set(state) != {"next_index"} for state in states):
        raise ValueError(f"{where}: the data states of {saved_shards} shards cannot be split "
                         f"into {shards} (they are not the pretraining pipeline's "
                         f"{{'next_index': n}}; with Grain workers they never are). {advice}")
    read = sorted({state["next_index"] for state in states})
    if len(read) != 1 or read[0] * saved_shards % shards:
        raise ValueError(f"{where}: the {saved_shards} data shards had read {read} records "
                         f"each; that does not split evenly into {shards}. {advice}")
    return {"next_index": read[0] * saved_shards // shards}


class TrackedBatches(grain.IterDataset):
    """Yields `parent`'s batches; every iterator starts at `start_state`
    (the state saved at step `start_step`, or the beginning when None)."""

    def __init__(self, parent, start_state=None, start_step=0):
        super().__init__(parent)
        self.start_state, self.start_step = start_state, start_step
        self.states, self.lock = {}, threading.Lock()

    def __iter__(self):
        return TrackedIterator(self._parent.__iter__(), self)

    def record(self, step, state):
        with self.lock:
            self.states.setdefault(step, json_state(state))

    def state_at(self, step):
        """The iterator state after `step` batches (counted from the start
        of the stage); forgets earlier ones."""
        with self.lock:
            if step not in self.states:
                raise KeyError(f"No iterator state recorded for step {step}; recorded: "
                               f"{sorted(self.states)[:3]}...")
            self.states = {k: v for k, v in self.states.items() if k >= step}
            return self.states[step]


class TrackedIterator(grain.DatasetIterator):
    def __init__(self, parent, owner):
        super().__init__(parent)
        self.owner, self.step = owner, owner.start_step
        if owner.start_state is not None:
            parent.set_state(owner.start_state)
        owner.record(self.step, parent.get_state())

    def __next__(self):
        element = next(self._parent)
        self.step += 1
        self.owner.record(self.step, self._parent.get_state())
        return element

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)
