"""Unit tests (no root) for the pieces of pause/resume/ps/update/events
that need no container: the status machine, runc's value syntaxes, the
update merge and the flag parser's ps arguments."""
import pytest

from pyrun.cli import runc_flags
from pyrun.errdefs import InvalidArgument, NotImplementedYet
from pyrun.runtime import update
from pyrun.runtime.state import State, Status, read_oom_kills


def test_status_machine():
    can = {s: (s.can_pause(), s.can_resume(), s.can_kill(), s.can_delete())
           for s in (Status.CREATING, Status.CREATED, Status.RUNNING, Status.PAUSED, Status.STOPPED)}
    assert can == {Status.CREATING: (False, False, False, True),
                   Status.CREATED: (True, False, True, True),
                   Status.RUNNING: (True, False, True, False),
                   Status.PAUSED: (False, True, True, False),
                   Status.STOPPED: (False, False, False, True)}
    assert Status.PAUSED.can_delete(force=True)


def test_oom_in_oci_state(tmp_path):
    st = State(id="c1", bundle="/b", rootfs="/r", status=Status.STOPPED)
    assert "oomKilled" not in st.oci()
    st.oom_kills = 2
    assert st.oci()["oomKilled"] is True
    f = tmp_path / "memory.events"
    f.write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 4\n")
    assert read_oom_kills(str(f)) == 4
    assert read_oom_kills(str(tmp_path / "gone")) is None


@pytest.mark.parametrize("text, value", [
    ("4096", 4096), ("100m", 100 << 20), ("100M", 100 << 20), ("1g", 1 << 30), ("512kb", 512 << 10),
    ("2MiB", 2 << 20), ("1.5k", 1536), ("7b", 7), ("3 m", 3 << 20)])
def test_ram_in_bytes(text, value):
    assert update.ram_in_bytes(text) == value


@pytest.mark.parametrize("text", ["", "abc", "m", "-5", "1x", "1.2.3m", "10mm"])
def test_ram_in_bytes_bad(text):
    with pytest.raises(InvalidArgument, match="invalid size"):
        update.ram_in_bytes(text)


def test_resources_from_flags():
    got = update.resources_from_flags({
        "memory": "100m", "memory-swap": "-1", "memory-reservation": "1g", "kernel-memory-tcp": "1m",
        "cpu-quota": "-1", "cpu-period": "100000", "cpu-share": "512", "cpu-rt-runtime": "5",
        "cpu-rt-period": "10", "cpuset-cpus": "0-1", "cpuset-mems": "0", "pids-limit": "-1",
        "blkio-weight": "300"})
    assert got == {
        "memory": {"limit": 100 << 20, "swap": -1, "reservation": 1 << 30, "kernelTCP": 1 << 20},
        "cpu": {"quota": -1, "period": 100000, "shares": 512, "realtimeRuntime": 5,
                "realtimePeriod": 10, "cpus": "0-1", "mems": "0"},
        "pids": {"limit": -1}, "blockIO": {"weight": 300}}
    assert update.resources_from_flags({}) == {}
    with pytest.raises(InvalidArgument, match="--cpu-period: '-1' must not be negative"):
        update.resources_from_flags({"cpu-period": "-1"})
    with pytest.raises(NotImplementedYet, match="--mem-bw-schema"):
        update.resources_from_flags({"mem-bw-schema": "MB:0=70"})


def test_update_merge_keeps_unset_values():
    change = update._drop_unset({"memory": {"limit": 0, "swap": 5, "swappiness": 0},
                                 "cpu": {"cpus": "", "idle": 0}, "pids": {"limit": 0}})
    assert change == {"memory": {"swap": 5, "swappiness": 0}, "cpu": {"idle": 0}, "pids": {}}
    merged = update._merge({"memory": {"limit": 9, "swap": 1}, "pids": {"limit": 3},
                            "hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}, change)
    assert merged == {"memory": {"limit": 9, "swap": 5, "swappiness": 0}, "cpu": {"idle": 0},
                      "pids": {"limit": 3}, "hugepageLimits": [{"pageSize": "2MB", "limit": 1}]}


@pytest.mark.parametrize("text, seconds", [
    ("5s", 5.0), ("500ms", 0.5), ("1m30s", 90.0), ("1h", 3600.0), ("2", 2.0), ("0.25", 0.25),
    ("1.5s", 1.5)])
def test_duration(text, seconds):
    assert runc_flags.duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5x", "5 s", "ms5"])
def test_duration_bad(text):
    with pytest.raises(ValueError):
        runc_flags.duration(text)


def test_parse_ps_arguments():
    a = runc_flags.parse(["ps", "-f", "json", "c1"])
    assert (a.id, a.format, a.ps_args) == ("c1", "json", [])
    a = runc_flags.parse(["ps", "c1", "-o", "pid,comm", "-f"])
    assert (a.id, a.format, a.ps_args) == ("c1", "table", ["-o", "pid,comm", "-f"])
    with pytest.raises(InvalidArgument, match="missing the id"):
        runc_flags.parse(["ps"])
    assert "ID PS_ARGS..." in runc_flags.usage("ps")


def test_parse_update_and_events_flags():
    a = runc_flags.parse(["update", "--memory=100m", "--pids-limit", "5", "c1"])
    assert (a.id, a.memory, a.pids_limit, a.cpu_quota, a.resources) == ("c1", "100m", "5", None, None)
    a = runc_flags.parse(["events", "--interval", "250ms", "c1"])
    assert (a.interval, a.stats) == (0.25, False)
    assert runc_flags.parse(["events", "c1"]).interval == 5.0
    with pytest.raises(InvalidArgument, match="--interval: bad value 'soon'"):
        runc_flags.parse(["events", "--interval", "soon", "c1"])
