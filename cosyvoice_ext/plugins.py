"""The plugin manager and the one typed caller of every hook.

Built-in plugins (:data:`DEFAULT_PLUGINS`) are registered by import in every manager, like pytest's
``default_plugins``. Third-party plugins come from the entry-point group ``cosyvoice_ext``, one at a
time, so a broken one is named together with its distribution. ``COSYEXT_DISABLE_PLUGIN_AUTOLOAD=1``
skips them and ``COSYEXT_PLUGINS=name1,name2`` loads only those; neither affects the built-ins (an
environment variable must never leave training without LoRA or lint without rules).

Core code calls hooks only through :class:`Hooks` (one typed method per hookspec, tox style); this
module is the only place that touches ``pm.hook``.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import pluggy

from . import hookspecs
from .config_keys import SECTION, mark_unknown, unknown_key_message
from .errors import ConfigError, PluginError

ENTRY_POINT_GROUP = hookspecs.PROJECT
DISABLE_ENV = "COSYEXT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "COSYEXT_PLUGINS"
HOOK_PREFIX = "cosyext_"
BUILTIN = "built-in"

#: (name, module) of the plugins every manager registers first, whatever the environment says.
DEFAULT_PLUGINS: tuple[tuple[str, str], ...] = (
    ("lora", "cosyvoice_ext.builtin.lora"),
    ("early_stop", "cosyvoice_ext.builtin.early_stop"),
    ("memory", "cosyvoice_ext.builtin.memory"),
    ("lint_rules", "cosyvoice_ext.lint.plugin"),
    ("metrics", "cosyvoice_ext.builtin.metrics"),
    ("samples", "cosyvoice_ext.builtin.samples"),
)
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HINT = "fix or uninstall that plugin ('cosyext plugins' lists them), or set {env}=1 to skip third-party plugins"


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus: where each plugin came from, and ``cosyext_*`` functions count as hooks.

    Registering a plugin that is already registered under the same name is a no-op (pytest's
    ``import_plugin`` does the same for default plugins), so tools and tests that register a
    built-in explicitly keep working now that every manager has them.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        if plugin is not None and self.is_registered(plugin):
            existing = self.get_name(plugin)
            if name is None or name == existing:
                return existing
        registered = super().register(plugin, name)
        if registered is not None:
            self.origins.setdefault(registered, "registered at run time")
        return registered

    def parse_hookimpl_opts(self, plugin: Any, name: str) -> Any:
        """A function named ``cosyext_*`` is a hook implementation even without ``@hookimpl`` (as pytest
        does for ``pytest_*``), so :meth:`check_pending` also catches an unmarked misspelling."""
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX):
            attr = inspect.getattr_static(plugin, name, None)
            if inspect.isfunction(attr) or isinstance(attr, (staticmethod, classmethod)):
                return {}
        return opts


def new_manager(autoload: bool | None = None, *, builtins: bool = True) -> PluginManager:
    """A manager with the built-ins and (unless disabled) third-party entry points, checked.

    ``autoload=False`` skips third-party plugins like ``COSYEXT_DISABLE_PLUGIN_AUTOLOAD=1``;
    ``builtins=False`` gives a bare manager (tests that need a plugin-free world).
    """
    pm = PluginManager()
    if builtins:
        for name, module in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module), name=name)
            pm.origins[name] = BUILTIN
    if autoload is None:
        autoload = not os.environ.get(DISABLE_ENV)
    if autoload:
        allow = {n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()}
        _load_entry_points(pm, allow)
    check_pending(pm)
    return pm


def _load_entry_points(pm: PluginManager, allow: set[str]) -> None:
    """Third-party plugins, one entry point at a time; the first that fails is named with its distribution."""
    from importlib.metadata import entry_points

    builtin = dict(DEFAULT_PLUGINS)
    seen: dict[str, str] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if allow and ep.name not in allow:
            continue
        if seen.get(ep.name) == ep.value or builtin.get(ep.name) == ep.value:
            continue  # the same distribution found twice on sys.path, or a built-in an old install declared
        dist = _dist_label(ep)
        if ep.name in builtin or ep.name in seen:
            other = f"the built-in plugin ({builtin[ep.name]})" if ep.name in builtin else seen[ep.name]
            raise PluginError(f"plugin '{ep.name}' from {dist} ({ep.value}) has the name of {other}",
                              hint=_HINT.format(env=DISABLE_ENV))
        seen[ep.name] = ep.value
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin '{ep.name}' from {dist} ({ep.value}) failed to load: {exc!r}",
                              hint=_HINT.format(env=DISABLE_ENV)) from exc
        try:
            pm.register(plugin, name=ep.name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            raise PluginError(f"plugin '{ep.name}' from {dist} does not fit the cosyext hooks: {exc}",
                              hint=_HINT.format(env=DISABLE_ENV)) from exc
        pm.origins[ep.name] = dist
    missing = sorted(allow - set(seen) - set(builtin))
    if missing:
        raise PluginError(f"{ALLOW_ENV} names {', '.join(missing)}, which no installed distribution provides "
                          f"(third-party plugins found: {', '.join(sorted(seen)) or 'none'})",
                          hint=f"install the plugin, or fix {ALLOW_ENV}")


def _dist_label(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name']} {dist.version}"


def check_pending(pm: pluggy.PluginManager) -> None:
    """Every ``cosyext_*`` implementation must match a hookspec: a typo is an error naming the plugin."""
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        origin = getattr(pm, "origins", {}).get(name, "registered at run time")
        unknown = [h for h in vars(pm.hook) if not h.startswith("_") and not getattr(pm.hook, h).has_spec()
                   and any(i.plugin is exc.plugin for i in getattr(pm.hook, h).get_hookimpls())]
        hook = unknown[0] if unknown else "?"
        close = difflib.get_close_matches(hook, hook_names(), n=1, cutoff=0.6)
        guess = f"; did you mean '{close[0]}'?" if close else f" (hooks: {', '.join(hook_names())})"
        raise PluginError(f"plugin '{name}' ({origin}) implements '{hook}', which is not a cosyext hook{guess}",
                          hint="rename the function to a hook in cosyvoice_ext/hookspecs.py (docs/plugins.md)") from exc


def hook_names() -> list[str]:
    """Every hookspec name, in lifecycle order."""
    return [n for n, f in vars(hookspecs).items() if n.startswith(HOOK_PREFIX) and callable(f)]


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide manager, created on first use."""
    global _manager
    if _manager is None:
        _manager = new_manager()
    return _manager


