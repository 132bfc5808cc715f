"""mason in one page: pickle's API, loading that is safe by default, and the ways to trust."""

import collections
import datetime
import decimal
import os
import tempfile

import mason as pickle  # the drop-in: ordinary pickle code keeps working
from geometry import Point


record = {
    "name": "sensor-7",
    "when": datetime.datetime(2026, 11, 25, 12, 0),
    "reading": decimal.Decimal("21.5"),
    "history": collections.deque([20.1, 20.9, 21.5], maxlen=10),
    "tags": {"indoor", "calibrated"},
}

# Plain data and the standard library's value types load safely with no options at all.
data = pickle.dumps(record)
assert pickle.loads(data) == record
print("plain data:", pickle.loads(data)["when"])

# A class of your own is a global: mason refuses it until you allow it, and says how.
points = pickle.dumps([Point(1, 2), Point(3, 4)])
try:
    pickle.loads(points)
except pickle.UnsafeGlobalError as error:
    print("refused:", error.names)
print("allowed:", pickle.loads(points, allow=["geometry.Point"]))

# A hostile pickle runs nothing: this one would call os.system.
hostile = b"cos\nsystem\n(S'echo pwned'\ntR."
try:
    pickle.loads(hostile)
except pickle.UnsafeGlobalError as error:
    print("hostile pickle refused:", error.names)

# Files work as with pickle: several pickles in one file, read back one at a time.
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "records.pkl")
    with open(path, "wb") as file:
        pickle.dump(record, file)
        pickle.dump([1, 2, 3], file)
    with open(path, "rb") as file:
        print("from file:", pickle.load(file)["name"], pickle.load(file))

# Old pickles keep loading after a refactor: here, as an older version of this program
# wrote it, when Point lived in a module named oldapp.geometry.
old = pickle.dumps(Point(5, 6), protocol=0).replace(b"cgeometry\nPoint", b"coldapp.geometry\nPoint")
print("renamed:", pickle.loads(old, renames={"oldapp.geometry": "geometry"},
                               allow=["geometry.Point"]))

# What pickle cannot pickle at all travels by value; loading code is running code, so it
# takes trust (or a signature: pickle.dumps(f, key=...) / pickle.loads(data, key=...)).
square = pickle.loads(pickle.dumps(lambda x: x * x), trusted=True)
print("a lambda, by value:", square(7))
