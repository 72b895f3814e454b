"""The plugin host: discovery, loading, validation and the registries.

Modelled on tox 4's plugin manager: load every entry point of the group ``difftest``
ourselves (so that a failing import names its distribution), add the modules given with
``--plugin`` / ``DIFFTEST_PLUGINS``, then ``check_pending()`` so that a hook with a wrong
name is refused, then call the registration hooks with a ``register`` callable per plugin
so that every registered object is attributed to its plugin.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

import pluggy

from difftest import hookspecs
from difftest.backend import (
    Backend,
    BackendSpec,
    GeneratorSpec,
    ImporterSpec,
    Invariant,
    Registry,
    ReporterSpec,
)
from difftest.divergence import KnownDivergence
from difftest.errors import PluginError

ENTRY_POINT_GROUP = "difftest"
ENV_PLUGINS = "DIFFTEST_PLUGINS"
ENV_DISABLE_AUTOLOAD = "DIFFTEST_DISABLE_PLUGIN_AUTOLOAD"

hookimpl = pluggy.HookimplMarker("difftest")


class PluginHost:
    """Loads plugins and holds what they registered (``self.registry``)."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("difftest")
        self.pm.add_hookspecs(hookspecs)
        self.registry = Registry()
        # plugin name -> distribution name ("" for local modules)
        self.distributions: dict[str, str] = {}
        self.autoload = True
        # During a load, the group's entry points and their distributions' names, read once:
        # each read parses installed metadata, most of a short command's start-up if repeated
        # per plugin.  Read afresh by a later add_module (something may be installed since).
        self._group: list[EntryPoint] | None = None
        self._dist_names: dict[int, str] = {}

    # -- loading --------------------------------------------------------------------------

    def load(self, modules: Iterable[str] = (), autoload: bool | None = None) -> Registry:
        """Load entry points (unless disabled) and ``modules``; fill and return the registry."""
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        self.autoload = autoload
        self._group = list(entry_points(group=ENTRY_POINT_GROUP))
        try:
            if autoload:
                for ep in sorted(self._group, key=lambda e: e.name):
                    self._load_entry_point(ep)
            env_modules = [m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(",") if m.strip()]
            for module in [*env_modules, *modules]:
                self.add_module(module)
        finally:
            self._group, self._dist_names = None, {}
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(self._describe_validation_error(exc)) from None
        self._collect()
        return self.registry

    def _load_entry_point(self, ep: EntryPoint) -> None:
        dist = self._dist_name(ep)
        if self.pm.has_plugin(ep.name):
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist}): the name is taken by another plugin "
                f"(distribution {self.distributions.get(ep.name) or 'local'})"
            )
        try:
            obj = ep.load()
        except Exception as exc:  # a plugin's import can fail in any way
            raise PluginError(
                f"plugin {ep.name!r} (distribution {dist}, {ep.value}) failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        self._register(obj, ep.name, dist)

    def _dist_name(self, ep: EntryPoint) -> str:
        if ep.dist is None:
            return "?"
        if self._group is None:
            return ep.dist.name
        key = id(ep.dist)  # the group's entry points share their distribution's object
        if key not in self._dist_names:
            self._dist_names[key] = ep.dist.name
        return self._dist_names[key]

    def add_module(self, module: str) -> None:
        """Load the plugin ``module``: with autoload off, an entry point of the group
        ``difftest`` by that name (as ``pytest -p NAME`` does: the plugin keeps its name and
        distribution); otherwise the module of that name, found like ``python -m`` finds
        it (the current directory first), registered as a plugin named after it."""
        if not self.autoload:
            group = self._group if self._group is not None else entry_points(group=ENTRY_POINT_GROUP)
            named = [ep for ep in group if ep.name == module]
            if len(named) > 1:
                dists = ", ".join(sorted(ep.dist.name if ep.dist else "?" for ep in named))
                raise PluginError(f"plugin {module!r}: several distributions have an entry point "
                                  f"of that name ({dists}); give the module instead")
            if named:
                if not self.pm.has_plugin(module):
                    self._load_entry_point(named[0])
                return
        _cwd_on_path()
        try:
            obj = importlib.import_module(module)
        except Exception as exc:
            raise PluginError(
                f"plugin {module!r} (local module) failed to import: {type(exc).__name__}: {exc}"
            ) from None
        if self.pm.is_registered(obj):
            return  # already loaded (given twice, or through its entry point)
        if self.pm.has_plugin(module):
            # Another module registered under this name (an entry point named like it).
            raise PluginError(
                f"plugin {module!r} (local module): the name is taken by another plugin "
                f"({_dist_text(self.distributions.get(module, ''))})"
            )
        self._register(obj, module, "")

    def _register(self, obj: Any, name: str, dist: str) -> None:
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(
                f"plugin {name!r} ({_dist_text(dist)}): {_first_line(exc)}"
            ) from None
        except ValueError as exc:  # pluggy: name or object already registered
            # pluggy appends every registered plugin on further lines: keep the first.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PluginError(f"plugin {name!r} ({_dist_text(dist)}): {first}") from None
        self.distributions[name] = dist

    def _describe_validation_error(self, exc: pluggy.PluginValidationError) -> str:
        name = self.pm.get_name(exc.plugin) or "?"
        return f"plugin {name!r} ({_dist_text(self.distributions.get(name, ''))}): {_first_line(exc)}"

    # -- registration -----------------------------------------------------------------------

    def _each_impl(self, hook_name: str) -> Iterable[tuple[str, Callable[..., Any]]]:
        caller = getattr(self.pm.hook, hook_name)
        # In load order (entry points by name, then DIFFTEST_PLUGINS, then --plugin), not
        # pluggy's last-registered-first: the first plugin to register a name owns it and
        # the duplicate refused is the later one's.
        order = {name: i for i, name in enumerate(self.distributions)}
        impls = sorted(caller.get_hookimpls(), key=lambda i: order.get(i.plugin_name, len(order)))
        for impl in impls:
            yield impl.plugin_name, impl.function

    def _call(self, hook_name: str, make_register: Callable[[str, str], Callable[..., None]]) -> None:
        for plugin_name, function in self._each_impl(hook_name):
            dist = self.distributions.get(plugin_name, "")
            try:
                function(register=make_register(plugin_name, dist))
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    f"plugin {plugin_name!r} ({_dist_text(dist)}): {hook_name} raised "
                    f"{type(exc).__name__}: {exc}"
                ) from None

    def _collect(self) -> None:
        reg = self.registry
        owners: dict[tuple[str, str], str] = {}

        def claim(kind: str, name: str, plugin: str, dist: str) -> None:
            if not isinstance(name, str) or not name or any(c.isspace() for c in name):
                raise PluginError(
                    f"plugin {plugin!r} ({_dist_text(dist)}): {kind} name {name!r} is not a non-empty word"
                )
            key = (kind, name)
            if key in owners:
                raise PluginError(
                    f"plugin {plugin!r} ({_dist_text(dist)}): {kind} {name!r} is already registered "
                    f"by plugin {owners[key]!r} ({_dist_text(self.distributions.get(owners[key], ''))})"
                )
            owners[key] = plugin

        def backends(plugin: str, dist: str) -> Callable[..., None]:
            def register(obj: Any) -> None:
                try:
                    if isinstance(obj, BackendSpec):
                        spec = obj
                    elif isinstance(obj, type) and issubclass(obj, Backend):
                        spec = BackendSpec.from_class(obj)
                    else:
                        raise TypeError(f"{obj!r} is neither a Backend subclass nor a BackendSpec")
                    _refuse_abstract(spec.factory)
                except TypeError as exc:
                    raise PluginError(f"plugin {plugin!r} ({_dist_text(dist)}): {exc}") from None
                claim("backend", spec.name, plugin, dist)
                reg.backends[spec.name] = _with_origin(spec, plugin, dist)

            return register

        def invariants(plugin: str, dist: str) -> Callable[..., None]:
            def register(obj: Any) -> None:
                if not isinstance(obj, Invariant) or not callable(obj.check):
                    raise PluginError(f"plugin {plugin!r} ({_dist_text(dist)}): {obj!r} is not an Invariant")
                for backend in obj.backends:
                    claim("invariant", f"{backend}:{obj.name}", plugin, dist)
                reg.invariants.append(obj)

            return register

        def named(kind: str, spec_type: type, call: str, table: dict[str, Any]) -> Callable[[str, str], Callable[..., None]]:
            """A ``register`` for specs with a name and one callable (generators, reporters, importers)."""

            def make(plugin: str, dist: str) -> Callable[..., None]:
                def register(obj: Any) -> None:
                    if not isinstance(obj, spec_type) or not callable(getattr(obj, call)):
                        article = "an" if spec_type.__name__[0] in "AEIOU" else "a"
                        raise PluginError(f"plugin {plugin!r} ({_dist_text(dist)}): {obj!r} is not {article} "
                                          f"{spec_type.__name__}")
                    claim(kind, obj.name, plugin, dist)
                    table[obj.name] = _with_origin(obj, plugin, dist)

                return register

            return make

        generators = named("generator", GeneratorSpec, "generate", reg.generators)
        reporters = named("reporter", ReporterSpec, "write", reg.reporters)
        importers = named("importer", ImporterSpec, "convert", reg.importers)

        self._call("difftest_register_backends", backends)
        self._call("difftest_register_invariants", invariants)
        self._call("difftest_register_generators", generators)
        self._call("difftest_register_reporters", reporters)
        self._call("difftest_register_importers", importers)

        def known(plugin: str, dist: str) -> Callable[..., None]:
            def register(obj: Any) -> None:
                if not isinstance(obj, KnownDivergence) or not isinstance(obj.pattern, str):
                    raise PluginError(f"plugin {plugin!r} ({_dist_text(dist)}): {obj!r} is not a KnownDivergence")
                reg.known.append(obj)

            return register

        self._call("difftest_register_known_divergences", known)
        # An invariant naming a backend that is not loaded stays inert: harmless.


def _refuse_abstract(factory: Any) -> None:
    """A backend class that leaves pmap(9) calls unimplemented is refused when it is
    registered, not found later as a crash in every stream."""
    if isinstance(factory, functools.partial):  # a parametrised variant of a class
        factory = factory.func
    missing = sorted(getattr(factory, "__abstractmethods__", ()) or ())
    if isinstance(factory, type) and missing:
        raise TypeError(f"backend class {factory.__name__} does not implement "
                        f"{', '.join(missing)}")


def _cwd_on_path() -> None:
    """``-p mymod`` finds ``mymod.py`` in the current directory, as ``pytest -p`` and
    ``python -m`` users expect (the console script's path starts at its own directory)."""
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)


def _with_origin(spec: Any, plugin: str, dist: str) -> Any:
    from dataclasses import replace

    return replace(spec, plugin=plugin, distribution=dist)


def _dist_text(dist: str) -> str:
    return f"distribution {dist}" if dist else "local module"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.split())


def load_plugins(modules: Iterable[str] = (), autoload: bool | None = None) -> PluginHost:
    host = PluginHost()
    host.load(modules, autoload)
    return host
