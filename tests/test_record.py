"""The message-shape decorator that stands in for dataclasses (gcs/record.py)."""
import pytest

from gcs.record import field, record


@record
class Base:
    a: int
    b: str = "x"


@record
class Child(Base):
    c: list[int] = field(default_factory=list)


def test_fields_defaults_factories_and_inheritance():
    one, two = Child(1), Child(1)
    assert (one.a, one.b, one.c) == (1, "x", [])
    one.c.append(5)
    assert two.c == []  # a fresh list per instance
    assert Child(2, "y", [3]) == Child(a=2, b="y", c=[3]) and Child(2) != Child(3)
    assert repr(Child(2, "y")) == "Child(a=2, b='y', c=[])"
    assert Base(1) != Child(1)
    with pytest.raises(TypeError):
        hash(Base(1))  # mutable, like a dataclass without frozen=True
    with pytest.raises(TypeError):
        Child()  # a is required


def test_a_required_field_after_a_default_is_refused():
    with pytest.raises(TypeError, match="without a default follows"):
        @record
        class Bad:
            a: int = 0
            b: int
