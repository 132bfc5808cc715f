"""Classes by value: methods, properties, classmethods and staticmethods, __slots__,
__init_subclass__, metaclasses, inheritance, dataclasses, enums, NamedTuple, TypedDict,
generics and TypeVars; identity across loads."""

from __future__ import annotations

import abc
import dataclasses
import enum
import functools
import pickle
import typing
from collections import namedtuple

import pytest

import mason
from mason.errors import UnsafeCodeError

from byvalue_helpers import define


def roundtrip(obj):
    return mason.loads(mason.dumps(obj), trusted=True)


def fresh(obj):
    """Load ``obj`` as another process would: rebuilt from its pickle, not this process's own
    class (a class pickled here loads here as itself)."""
    data = mason.dumps(obj)
    # A copy of the payload under new keys makes the loader build the classes afresh.
    return mason.loads(data.replace(b"-0\x94", b"-9\x94"), trusted=True)


def test_local_class_with_methods_property_classmethod_staticmethod():
    def make():
        class Point:
            dims = 2

            def __init__(self, x, y):
                self.x, self.y = x, y

            def norm2(self):
                return self.x ** 2 + self.y ** 2

            @property
            def pair(self):
                return (self.x, self.y)

            @pair.setter
            def pair(self, value):
                self.x, self.y = value

            @classmethod
            def origin(cls):
                return cls(0, 0)

            @staticmethod
            def kind():
                return "point"

            @functools.cached_property
            def expensive(self):
                return self.norm2() * 10

            def __repr__(self):
                return f"Point({self.x}, {self.y})"

            def __eq__(self, other):
                return type(other) is type(self) and self.pair == other.pair

            __hash__ = None
        return Point

    Point = fresh(make())
    p = Point(3, 4)
    assert p.norm2() == 25 and p.pair == (3, 4) and Point.dims == 2
    p.pair = (1, 1)
    assert (p.x, p.y) == (1, 1)
    assert Point.origin() == Point(0, 0)
    assert Point.kind() == "point"
    assert p.expensive == 20 and "expensive" in p.__dict__
    assert repr(p) == "Point(1, 1)"
    assert Point.__hash__ is None
    assert Point.__name__ == "Point" and Point.__qualname__.endswith("make.<locals>.Point")


def test_instances_travel_with_their_class():
    def make():
        class Box:
            def __init__(self, v):
                self.v = v

            def get(self):
                return self.v
        return Box

    Box = make()
    a, b = fresh([Box(1), Box(2)])
    assert a.get() == 1 and b.get() == 2
    assert type(a) is type(b)


def test_slots_are_real_slots_after_loading():
    def make():
        class Slotted:
            __slots__ = ("a", "__b")

            def __init__(self, a, b):
                self.a = a
                self.__b = b

            def b(self):
                return self.__b
        return Slotted

    Slotted = make()
    s = fresh(Slotted(1, 2))
    assert s.a == 1 and s.b() == 2
    assert not hasattr(s, "__dict__")
    with pytest.raises(AttributeError):
        s.other = 3


def test_init_subclass_and_inheritance_from_by_value_classes():
    ns = define("""
        class Plugin:
            registry = []
            name = "base"

            def __init_subclass__(cls, **kwargs):
                super().__init_subclass__(**kwargs)
                cls.registered_as = cls.name.upper()
                Plugin.registry.append(cls.name)

            def run(self):
                return f"run {self.name}"

        class Csv(Plugin):
            name = "csv"

            def run(self):
                return super().run() + "!"
    """)
    Csv = fresh(ns["Csv"])
    assert Csv().run() == "run csv!"
    assert Csv.registered_as == "CSV"
    assert Csv.__mro__[1].__name__ == "Plugin"
    assert "csv" in Csv.__mro__[1].registry


def test_metaclass():
    ns = define("""
        class Meta(type):
            def __new__(mcls, name, bases, namespace, **kwargs):
                cls = super().__new__(mcls, name, bases, namespace)
                cls.made_by_meta = True
                return cls

            def describe(cls):
                return f"class {cls.__name__}"

        class WithMeta(metaclass=Meta):
            def hello(self):
                return "hi"
    """)
    WithMeta = fresh(ns["WithMeta"])
    assert type(WithMeta).__name__ == "Meta"
    assert WithMeta.made_by_meta and WithMeta.describe() == "class WithMeta"
    assert WithMeta().hello() == "hi"


def test_abc_abstract_methods_and_registration():
    ns = define("""
        import abc
        class Shape(abc.ABC):
            @abc.abstractmethod
            def area(self): ...

        class Square(Shape):
            def __init__(self, s):
                self.s = s
            def area(self):
                return self.s ** 2

        class Virtual:
            pass
        Shape.register(Virtual)
    """)
    Shape, Square, Virtual = fresh([ns["Shape"], ns["Square"], ns["Virtual"]])
    with pytest.raises(TypeError):
        Shape()
    assert Square(3).area() == 9
    assert isinstance(Square(1), Shape)
    assert issubclass(Virtual, Shape)
    assert Shape.__abstractmethods__ == frozenset({"area"})


