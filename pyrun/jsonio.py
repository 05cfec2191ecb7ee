"""JSON for the hot path of ``pyrun run``: the C scanner and encoder of
CPython's ``_json`` used directly.

``import json`` pulls in ``re`` and costs more than a whole container
start on a slow machine (about 8 ms here); these two functions cost
nothing to import and give the same results as ``json.loads`` and compact
``json.dumps``.  Anything fancier (indentation) uses :mod:`json` itself.
"""
try:
    import _json
except ImportError:  # pragma: no cover - every CPython has it
    _json = None

_WS = " \t\n\r"


class _Context:
    # The attributes CPython's scanner reads from a JSONDecoder.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        return {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}[name]


def _fail(msg, doc, pos):
    from json import JSONDecodeError
    raise JSONDecodeError(msg, doc, pos)


def loads(data):
    """Decode a JSON document (str or bytes).  Raises
    ``json.JSONDecodeError`` (a ValueError) on bad input."""
    if _json is None:
        import json
        return json.loads(data)
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8-sig" if data[:3] == b"\xef\xbb\xbf" else "utf-8")
    scan = _json.make_scanner(_Context)
    i, n = 0, len(data)
    while i < n and data[i] in _WS:
        i += 1
    try:
        obj, end = scan(data, i)
    except StopIteration as e:
        _fail("Expecting value", data, e.value)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except ValueError:
        raise
    except Exception:
        # The C scanner's error paths expect a real JSONDecoder: let json
        # itself produce the message.
        import json
        try:
            return json.loads(data)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
    while end < n and data[end] in _WS:
        end += 1
    if end != n:
        _fail("Extra data", data, end)
    return obj


def dumps(obj):
    """Encode ``obj`` as compact JSON text (``separators=(",", ":")``)."""
    if _json is None:
        import json
        return json.dumps(obj, separators=(",", ":"))

    def default(o):
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    enc = _json.make_encoder({}, default, _json.encode_basestring_ascii, None, ":", ",",
                             False, False, True)
    return "".join(enc(obj, 0))
