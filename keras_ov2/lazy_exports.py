"""Public names that load on first use (PEP 562), so that importing a
package costs nothing until one of its names is touched: `import keras_ov2`
loads no backend and no TensorFlow (which `keras_hub` always imports)."""

import importlib


def lazy_exports(package, exports):
    """`__getattr__` and `__dir__` for `package` serving `exports`
    ({name: module}; the name is that module's attribute, or the module
    itself when the module is `package.name`). No exported name may also be
    a submodule's name: importing that submodule would rebind the name."""

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name])
        value = module if exports[name] == f"{package}.{name}" else getattr(module, name)
        globals_of_package = importlib.import_module(package).__dict__
        globals_of_package[name] = value  # later lookups skip __getattr__
        return value

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    __getattr__.exports = exports  # the table, for tests and tools
    return __getattr__, __dir__
