"""Configuration and secrets for Python apps on wasm-gw, as the operator set them for the
app (`--config-var`, an `[app.config]` table, values from the server's environment),
through the host's wasi:config/store.

    import wasm_gw_config

    api_key = wasm_gw_config.get("api-key")          # None if the operator set none
    everything = wasm_gw_config.get_all()            # {key: value}
"""

from componentize_py_types import Err

# Two imported interfaces are named `store` (wasi:keyvalue's and wasi:config's):
# componentize-py tells them apart by package.
from wit_world.imports import wasi_config_store as _store


class ConfigError(Exception):
    """The configuration source failed."""


def _call(function, *args):
    try:
        return function(*args)
    except Err as error:
        raise ConfigError(error.value.value) from None


def get(key):
    """The value of `key`, or None if the operator set none."""
    return _call(_store.get, key)


def get_all():
    """Every key and value set for the app, as a dict."""
    return dict(_call(_store.get_all))
