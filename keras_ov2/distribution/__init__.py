"""Scaling out on the Keras distribution API (JAX): data-parallel, FSDP and
tensor-parallel layouts, the distribution for each, and per-host data shards."""

from keras_ov2.distribution.checked_model_parallel import CheckedModelParallel
from keras_ov2.distribution.checked_model_parallel import LayoutError
from keras_ov2.distribution.data_sharding import data_shard
from keras_ov2.distribution.data_sharding import per_host_batch_size
from keras_ov2.distribution.distribute import make_distribution
from keras_ov2.models.common.layouts import MODES
