"""containerd filter syntax (unit tests, no root)."""
import re

import pytest

from pyrun.errdefs import InvalidArgument
from pyrun.snapshots.filters import Selector, match_any, parse, parse_all


def test_parse_forms():
    assert parse("kind==committed") == (Selector(("kind",), "==", "committed"),)
    assert parse('labels."containerd.io/gc.root",name!="a,b"') == (
        Selector(("labels", "containerd.io/gc.root")),
        Selector(("name",), "!=", "a,b"))
    assert parse(r'labels."a\"b"~=^x.*$') == (Selector(("labels", 'a"b'), "~=", "^x.*$"),)


@pytest.mark.parametrize("bad, where", [("", 0), ("kind=", 4), ("kind==", 6), ("a,,b", 2),
                                         ("x~=[", 3), ('labels."x', 7)])
def test_parse_errors_say_where(bad, where):
    with pytest.raises(InvalidArgument, match=re.escape(f"filter {bad!r}") + f".*position {where}$"):
        parse(bad)


def test_match_semantics():
    fields = {("kind",): "active", ("labels", "x"): "1"}
    get = fields.get
    assert match_any([], get)
    assert match_any(parse_all(["kind==view", "labels.x==1"]), get)  # OR
    assert not match_any(parse_all(["kind==active,labels.x==2"]), get)  # AND
    assert match_any(parse_all(["labels.y!=1"]), get)  # != matches an absent field
    assert not match_any(parse_all(["labels.y==1"]), get)
    assert match_any(parse_all(["labels.x"]), get) and not match_any(parse_all(["labels.y"]), get)
    assert match_any(parse_all(["kind~=^act"]), get)
