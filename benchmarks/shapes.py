"""The data the core benchmarks pickle.

The first three shapes are pyperformance's ``bm_pickle`` data (pyperformance, MIT licence:
https://github.com/python/pyperformance, ``bm_pickle/run_benchmark.py``), rebuilt here with the
same values so that the numbers compare with pyperformance's ``pickle``, ``pickle_list`` and
``pickle_dict`` benchmarks:

* ``DICT``: a user record (str keys; int, str, a list of str, and one ``datetime.date``);
* ``TUPLE``: a list of 20 ints and an int;
* ``DICT_GROUP``: three copies of ``DICT`` whose values were replaced by random numbers
  converted to the key's type (str), with pyperformance's fixed seed (5);
* ``LIST``: ten ``[list(range(10)), list(range(10))]`` pairs;
* ``MICRO_DICT``: 100 int keys, each mapping to ``dict.fromkeys(range(10))``.

pyperformance times each of these one object per ``dumps`` / ``loads`` call, so per-call cost
counts, as it does in real code that pickles one message or record at a time.

The other two are the instance-heavy shapes: 100,000 small instances of a plain class, and an
order book of dataclasses (one of them frozen with slots, so it pickles through
``__getstate__`` / ``__setstate__``).  The classes live at module level here so that a pickle
names them as ``<this module>.<Class>``; ``allow_names`` gives the ``allow=`` list.
"""

from __future__ import annotations

import datetime
import random
import sys
from dataclasses import dataclass, field

# --- pyperformance bm_pickle ------------------------------------------------------------------

DICT = {
    "ads_flags": 0,
    "age": 18,
    "birthday": datetime.date(1980, 5, 7),
    "bulletin_count": 0,
    "comment_count": 0,
    "country": "BR",
    "encrypted_id": "G9urXXAJwjE",
    "favorite_count": 9,
    "first_name": "",
    "flags": 412317970704,
    "friend_count": 0,
    "gender": "m",
    "gender_for_display": "Male",
    "id": 302935349,
    "is_custom_profile_icon": 0,
    "last_name": "",
    "locale_preference": "pt_BR",
    "member": 0,
    "tags": ["a", "b", "c", "d", "e", "f", "g"],
    "profile_foo_id": 827119638,
    "secure_encrypted_id": "Z_xxx2dYx3t4YAdnmfgyKw",
    "session_number": 2,
    "signup_id": "201-19225-223",
    "status": "A",
    "theme": 1,
    "time_created": 1225237014,
    "time_updated": 1233134493,
    "unread_message_count": 0,
    "user_group": "0",
    "username": "collinwinter",
    "play_count": 9,
    "view_count": 7,
    "zip": "",
}

TUPLE = (
    [265867233, 265868503, 265252341, 265243910, 265879514,
     266219766, 266021701, 265843726, 265592821, 265246784,
     265853180, 45526486, 265463699, 265848143, 265863062,
     265392591, 265877490, 265823665, 265828884, 265753032],
    60,
)


def _scrambled(record: dict, rng: random.Random) -> dict:
    # As pyperformance's mutate_dict: every value becomes a random number, converted to the
    # type of its key (all keys are str here, so every value becomes a str).
    copy = dict(record)
    for key in copy:
        number = rng.random() * sys.maxsize
        if isinstance(key, (int, bytes, str)):
            copy[key] = type(key)(number)
    return copy


_rng = random.Random(5)
DICT_GROUP = [_scrambled(DICT, _rng) for _ in range(3)]
del _rng

LIST = [[list(range(10)), list(range(10))] for _ in range(10)]

MICRO_DICT = {key: dict.fromkeys(range(10)) for key in range(100)}


# --- instance-heavy shapes --------------------------------------------------------------------

class Point:
    """A small plain class: three attributes in its ``__dict__``."""

    def __init__(self, x: int, y: float, label: str):
        self.x = x
        self.y = y
        self.label = label

    def __eq__(self, other):
        return type(other) is Point and self.__dict__ == other.__dict__

    __hash__ = None


def make_points(n: int = 100_000) -> list[Point]:
    return [Point(i, i * 0.5, f"p{i % 1000}") for i in range(n)]


@dataclass
class Customer:
    id: int
    name: str
    email: str


@dataclass(frozen=True, slots=True)
class LineItem:
    sku: str
    quantity: int
    unit_price: float


@dataclass
class Order:
    id: int
    customer: Customer
    items: list[LineItem]
    total: float
    status: str = "open"
    tags: tuple[str, ...] = ()
    notes: dict[str, str] = field(default_factory=dict)


def make_orders(n: int = 5_000, customers: int = 500, seed: int = 1) -> list[Order]:
    """``n`` orders of 1-5 line items; customers are shared (so the memo is exercised)."""
    rng = random.Random(seed)
    people = [Customer(i, f"customer {i}", f"c{i}@example.com") for i in range(customers)]
    orders = []
    for i in range(n):
        items = [LineItem(f"SKU-{rng.randrange(10_000):05d}", rng.randrange(1, 10),
                          round(rng.uniform(0.5, 500.0), 2))
                 for _ in range(rng.randrange(1, 6))]
        orders.append(Order(
            id=i, customer=people[rng.randrange(customers)], items=items,
            total=round(sum(it.quantity * it.unit_price for it in items), 2),
            status=rng.choice(("open", "paid", "shipped")),
            tags=tuple(rng.sample(("gift", "rush", "bulk", "export"), rng.randrange(0, 3))),
            notes={"source": "web"} if i % 7 == 0 else {}))
    return orders


def allow_names(*classes: type) -> list[str]:
    """The ``allow=`` entries that admit ``classes`` (by the name a pickle gives them)."""
    return [f"{cls.__module__}.{cls.__qualname__}" for cls in classes]
