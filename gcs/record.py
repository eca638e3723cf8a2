"""Typed record classes for the agent's message shapes, declared as dataclasses are:

    @record
    class StdioPorts:
        stdin: int = 0
        names: list[str] = field(default_factory=list)

gives `__init__` (positional or by keyword, defaults and factories, base classes' fields
first), `__repr__` and `__eq__`. Not `dataclasses` itself: importing it pulls in `inspect`,
`ast`, `dis`, `tokenize`, `enum` and `re`, which cost the agent ~3 MB of memory and ~0.16 s of
start-up in a UVM under TCG, for features these shapes never use.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

_MISSING = object()


class field:  # noqa: N801 - spelled as dataclasses.field, which it stands for
    """A field whose default is made fresh for every instance."""

    __slots__ = ("default_factory",)

    def __init__(self, *, default_factory: Callable[[], Any]) -> None:
        self.default_factory = default_factory


def record(cls: type) -> type:
    fields: dict[str, tuple[Any, Any]] = {}  # name -> (default, factory), bases first
    for base in reversed(cls.__mro__[1:]):
        fields.update(base.__dict__.get("__record_fields__", {}))
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, field):
            fields[name] = (_MISSING, value.default_factory)
            delattr(cls, name)
        else:
            fields[name] = (value, None)
    params, body, scope = [], [], {"_MISSING": _MISSING}
    seen_default = False
    for i, (name, (default, factory)) in enumerate(fields.items()):
        if default is _MISSING and factory is None:
            if seen_default:
                raise TypeError(f"{cls.__name__}: field {name} without a default follows one with a default")
            params.append(name)
            body.append(f"    self.{name} = {name}")
            continue
        seen_default = True
        if factory is None:
            scope[f"_d{i}"] = default
            params.append(f"{name}=_d{i}")
            body.append(f"    self.{name} = {name}")
        else:
            scope[f"_f{i}"] = factory
            params.append(f"{name}=_MISSING")
            body.append(f"    self.{name} = _f{i}() if {name} is _MISSING else {name}")
    source = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    exec(source, scope)  # one small function per class, as dataclasses makes it
    init = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    names = tuple(fields)

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def __eq__(self: Any, other: Any) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in names)

    cls.__init__ = init  # type: ignore[misc]
    cls.__repr__ = __repr__  # type: ignore[method-assign]
    cls.__eq__ = __eq__  # type: ignore[method-assign]
    cls.__hash__ = None  # type: ignore[assignment] - mutable, as a dataclass without frozen=True
    cls.__record_fields__ = fields  # type: ignore[attr-defined]
    cls.__match_args__ = names  # type: ignore[attr-defined]
    return cls
