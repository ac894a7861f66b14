# Per-slot groups (a board's "pins": one lock or one sensor per slot): one object holds every
# member's state, and a member (p.locks[3], "locks.3") is a view made when asked for. An object
# per member was ~100 B of RAM each, 16 on a rental station; a group is ~200 B with all its members.
# Bundled only with a board that has a group (host_tools/bundle.py).
from hal import io


def _get(m):
    return m._g.st[m.gi]


def _put(m, v):
    m._g.st[m.gi] = v


class _M:
    """A member's state, driver and callbacks are its group's entries; gi: its index."""
    state = value = property(_get, _put)
    _drv = property(lambda m: m._g.drv[m.gi])
    _cbs = property(lambda m: m._g._cbs)
    # one Event a group: a member's changed() wakes at any change in the group (wait(v) is exact)
    _ev = property(lambda m: m._g._ev, lambda m, e: setattr(m._g, "_ev", e))
    name = property(lambda m: "%s.%d" % (m._g.name, m.gi))

    def __init__(m, g, i):
        m._g = g
        m.gi = i


# members, named as their kinds (the names are already in this module's table)
class Relay(_M, io.Relay):
    pass


class Lock(_M, io.Lock):
    pass


class Indicator(_M, io.Indicator):
    pass


class Input(_M, io.Input):
    pass


class Group:
    """len(g), g[i], for m in g: members; on_change(cb): cb(index, value) at any member's change."""
    KIND = "group"
    _cbs = _ev = None
    on_change = io.Input.on_change

    def __init__(g, f, name, spec):
        g.name = name
        pins = spec["pins"]
        t = spec["type"]
        if t == "input":
            g.C = Input
            g.st = [0] * len(pins)
            for i in range(len(pins)):
                f.inp(g[i], spec, pins[i])
        else:
            g.C = C = Lock if t == "lock" else Indicator if t == "indicator" else Relay
            g.st = [C.STATES[0]] * len(pins)
            g.drv = [f.out(spec, pin) for pin in pins]

    def __len__(g):
        return len(g.st)

    def __getitem__(g, i):
        g.st[i]  # IndexError past the end: ends a for loop
        return g.C(g, i)
