"""Hook specifications: what a difftest plugin may implement.

A plugin is a module (or object) with functions decorated ``@difftest.hookimpl`` and
named after the hooks below.  difftest finds plugins through the entry-point group
``difftest`` (the built-in backends, generators, importers and report writers come that way too),
through ``--plugin MODULE`` and through ``DIFFTEST_PLUGINS=mod1,mod2``.

Every registration hook receives a ``register`` callable.  Call it once per object; the
host checks each object as it arrives and refuses a name that is already taken, naming
both plugins (exit 3).  The hooks return nothing.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("difftest")


@hookspec
def difftest_register_backends(register: Callable[..., None]) -> None:
    """Register pmap backends.

    Called once when the plugin host loads, after every plugin has been imported, in
    the order the plugins were loaded (entry points sorted by name, then
    ``DIFFTEST_PLUGINS``, then ``--plugin``): the first plugin to register a name owns it.

    :param register: call ``register(BackendClass)`` with a ``difftest.Backend`` subclass
        that sets ``name``, ``description`` and ``geometry``, or
        ``register(BackendSpec(...))`` for a factory taking a ``PhysPool`` (for example a
        parametrised variant of a backend).  Names must be unique across all plugins.
        A class that leaves an abstract method of ``Backend`` unimplemented is refused
        here (exit 3).  Class attributes say whether the backend runs by default
        (``run_by_default``) and which capabilities it lacks (``frees_pt_pages``:
        docs/PLUGINS.md, ``difftest check-backend``).
    """


@hookspec
def difftest_register_invariants(register: Callable[..., None]) -> None:
    """Register invariant checks (``difftest.Invariant``).

    Called once when the plugin host loads, after ``difftest_register_backends``.

    :param register: call ``register(Invariant(name, check, backends=(...)))``.
        ``check(backend, touched)`` yields violation messages; ``touched`` is a
        ``difftest.Touched`` after each op (check only that) or ``None`` at checkpoints and
        at the end of a stream (audit everything).  The harness reports each message as an
        ``invariant`` divergence of that backend.  Names must be unique per backend.
    """


@hookspec
def difftest_register_generators(register: Callable[..., None]) -> None:
    """Register op-stream generators (``difftest.GeneratorSpec``).

    Called once when the plugin host loads.

    :param register: call ``register(GeneratorSpec(name, generate))``, where
        ``generate(seed: int, n_ops: int, phys_pages: int) -> difftest.Stream`` must be a
        pure function of its arguments (same seed, same stream, on any machine) and must
        produce only streams the VM layer could (``difftest.streams.validate_ops`` passes).
    """


@hookspec
def difftest_register_importers(register: Callable[..., None]) -> None:
    """Register trace importers (``difftest.ImporterSpec``): tools that turn a log of a real
    program's memory system calls (strace, ktrace/kdump, perf) into a stream.

    Called once when the plugin host loads.

    :param register: call ``register(ImporterSpec(name, convert))``, where
        ``convert(log_path: str, *, phys_pages: int, max_pages_per_mapping: int) ->
        difftest.Stream`` is a pure function of the log's bytes and the two settings (the
        same log, the same stream) and produces only streams the VM layer could
        (``difftest.streams.validate_ops`` and ``difftest.legality.vm_legality_problems``
        pass).  A log it cannot read raises ``difftest.errors.BadInput`` with one line
        naming the log and the line; what it could not place goes in the stream's
        ``origin`` (``difftest import`` prints ``origin["warnings"]`` on stderr).
    """


@hookspec
def difftest_register_reporters(register: Callable[..., None]) -> None:
    """Register report writers (``difftest.ReporterSpec``).

    Called once when the plugin host loads.

    :param register: call ``register(ReporterSpec(name, write, extension))``, where
        ``write(report: dict, out: TextIO)`` renders a ``difftest.report/1`` document.
        A writer may also accept the keywords ``registry`` (the loaded ``Registry``, to
        re-run reproducers) and ``run_dir`` (the campaign directory, or None); the host
        passes those the writer's signature names.
        Everything in the report that came from a plugin or a stream (backend names,
        messages, tracebacks) is untrusted text: escape it for the output format.
    """


@hookspec
def difftest_register_known_divergences(register: Callable[..., None]) -> None:
    """Register divergences known to exist, with the reason (the default baseline).

    Called once when the plugin host loads.  A campaign run without ``--baseline`` treats
    every registered entry as known (reported, but not failing the run); ``--baseline
    FILE`` replaces them all (an empty file: nothing is known).

    :param register: call ``register(KnownDivergence(pattern, reason))``; ``pattern`` is a
        signature ``kind:backend:op_kind:field:class`` where ``*`` and ``?`` match as in
        ``fnmatch`` (for example ``resource:arm32-leaky:*:pt_frames:*``).
    """
