"""`make_distribution`: a device mesh and a Keras distribution for a mode."""

import math

import keras

from keras_ov2.distribution.checked_model_parallel import CheckedModelParallel
from keras_ov2.models.common.layouts import DATA
from keras_ov2.models.common.layouts import MODEL
from keras_ov2.models.common.layouts import MODES
from keras_ov2.models import presets


def make_distribution(mesh=None, mode="data", model=None):
    """Returns the `keras.distribution` Distribution for `mode` over every
    device (`keras.distribution.list_devices()`: all hosts' devices); it
    does not set it.

    Make it current around building *and* training the model, since Keras
    lays out a variable when it creates it and splits each batch in `fit`:

        distribution = make_distribution({"data": 4, "model": 2}, "tensor",
                                         model="openvision2_captioner_vit_large_patch14_84")
        with distribution.scope():
            captioner = OpenVision2Captioner.from_preset(...)
            captioner.fit(...)

    or `keras.distribution.set_distribution(distribution)` for a whole
    program. With several hosts, call `keras.distribution.initialize()` on
    every host first, and feed each host its own part of the batch (see
    `data_shard` and `per_host_batch_size`).

    Args:
        mesh: `{"data": n}` or `{"data": n, "model": m}`, with n * m the
            number of devices; None puts every device on "data".
        mode: `"data"` (`DataParallel`), `"fsdp"` or `"tensor"`
            (`CheckedModelParallel` splitting the batch over "data"); see
            `keras_ov2.models.common.layouts`. A split dimension that its
            mesh axis does not divide is a `LayoutError` naming the
            variable, raised when the model is built in the scope.
        model: what "fsdp" and "tensor" lay out, before it exists: a preset
            name or folder (its task, e.g. the captioner, when it has one,
            else its backbone), or a serialized model
            (`keras.saving.serialize_keras_object(model)`), of a class with
            `get_layout_map`.
    """
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "keras_ov2.distribution needs the JAX backend: Keras "
            f"{keras.__version__} trains distributed on JAX only; the backend "
            f"is {keras.backend.backend()!r}."
        )
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}; received {mode!r}.")
    devices = keras.distribution.list_devices()
    sizes = mesh_sizes(mesh, len(devices))
    if mode == "data" and sizes[MODEL] > 1:
        raise ValueError(
            f"mode 'data' replicates the model: its mesh has only a {DATA!r} "
            f"axis; received {mesh}."
        )
    if mode == "tensor" and sizes[MODEL] == 1:
        raise ValueError(f"mode 'tensor' needs a {MODEL!r} axis larger than 1; received {mesh}.")
    if mode != "data" and model is None:
        raise ValueError(
            f"mode {mode!r} needs `model` (a preset or a serialized model) to lay out."
        )
    if math.prod(sizes.values()) != len(devices):
        raise ValueError(
            f"The mesh {mesh} needs {math.prod(sizes.values())} devices; there "
            f"are {len(devices)}."
        )
    # auto_shard_dataset off: each host's Grain pipeline reads its own shard
    # (see `data_shard`); on several hosts Keras refuses a Grain dataset otherwise.
    if mode == "data":
        device_mesh = keras.distribution.DeviceMesh((sizes[DATA],), (DATA,), devices)
        return keras.distribution.DataParallel(device_mesh=device_mesh, auto_shard_dataset=False)
    device_mesh = keras.distribution.DeviceMesh(
        (sizes[DATA], sizes[MODEL]), (DATA, MODEL), devices
    )
    serialized = presets.task_config(model) if isinstance(model, str) else model
    model_class = keras.saving.get_registered_object(serialized["registered_name"])
    if not hasattr(model_class, "get_layout_map"):
        raise ValueError(f"{serialized['registered_name']} has no get_layout_map.")
    layout_map = model_class.get_layout_map(
        device_mesh, model_parallel_dim_name=MODEL, data_parallel_dim_name=DATA, mode=mode
    )
    return CheckedModelParallel(layout_map=layout_map, batch_dim_name=DATA,
                                auto_shard_dataset=False)


def mesh_sizes(mesh, device_count):
    """`{"data": n, "model": m}` from the user's mesh (absent axes are 1)."""
    mesh = {DATA: device_count} if mesh is None else dict(mesh)
    unknown = set(mesh) - {DATA, MODEL}
    if unknown:
        raise ValueError(f"Mesh axes are {DATA!r} and {MODEL!r}; received {sorted(unknown)}.")
    return {DATA: mesh.get(DATA, 1), MODEL: mesh.get(MODEL, 1)}

