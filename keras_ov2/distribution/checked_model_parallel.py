"""`CheckedModelParallel`: Keras' `ModelParallel` that checks each variable's
layout against its shape when Keras creates the variable."""

import math

import keras


class LayoutError(ValueError):
    """A layout that cannot place a variable on the device mesh."""


class CheckedModelParallel(keras.distribution.ModelParallel):
    """`keras.distribution.ModelParallel` that refuses, with an error naming
    the variable, a layout whose split dimension its mesh axes do not divide.

    A `LayoutMap` knows patterns, not shapes, and Keras lays a variable out
    when it creates it; without this check JAX fails there with an error
    that names no variable. Same arguments as `ModelParallel`:

        layout_map = keras_ov2.OpenVision2Backbone.get_layout_map(mesh)
        distribution = CheckedModelParallel(layout_map=layout_map, batch_dim_name="batch")
        with distribution.scope():
            backbone = keras_ov2.OpenVision2Backbone.from_preset(...)
    """

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        if isinstance(layout, keras.distribution.TensorLayout):  # not a backend's own
            mesh = layout.device_mesh or self.device_mesh
            check_layout(variable.path, variable.shape, layout.axes, mesh)
        return layout


def check_layout(path, shape, axes, device_mesh):
    """Raises a `LayoutError` naming `path`, `shape`, the dimension and the
    mesh axis when an axis of `axes` (a name, a tuple of names or None per
    dimension) is not in `device_mesh` or does not divide its dimension."""
    sizes = dict(zip(device_mesh.axis_names, device_mesh.shape))
    for dim, (size, names) in enumerate(zip(shape, axes)):
        names = () if names is None else (names,) if isinstance(names, str) else tuple(names)
        unknown = [name for name in names if name not in sizes]
        if unknown:
            raise LayoutError(
                f"Cannot lay out {path} of shape {tuple(shape)}: dimension {dim} "
                f"is split over mesh axis {unknown[0]!r}, which the mesh "
                f"(axes {tuple(sizes)}) does not have."
            )
        ways = math.prod(sizes[name] for name in names)
        if size % ways:
            axis = " x ".join(repr(name) for name in names)
            raise LayoutError(
                f"Cannot lay out {path} of shape {tuple(shape)}: dimension {dim} "
                f"(size {size}) is not divisible by the {ways}-way mesh "
                f"{'axis' if len(names) == 1 else 'axes'} {axis}. Use a mesh "
                "whose axes divide it, or a layout that does not split it."
            )