def reset_manager(pm: pluggy.PluginManager | None = None) -> None:
    """Replace (or drop) the process-wide manager; used by tests and long-lived tools."""
    global _manager
    _manager = pm


def hooks(pm: pluggy.PluginManager | None = None) -> "Hooks":
    """The typed hook caller of ``pm`` (default: the process-wide manager)."""
    return Hooks(pm if pm is not None else get_manager())


@dataclass(frozen=True)
class Section:
    """One key of the ``cosyext:`` section, its parser and the plugin that registered it."""

    key: str
    parse: Callable[[Any], Any]
    plugin: str


class Hooks:
    """Core's only way to call hooks: one method per hookspec, named without the ``cosyext_`` prefix."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        check_pending(pm)  # plugins registered after the manager was made (tests, sitecustomize) too
        self.pm = pm

    def _per_plugin(self, hook: str) -> Iterable[tuple[str, Callable[..., Any], tuple[str, ...]]]:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            yield impl.plugin_name, impl.function, tuple(impl.argnames)

    def register_lint_rules(self, add: Callable[[Any, str], None]) -> None:
        """Each plugin's rules, passed to ``add(rule, plugin_name)``; a crashing plugin is named."""
        for plugin, function, argnames in self._per_plugin("cosyext_register_lint_rules"):
            def register(rule: Any, _plugin: str = plugin) -> None:
                add(rule, _plugin)

            try:
                function(**({"register": register} if "register" in argnames else {}))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin '{plugin}' failed while registering lint rules: {exc!r}",
                                  hint=_HINT.format(env=DISABLE_ENV)) from exc

    def register_metrics(self, add: Callable[[Any, str], None]) -> None:
        """Each plugin's eval metrics, passed to ``add(metric, plugin_name)``; a crashing plugin is named."""
        for plugin, function, argnames in self._per_plugin("cosyext_register_metrics"):
            def register(metric: Any, _plugin: str = plugin) -> None:
                add(metric, _plugin)

            try:
                function(**({"register": register} if "register" in argnames else {}))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin '{plugin}' failed while registering eval metrics: {exc!r}",
                                  hint=_HINT.format(env=DISABLE_ENV)) from exc

    def register_config_sections(self) -> dict[str, Section]:
        """Every ``cosyext:`` key with its parser; two owners of one key are an error naming both."""
        sections: dict[str, Section] = {}
        for plugin, function, argnames in self._per_plugin("cosyext_register_config_sections"):
            def register(key: Any, parse: Any, _plugin: str = plugin) -> None:
                if not isinstance(key, str) or not _KEY.match(key):
                    raise PluginError(f"plugin '{_plugin}' registered the cosyext: key {key!r}, which is not a "
                                      "YAML key like 'my_plugin'", hint=_HINT.format(env=DISABLE_ENV))
                if not callable(parse):
                    raise PluginError(f"plugin '{_plugin}' registered {SECTION}.{key} with a parser that is not "
                                      f"callable: {parse!r}", hint=_HINT.format(env=DISABLE_ENV))
                if key in sections:
                    raise PluginError(f"{SECTION}.{key} is registered by two plugins: '{sections[key].plugin}' and "
                                      f"'{_plugin}'; one key has one owner",
                                      hint="uninstall one of them ('cosyext plugins' lists them)")
                sections[key] = Section(key, parse, _plugin)

            try:
                function(**({"register": register} if "register" in argnames else {}))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(f"plugin '{plugin}' failed while registering its cosyext: keys: {exc!r}",
                                  hint=_HINT.format(env=DISABLE_ENV)) from exc
        return sections

    def configure(self, configs: dict, args: Any) -> None:
        self.pm.hook.cosyext_configure(configs=configs, args=args)

    def prepare_model(self, model: Any, name: str, configs: dict, args: Any) -> None:
        self.pm.hook.cosyext_prepare_model(model=model, name=name, configs=configs, args=args)

    def optimizer_params(self, model: Any, configs: dict, args: Any) -> list | None:
        return self.pm.hook.cosyext_optimizer_params(model=model, configs=configs, args=args)

    def checkpoint_state(self, model: Any, info_dict: dict) -> dict | None:
        return self.pm.hook.cosyext_checkpoint_state(model=model, info_dict=info_dict)

    def after_save(self, model_name: str, info_dict: dict) -> None:
        self.pm.hook.cosyext_after_save(model_name=model_name, info_dict=info_dict)


