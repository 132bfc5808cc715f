"""A module of the example's own: classes that live in an importable module pickle by name."""


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __repr__(self):
        return f"Point({self.x}, {self.y})"
