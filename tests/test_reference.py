import pytest

from pyrun.errdefs import InvalidArgument
from pyrun.registry.reference import Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("given, want", [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("user/app", "docker.io/user/app:latest"),
    ("index.docker.io/busybox", "docker.io/library/busybox:latest"),
    ("docker.io/a/b/c", "docker.io/a/b/c:latest"),
    ("quay.io/coreos/etcd:v3.5", "quay.io/coreos/etcd:v3.5"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest"),
    ("127.0.0.1:5000/a/b:t", "127.0.0.1:5000/a/b:t"),
    ("myhost:5000/app", "myhost:5000/app:latest"),
    ("[::1]:5000/app", "[::1]:5000/app:latest"),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}"),
    (f"localhost:5000/app:v1@{D}", f"localhost:5000/app:v1@{D}"),
    ("x/a.b-c_d__e", "docker.io/x/a.b-c_d__e:latest"),
])
def test_normalise(given, want):
    assert str(parse_reference(given)) == want


def test_parts():
    r = parse_reference(f"localhost:5000/team/app:v1@{D}")
    assert r == Reference("localhost:5000", "team/app", "v1", D)
    assert r.name == "localhost:5000/team/app"
    assert r.object == D
    assert parse_reference("localhost:5000/app").object == "latest"
    assert parse_reference("app", default_tag=False).tag is None


def test_familiar():
    assert parse_reference("docker.io/library/busybox").familiar() == "busybox:latest"
    assert parse_reference("user/app:1").familiar() == "user/app:1"
    assert parse_reference("localhost:5000/app").familiar() == "localhost:5000/app:latest"


def test_with_digest():
    assert str(parse_reference("app:1").with_digest(D)) == f"docker.io/library/app:1@{D}"


@pytest.mark.parametrize("bad, why", [
    ("", "empty"),
    ("Busybox", "lower case"),
    ("docker.io/User/app", "lower case"),
    ("app:", "bad tag"),
    ("app:-x", "bad tag"),
    ("app:" + "t" * 129, "bad tag"),
    ("app@sha256:xyz", "bad digest"),
    ("app@", "bad digest"),
    ("a" * 64, "image id"),
    ("app//x", "bad repository name"),
    ("app/", "bad repository name"),
    ("-host.com/app", "bad registry host"),
    ("host.com:port/app", "bad registry host"),
    ("a.b/" + "x" * 260, "longer than 255"),
    (":tag", "empty name"),
])
def test_invalid(bad, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_reference(bad)