def check_config(configs: Any, pm: pluggy.PluginManager | None = None) -> dict[str, Any]:
    """Parse the whole ``cosyext:`` section with its owners' parsers (what training start-up does).

    Returns the parsed settings by key; raises ConfigError for the first unknown key or bad value.
    """
    section = configs.get(SECTION) if isinstance(configs, dict) else None
    if section is None:
        return {}
    sections = hooks(pm).register_config_sections()
    if not isinstance(section, dict):
        raise ConfigError(f"must be a mapping of plugin sections ({', '.join(sorted(sections))}), "
                          f"got {type(section).__name__}", key=SECTION)
    parsed = {}
    for key, value in section.items():
        owner = sections.get(key)
        if owner is None:
            raise mark_unknown(ConfigError(
                unknown_key_message(key, sorted(sections)), key=f"{SECTION}.{key}",
                hint="fix the key, or install the plugin that provides it ('cosyext plugins')"))
        parsed[key] = parse_section(owner, value)
    return parsed


def parse_section(owner: Section, value: Any) -> Any:
    """``owner.parse(value)``; a ConfigError always names a key, any other exception names the plugin."""
    try:
        return owner.parse(value)
    except ConfigError as exc:
        if exc.key is None:
            exc.key = f"{SECTION}.{owner.key}"
            exc.args = (f"{exc.key}: {exc}",)
        raise
    except Exception as exc:
        raise PluginError(f"plugin '{owner.plugin}' crashed parsing {SECTION}.{owner.key}: {exc!r}",
                          hint=_HINT.format(env=DISABLE_ENV)) from exc


def describe(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """Name, origin, implemented hooks and owned ``cosyext:`` keys of each plugin, for `cosyext plugins`."""
    origins = getattr(pm, "origins", {})
    keys: dict[str, list[str]] = {}
    for section in Hooks(pm).register_config_sections().values():
        keys.setdefault(section.plugin, []).append(section.key)
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks_ = sorted(h.name for h in (pm.get_hookcallers(plugin) or []))
        rows.append({"name": name, "module": getattr(plugin, "__name__", repr(plugin)),
                     "origin": origins.get(name, "registered at run time"), "hooks": hooks_,
                     "config_keys": sorted(keys.get(name, []))})
    return rows
