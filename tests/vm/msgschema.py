# The message tables by name, for tests and tooling (schema dumps, the JSON form by field names,
# logging on a bench). No board imports it: a device never needs a field's name, so these strings
# stay out of every firmware bundle. The tables they index are msg's.
from msg import _IDX, _SPEC, _PREFIX, TOPICS, _row

HELLO = 1
STATUS = 2
HEARTBEAT = 3
EVENT = 4
ALARM = 5
SESS_OPEN = 6
SESS_UPDATE = 7
SESS_CLOSE = 8
CMD_RESULT = 9
AUTH_REQ = 10
COMMAND = 20
ACK = 21
TIME = 22
TIME_REQ = 11
CHUNK_REQ = 12
CHUNK = 23

TYPE_NAMES = ("hello", "status", "heartbeat", "event", "alarm", "sess_open", "sess_update",
              "sess_close", "cmd_result", "auth_req", "command", "ack", "time", "time_req",
              "chunk_req", "chunk")
_FNAMES = (
    "iat seq fw board reset caps kind boots", "iat seq online",
    "iat seq uptime heap jdepth rssi clock rx_refused rx_oversize rx_dropped off_amt off_n",
    "iat seq code detail",
    "iat seq code detail active", "seq prev sid payer slot t0 offline auth amount cur item",
    "seq prev sid amount cur t1",
    "seq prev sid payer slot t0 offline auth amount cur t1 lines reason",
    "iat cti seq status name data cseq", "iat seq sid payer slot purpose auth amount cur t0 t1",
    "aud exp nbf iat cti seq name args",
    "aud iat seq upto resend quarantined", "aud iat seq nonce", "seq nonce", "iat seq rel i",
    "aud iat seq rel i data",
)


def types():
    """-> the known type numbers."""
    return tuple(_IDX[i] for i in range(0, len(_IDX), 3))


def type_name(t):
    i = _row(t)
    return TYPE_NAMES[i] if i >= 0 else None


def topic(device_id, t):
    """-> the full topic type t travels on for device_id (SPEC §1)."""
    return _PREFIX + device_id + TOPICS[_row(t)]


def names(t):
    """-> ((key, name), ...) of type t in key order, "type" first (for tests and logging)."""
    i = _row(t)
    if i < 0:
        return ()
    o = _IDX[i * 3 + 1] * 5
    return ((0, "type"),) + tuple((_SPEC[o + j * 5], n) for j, n in enumerate(_FNAMES[i].split()))


def fields(t):
    """-> ((key, name, kind, required, lo, hi), ...) of type t (for tests and tooling)."""
    i = _row(t)
    if i < 0:
        return ()
    o = _IDX[i * 3 + 1] * 5
    nm = _FNAMES[i].split()
    return tuple((_SPEC[o + j * 5], nm[j], chr(_SPEC[o + j * 5 + 1]), _SPEC[o + j * 5 + 2],
                  _SPEC[o + j * 5 + 3], _SPEC[o + j * 5 + 4]) for j in range(len(nm)))
