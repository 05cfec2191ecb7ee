"""Small record classes: typed-config holders without ``dataclasses``.

``dataclasses`` (with ``inspect``, ``typing`` and ``re`` behind it) costs
more to import than starting a container takes, and ``pyrun run`` must
start fast.  A record lists its fields in ``__slots__`` and their defaults
in ``_defaults`` (a type such as ``dict`` or ``list`` there means "a new
empty one").  :class:`Frozen` records refuse assignment.
"""


class Record:
    __slots__ = ()
    _defaults = {}

    def __init__(self, *args, **kw):
        names = self.__slots__
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__}: too many arguments")
        for name, value in zip(names, args):
            object.__setattr__(self, name, value)
        for name in names[len(args):]:
            if name in kw:
                value = kw.pop(name)
            elif name in self._defaults:
                value = self._defaults[name]
                if isinstance(value, type):
                    value = value()
            else:
                raise TypeError(f"{type(self).__name__}: missing {name!r}")
            object.__setattr__(self, name, value)
        if kw:
            raise TypeError(f"{type(self).__name__}: unexpected {', '.join(kw)}")

    def asdict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    def replace(self, **kw):
        return type(self)(**{**self.asdict(), **kw})

    def __eq__(self, other):
        return type(other) is type(self) and self.asdict() == other.asdict()

    def __hash__(self):
        return hash(tuple(getattr(self, n) for n in self.__slots__))

    def __repr__(self):
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({inner})"


class Frozen(Record):
    __slots__ = ()

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is frozen")
