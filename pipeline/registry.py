"""Which functions a database row may name, by role.

Rows are written by any lab member, so a row's function name is only ever turned into a function
through :func:`resolve`, and only functions decorated with :func:`register` for that role come out.
A function registers when its module is imported. :func:`resolve` imports the module of a name it
does not know yet only when that module lies under an allowed module: ``pipeline``, a package
listed in ``$V1FABRIK_ALLOWED_MODULES`` (comma separated), or a module named by an entry point of
the ``v1fabrik.functions`` group (imported once, the first time a name is not registered yet).
Nothing else a row names is ever imported.
"""
import importlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

logger = logging.getLogger(__name__)

ROLES = ("dataset", "model", "trainer", "measure")
ALLOWED_MODULES_ENV = "V1FABRIK_ALLOWED_MODULES"
ENTRY_POINT_GROUP = "v1fabrik.functions"
SHIPPED_MODULES = ("pipeline.datasets", "pipeline.models", "pipeline.training", "pipeline.utility.measures")
_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


class UnregisteredFunctionError(ValueError):
    """A row names a function that is not registered for the role it is used in."""


class DuplicateRegistrationError(ValueError):
    """Two different functions are registered under the same name."""


@dataclass
class _Entry:
    fn: Callable
    roles: set = field(default_factory=set)


_ENTRIES = {}  # every registered name (dotted path or alias) -> the entry of its function
_entry_point_modules = None  # the modules the entry points named, once loaded


def _path(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _is_public_name(name: str) -> bool:
    return bool(_DOTTED_NAME.fullmatch(name)) and not any(part.startswith("_") for part in name.split("."))


def _check_roles(roles) -> None:
    if not roles or any(role not in ROLES for role in roles):
        raise ValueError(f"roles must be some of {', '.join(ROLES)}; got {', '.join(map(repr, roles)) or 'none'}")


def register(*roles: str, aliases=()):
    """Decorator registering a module-level function for one or more roles.

    Args:
        roles: any of ROLES; stack decorators or list several to give a function several roles.
        aliases: further names rows may use, each the function re-exported by a parent package of
            its module, e.g. ``pipeline.models.stacked_core_full_gauss_readout``.
    """
    _check_roles(roles)

    def decorate(fn):
        path = _path(fn)
        if not _is_public_name(path):
            raise ValueError(f"cannot register {path}: only public module-level functions can be named by a row")
        for alias in aliases:
            package = alias.rpartition(".")[0]
            if not _is_public_name(alias) or not (fn.__module__ + ".").startswith(package + "."):
                raise ValueError(
                    f"alias {alias!r} of {path} must be a public name in a parent package of {fn.__module__}")
        names = (path, *aliases)
        for name in names:
            held = _ENTRIES.get(name)
            if held is not None and _path(held.fn) != path:
                raise DuplicateRegistrationError(
                    f"cannot register {path} as {name!r}: {_path(held.fn)} is registered under that name")
        entry = _ENTRIES.get(path) or _Entry(fn)
        entry.fn = fn  # the same function again (a reloaded module) replaces the old object
        entry.roles.update(roles)
        for name in names:
            _ENTRIES[name] = entry
        return fn

    return decorate


def _load_entry_points() -> tuple:
    """Import the modules of the ``v1fabrik.functions`` entry points (once); returns their names."""
    global _entry_point_modules
    if _entry_point_modules is None:
        _entry_point_modules = ()
        for point in entry_points(group=ENTRY_POINT_GROUP):
            try:
                point.load()
            except Exception as error:  # one broken lab package must not stop the others
                logger.warning("entry point %r of %s failed to load: %s", point.value, ENTRY_POINT_GROUP, error)
                continue
            _entry_point_modules += (point.module,)
    return _entry_point_modules


def _listed_modules() -> tuple:
    return tuple(m.strip().rstrip(".") for m in os.environ.get(ALLOWED_MODULES_ENV, "").split(",") if m.strip())


def allowed_modules() -> tuple:
    """The modules whose (sub)modules a row may cause to be imported."""
    return ("pipeline", *_listed_modules(), *_load_entry_points())


def _is_allowed(module: str) -> bool:
    return any(module == allowed or module.startswith(allowed + ".") for allowed in allowed_modules())


def _roles_text(entry) -> str:
    if entry is None:
        return "registered for no role"
    return "registered as " + " and ".join(role for role in ROLES if role in entry.roles)


def _load(name: str) -> str | None:
    """Import the module of ``name`` if it is allowed (registering its functions); what is wrong, if anything."""
    module, _, attr = name.rpartition(".")
    if not _is_allowed(module):
        return (f"{module!r} is outside the allowed modules {list(allowed_modules())} and was not imported; "
                f"your own functions must be registered in a package listed in ${ALLOWED_MODULES_ENV} "
                f"or in the {ENTRY_POINT_GROUP} entry points")
    try:
        found = getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as error:
        return f"importing {module!r} failed ({error})"
    if found is None:
        return f"module {module!r} has no {attr!r}"
    return None if callable(found) else f"it is a {type(found).__name__}, not a function"


def _refusal(name: str, role: str) -> str | None:
    """Why ``name`` cannot be the ``role`` function, or None when it can."""
    if not _DOTTED_NAME.fullmatch(name):
        return "it is not a dotted name like 'package.module.function'"
    if not _is_public_name(name):
        return "it is private (a part of it starts with '_')"
    if name not in _ENTRIES:
        problem = _load(name)
        if name not in _ENTRIES:
            return problem or f"register it with `@register({role!r})` from pipeline.registry"
    return None if role in _ENTRIES[name].roles else f"name a function registered with `@register({role!r})`"


def resolve(name: str, role: str):
    """The function registered as ``name`` for ``role``, or UnregisteredFunctionError saying why not."""
    _check_roles((role,))
    why = _refusal(name, role)
    if why is not None:
        raise UnregisteredFunctionError(f"{name!r} is not a {role} function ({_roles_text(_ENTRIES.get(name))}): {why}")
    return _ENTRIES[name].fn


def roles_of(name: str) -> tuple:
    """The roles ``name`` is registered for, in ROLES order; () when it is not registered."""
    if _is_public_name(name) and name not in _ENTRIES:
        _load(name)
    entry = _ENTRIES.get(name)
    return () if entry is None else tuple(role for role in ROLES if role in entry.roles)


def registered(role: str | None = None) -> list:
    """Every registered name (for ``role`` when given), after loading the shipped and allowed modules."""
    if role is not None:
        _check_roles((role,))
    _load_entry_points()
    for module in (*SHIPPED_MODULES, *_listed_modules()):
        try:
            importlib.import_module(module)
        except ImportError as error:
            logger.warning("allowed module %r could not be imported: %s", module, error)
    return sorted(name for name, entry in _ENTRIES.items() if role is None or role in entry.roles)