def test_dataclasses():
    @dataclasses.dataclass(order=True)
    class Item:
        name: str
        qty: int = 0
        tags: list = dataclasses.field(default_factory=list)
        secret: str = dataclasses.field(default="", repr=False, compare=False)

    @dataclasses.dataclass(frozen=True)
    class Frozen:
        x: int

    Item2, Frozen2 = fresh([Item, Frozen])
    it = Item2("a", 2)
    assert it.tags == [] and it.qty == 2
    assert Item2("a", 1) < Item2("b", 0)
    assert "secret" not in repr(Item2("a", secret="s"))
    assert [f.name for f in dataclasses.fields(Item2)] == ["name", "qty", "tags", "secret"]
    assert dataclasses.fields(Item2)[2].default is dataclasses.MISSING
    assert dataclasses.asdict(it) == {"name": "a", "qty": 2, "tags": [], "secret": ""}
    assert dataclasses.replace(it, qty=5).qty == 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frozen2(1).x = 2
    assert roundtrip(Item("z", 3, ["t"])) == Item("z", 3, ["t"])


def test_enums_members_stay_singletons():
    def make():
        class Color(enum.Enum):
            RED = 1
            GREEN = 2
            CRIMSON = 1  # an alias

            def describe(self):
                return self.name.lower()

            @classmethod
            def _missing_(cls, value):
                return cls.RED

        class Perm(enum.IntFlag):
            R = 4
            W = 2
            X = 1

        class Planet(enum.Enum):
            EARTH = (5.97e24, 6.37e6)

            def __init__(self, mass, radius):
                self.mass = mass
                self.radius = radius
        return Color, Perm, Planet

    Color, Perm, Planet = fresh(make())
    assert Color.RED.describe() == "red"
    assert Color.CRIMSON is Color.RED
    assert Color(1) is Color.RED and Color(99) is Color.RED
    assert roundtrip(Color.GREEN) is Color.GREEN
    assert roundtrip([Color.RED, Color]) == [Color.RED, Color]
    assert Perm.R | Perm.W == 6 and isinstance(Perm(7), Perm)
    assert Planet.EARTH.mass == 5.97e24 and Planet.EARTH.radius == 6.37e6
    assert list(Color) == [Color.RED, Color.GREEN]


def test_namedtuple_and_typing_namedtuple():
    Pair = namedtuple("Pair", "a b", defaults=[0])

    class P(typing.NamedTuple):
        x: int
        y: int = 5

        def total(self):
            return self.x + self.y

    Pair2, P2 = fresh([Pair, P])
    assert Pair2(1) == (1, 0) and Pair2(1, 2).b == 2 and Pair2._fields == ("a", "b")
    p = P2(1)
    assert p.total() == 6 and p._asdict() == {"x": 1, "y": 5}
    assert P2._replace(p, x=3) == (3, 5)
    assert P2.__annotations__ == P.__annotations__
    assert roundtrip(P(2, 3)).total() == 5


def test_typeddict_generics_and_typevars():
    T = typing.TypeVar("T", bound=int)

    class Movie(typing.TypedDict, total=False):
        title: str
        year: int

    class Box(typing.Generic[T]):
        def __init__(self, item: T):
            self.item = item

    Movie2, Box2, T2, alias, union = fresh([Movie, Box, T, Box[int], typing.Optional[Box]])
    assert Movie2(title="x") == {"title": "x"}
    assert Movie2.__total__ is False
    assert Movie2.__optional_keys__ == frozenset({"title", "year"})
    assert Box2(3).item == 3
    assert isinstance(T2, typing.TypeVar) and T2.__bound__ is int
    assert Box2.__parameters__ == (T2,)
    assert typing.get_origin(alias) is Box2 and typing.get_args(alias) == (int,)
    assert typing.get_args(union) == (Box2, type(None))


def test_class_loaded_twice_is_one_class():
    def make():
        class Once:
            def __init__(self, v):
                self.v = v
        return Once

    Once = make()
    data = mason.dumps(Once(1))
    # under a new key: as if it came from another process
    data = data.replace(b"-0\x94", b"-7\x94")
    a = mason.loads(data, trusted=True)
    b = mason.loads(data, trusted=True)
    c = mason.loads(mason.dumps(type(a)), trusted=True)
    assert type(a) is type(b) is c
    assert isinstance(b, type(a))


def test_class_pickled_and_loaded_in_its_own_process_is_itself():
    def make():
        class Mine:
            pass
        return Mine

    Mine = make()
    assert roundtrip(Mine) is Mine
    assert type(roundtrip(Mine())) is Mine


def test_two_classes_of_one_factory_stay_two_classes():
    def make(n):
        class Made:
            value = n

            def get(self):
                return n
        return Made

    A, B = make(1), make(2)
    A2, B2 = fresh([A, B])
    assert A2 is not B2
    assert (A2().get(), B2().get()) == (1, 2)


def test_classes_pickle_deterministically():
    ns = define("""
        class Config:
            options = frozenset({"x", "y", "z"})
            names = ("a", "b")
            def method(self):
                return {"k": 1}
    """)
    assert mason.dumps(ns["Config"]) == mason.dumps(ns["Config"])


def test_safe_loading_refuses_and_names_the_class():
    def make():
        class Hidden:
            pass
        return Hidden

    data = mason.dumps(make()())
    with pytest.raises(UnsafeCodeError) as caught:
        mason.loads(data)
    assert "the class" in str(caught.value) and "Hidden" in str(caught.value)
    assert caught.value.kind == "class"


def test_property_subclasses_from_abc():
    class WithAbstract(abc.ABC):
        @property
        @abc.abstractmethod
        def value(self):
            ...

    class Concrete(WithAbstract):
        @property
        def value(self):
            return 1

    C = fresh(Concrete)
    assert C().value == 1
    with pytest.raises(TypeError):
        C.__mro__[1]()


def test_stdlib_pickle_loads_classes_too():
    def make():
        class Plain:
            def __init__(self):
                self.a = 1
        return Plain

    obj = pickle.loads(mason.dumps(make()()))
    assert obj.a == 1
