"""Which part of the global batch each host reads.

Keras does not shard a Grain dataset on JAX: each host's batch goes as it
is into `jax.make_array_from_process_local_data`, so each host must yield its
own rows. Hosts that hold the same model replica (a "model" axis spanning
hosts) must read the same rows; otherwise every host reads its own. These
helpers follow the rule Keras applies to tf.data
(`Distribution.distribute_tf_dataset`) and give `make_pretraining_dataset`'s
`shard_index`, `shard_count` and `batch_size`.
"""

import keras


def current(distribution):
    distribution = distribution or keras.distribution.distribution()
    if distribution is None:
        raise ValueError(
            "No distribution: pass one, or call this inside `distribution.scope()`."
        )
    return distribution


def data_shard(distribution=None):
    """(shard_index, shard_count) of this host's data; `distribution`
    defaults to the current one."""
    distribution = current(distribution)
    count = min(distribution.num_processes, distribution.num_model_replicas)
    return distribution.data_shard_id, count


def per_host_batch_size(global_batch_size, distribution=None):
    """Rows of each global batch this host yields."""
    distribution = current(distribution)
    replicas = distribution.num_model_replicas
    if global_batch_size % replicas:
        raise ValueError(
            f"The global batch size {global_batch_size} must be divisible by "
            f"the {replicas} data-parallel replicas (the mesh's 'data' axis)."
        )
    return global_batch_size // data_shard(distribution)[1]
