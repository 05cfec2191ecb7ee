"""Spec fields as the engines write them (podman 4.3, containerd 1.6),
parsed as runc accepts them."""
import copy

import pytest

from pyrun.errdefs import InvalidArgument
from pyrun.oci import spec as ocispec
from pyrun.oci.default import default_spec


def _with_device(**device):
    raw = copy.deepcopy(default_spec())
    raw["linux"]["devices"] = [dict({"path": "/dev/autofs", "type": "c", "major": 10,
                                     "minor": 235, "uid": 0, "gid": 0}, **device)]
    return ocispec.parse(raw).linux.devices[0]


def test_device_file_mode_with_type_bits():
    # `podman run --privileged` copies the host's devices with Go's full
    # st_mode: 0o20644 (S_IFCHR | 0644) for a char device.
    assert _with_device(fileMode=0o20644).file_mode == 0o644
    assert _with_device(type="b", fileMode=0o60600).file_mode == 0o600
    assert _with_device(fileMode=0o644).file_mode == 0o644


@pytest.mark.parametrize("device", [{"fileMode": 0o60644},  # block bits on a char device
                                    {"type": "p", "fileMode": 0o20644},
                                    {"fileMode": 0o120777}])
def test_device_file_mode_with_other_type_bits(device):
    with pytest.raises(InvalidArgument, match=r"linux.devices\[0\].fileMode"):
        _with_device(**device)
