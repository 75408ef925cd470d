"""The plugin manager: one per process, built-ins and third-party plugins loaded the same way.

Set ``COSYEXT_DISABLE_PLUGIN_AUTOLOAD=1`` to skip entry-point loading (then only plugins registered
explicitly, e.g. by tests, take part). ``COSYEXT_PLUGINS=name1,name2`` loads only those entry points.
"""

from __future__ import annotations

import os
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "COSYEXT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "COSYEXT_PLUGINS"

_manager: pluggy.PluginManager | None = None


def new_manager(autoload: bool | None = None) -> pluggy.PluginManager:
    """A fresh manager with the hookspecs added and (unless disabled) entry points loaded."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    if autoload is None:
        autoload = not os.environ.get(DISABLE_ENV)
    if autoload:
        allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
        try:
            if allow:
                from importlib.metadata import entry_points

                for ep in entry_points(group=ENTRY_POINT_GROUP):
                    if ep.name in allow and pm.get_plugin(ep.name) is None:
                        pm.register(ep.load(), name=ep.name)
            else:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken third-party plugin must say which one it is
            raise PluginError(
                f"loading a cosyvoice_ext plugin failed: {exc!r}",
                hint=f"run 'cosyext plugins' to list them, or set {DISABLE_ENV}=1 to skip autoloading",
            ) from exc
    return pm


def get_manager() -> pluggy.PluginManager:
    """The process-wide manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = new_manager()
    return _manager


def reset_manager(pm: pluggy.PluginManager | None = None) -> None:
    """Replace (or drop) the process-wide manager; used by tests and long-lived tools."""
    global _manager
    _manager = pm


def describe(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, origin and implemented hooks of each registered plugin, for `cosyext plugins`."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda kv: kv[0]):
        if plugin is None:
            continue
        hooks = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        dist = dists.get(id(plugin))
        origin = f"{dist.project_name} {dist.version}" if dist is not None else "registered at run time"
        rows.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)), "origin": origin, "hooks": hooks})
    return rows
