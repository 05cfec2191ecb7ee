"""process.args[0] is checked at create time, as runc does (Go's
exec.LookPath): engines map "permission denied" and "no such file" in the
runtime's error to exit statuses 126 and 127."""
import pytest

from runtime_helpers import make_bundle

pytestmark = pytest.mark.root


@pytest.mark.parametrize("arg0, error", [("/etc/passwd", "find '/etc/passwd': Permission denied"),
                                         ("/no/such", "find '/no/such': No such file"),
                                         ("nosuch", "find 'nosuch' in PATH: No such file")])
def test_create_refuses_what_cannot_be_executed(pyrun, tmp_path, busybox_rootfs, arg0, error):
    make_bundle(tmp_path / "bundle", busybox_rootfs, [arg0])
    r = pyrun("create", "-b", str(tmp_path / "bundle"), "c1", check=False)
    assert r.returncode == 1
    assert error in r.stderr
    assert pyrun("list", "-q").stdout == ""
