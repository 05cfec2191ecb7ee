"""The image store over the metadata layer: pull_image from a real
docker-registry, configs per platform, tag, rm and GC."""
import json

import pytest

from pyrun.errdefs import InvalidArgument, NotFound
from pyrun.images.store import ImageStore, parse_image_config, pull_image
from pyrun.images.unpack import SNAPSHOT_REF_LABEL, chain_ids
from pyrun.metadata import DB, check, collect
from pyrun.registry import Client, Hosts
from pyrun.snapshots import registry as snapshotters
from registry_fixtures import OCILayout, sha256, skopeo, tar_layer

pytestmark = pytest.mark.root

RICH_CONFIG = {
    "Entrypoint": ["/bin/app", "--serve"], "Cmd": ["--port", "80"],
    "Env": ["PATH=/usr/bin:/bin", "MODE=test"], "WorkingDir": "/srv", "User": "1000:1000",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Volumes": {"/data": {}},
    "Labels": {"org.example.role": "test"}, "StopSignal": "SIGQUIT",
}


def build_image(layout, layers, arch="amd64", config=None):
    """Like OCILayout.image with a chosen ``config`` section."""
    descs, diff_ids = [], []
    for files in layers:
        gz, diff_id = tar_layer(files)
        descs.append(layout.blob(gz, layout.LAYER))
        diff_ids.append(diff_id)
    plat = {"architecture": arch, "os": "linux"}
    cfg = json.dumps({**plat, "config": config or {"Cmd": ["/bin/sh"]},
                      "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": layout.MANIFEST,
                           "config": layout.blob(cfg, layout.CONFIG), "layers": descs}).encode()
    return {**layout.blob(manifest, layout.MANIFEST), "platform": plat}, diff_ids


BASE = {"etc/os-release": b"ID=base\n"}


@pytest.fixture
def db(safe_tmp):
    backend = snapshotters.new("overlayfs", str(safe_tmp / "snapshots"))
    d = DB(str(safe_tmp / "meta"), snapshotters={"overlayfs": backend})
    try:
        yield d
    finally:
        d.close()
        backend.close()


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory):
    """Images in the registry: ``multi`` (an index, amd64 + arm64, rich
    config), ``one`` and ``two`` (sharing their base layer)."""
    work = tmp_path_factory.mktemp("images-store")
    layout = OCILayout(str(work / "layout"))
    amd, amd_ids = build_image(layout, [BASE, {"bin/app": b"amd64"}], config=RICH_CONFIG)
    arm, _ = build_image(layout, [BASE, {"bin/app": b"arm64"}], arch="arm64")
    layout.tag(layout.index([amd, arm]), "multi")
    one, one_ids = build_image(layout, [BASE, {"one": b"1"}])
    two, two_ids = build_image(layout, [BASE, {"two": b"2"}, {"two-b": b"2b"}])
    layout.tag(one, "one")
    layout.tag(two, "two")
    refs = {}
    for tag in ("multi", "one", "two"):
        refs[tag] = f"{registry.host}/pyrun-test/images-store:{tag}"
        skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout.path}:{tag}",
               f"docker://{refs[tag]}")
    return refs, {"multi": amd_ids, "one": one_ids, "two": two_ids}


def client(registry):
    return Client(hosts=Hosts.plain_http(registry.host))


def committed(db):
    keys = []
    db.snapshotter("ns", "overlayfs").walk(lambda i: keys.append(i.name))
    return set(keys)


def test_pull_image_records_unpacks_and_reads_config(db, registry, pushed):
    refs, ids = pushed
    pulled = pull_image(db, "ns", refs["multi"], client=client(registry), platform="linux/amd64")
    assert pulled.image.name == refs["multi"]
    assert pulled.image.target["mediaType"] == OCILayout.INDEX
    assert pulled.chain_id == chain_ids(ids["multi"])[-1]
    assert committed(db) == set(chain_ids(ids["multi"]))
    assert db.leases("ns").list() == []            # the pull's lease is gone

    images = ImageStore(db, "ns")
    cfg = images.config(refs["multi"], "linux/amd64")
    assert cfg.entrypoint == ("/bin/app", "--serve") and cfg.cmd == ("--port", "80")
    assert cfg.env == ("PATH=/usr/bin:/bin", "MODE=test")
    assert (cfg.working_dir, cfg.user, cfg.stop_signal) == ("/srv", "1000:1000", "SIGQUIT")
    assert cfg.exposed_ports == ("53/udp", "80/tcp") and cfg.volumes == ("/data",)
    assert cfg.labels == {"org.example.role": "test"}
    assert str(cfg.platform) == "linux/amd64" and cfg.diff_ids == tuple(ids["multi"])
    # The config carries the snapshot gc label, so GC keeps the unpacked chain.
    info = db.content_store("ns").info(cfg.digest)
    assert info.labels[SNAPSHOT_REF_LABEL + "overlayfs"] == pulled.chain_id
    collect(db)
    assert committed(db) == set(chain_ids(ids["multi"]))
    # Only amd64 was pulled: arm64's manifest is not in the store.
    with pytest.raises(NotFound, match="no manifest for platform linux/arm64"):
        images.config(refs["multi"], "linux/arm64")
    assert check(db.root, snapshotters=db.snapshotters) == []


def test_other_platform_and_tag(db, registry, pushed):
    refs, _ = pushed
    pull_image(db, "ns", refs["multi"], client=client(registry), platform="linux/arm64", unpack=False)
    images = ImageStore(db, "ns")
    assert str(images.config(refs["multi"], "linux/arm64").platform) == "linux/arm64/v8"
    assert images.config(refs["multi"], "linux/arm64").cmd == ("/bin/sh",)
    images.tag(refs["multi"], "local/copy:1")
    assert images.get("local/copy:1").target == images.get(refs["multi"]).target
    assert committed(db) == set()                  # unpack=False
    with pytest.raises(NotFound):
        images.tag("nosuch:1", "x:1")


def test_rm_then_gc_frees_only_what_no_other_image_uses(db, registry, pushed):
    refs, ids = pushed
    for tag in ("one", "two"):
        pull_image(db, "ns", refs[tag], client=client(registry))
    images = ImageStore(db, "ns")
    two_cfg = images.config(refs["two"])
    one_blobs = {i.digest for i in db.content_store("ns").list()}
    collect(db)
    assert committed(db) == set(chain_ids(ids["one"])) | set(chain_ids(ids["two"]))

    images.remove(refs["one"])
    collect(db)
    # The shared base layer's snapshot and blob stay; one's own go.
    assert committed(db) == set(chain_ids(ids["two"]))
    left = {i.digest for i in db.content_store("ns").list()}
    assert two_cfg.digest in left and len(left) < len(one_blobs)
    assert sha256(tar_layer(BASE)[0]) in left

    images.remove(refs["two"])
    collect(db)
    assert committed(db) == set()
    assert db.content_store("ns").list() == [] and db.content.list() == []
    with pytest.raises(NotFound):
        images.remove(refs["two"])


def test_pull_image_refuses_unknown_snapshotter_before_download(db, registry, pushed):
    refs, _ = pushed
    with pytest.raises(NotFound, match="snapshotter 'nosuch'"):
        pull_image(db, "ns", refs["one"], client=client(registry), snapshotter="nosuch")
    assert db.content.list() == []


def test_parse_image_config():
    cfg = parse_image_config(json.dumps({"os": "linux", "architecture": "x86_64"}).encode(), "d")
    assert str(cfg.platform) == "linux/amd64" and cfg.cmd == () and cfg.labels == {}
    with pytest.raises(InvalidArgument, match="config.Cmd must be a list of strings"):
        parse_image_config(b'{"config": {"Cmd": "sh"}}', "d")
    with pytest.raises(InvalidArgument, match="config.ExposedPorts must be an object"):
        parse_image_config(b'{"config": {"ExposedPorts": ["80/tcp"]}}', "d")
    with pytest.raises(InvalidArgument, match="is not JSON"):
        parse_image_config(b"{", "d")


def test_failed_unpack_records_nothing_and_gc_cleans_up(db, registry, safe_tmp):
    # The config's diff_ids do not match the second layer: unpack fails
    # while the layers download; no image, no lease, and GC leaves nothing.
    layout = OCILayout(str(safe_tmp / "bad-layout"))
    gz0, id0 = tar_layer(BASE)
    gz1, _ = tar_layer({"x": b"x"})
    layers = [layout.blob(gz0, layout.LAYER), layout.blob(gz1, layout.LAYER)]
    cfg = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": [id0, sha256(b"wrong")]}}).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": layout.MANIFEST,
                           "config": layout.blob(cfg, layout.CONFIG), "layers": layers}).encode()
    layout.tag(layout.blob(manifest, layout.MANIFEST), "bad")
    ref = f"{registry.host}/pyrun-test/images-store-bad:1"
    skopeo("copy", "--dest-tls-verify=false", f"oci:{layout.path}:bad", f"docker://{ref}")
    with pytest.raises(InvalidArgument, match=f"layer {layers[1]['digest']}: .*diffID mismatch"):
        pull_image(db, "ns", ref, client=client(registry))
    assert ImageStore(db, "ns").list() == [] and db.leases("ns").list() == []
    collect(db)
    assert committed(db) == set() and db.content.list() == []
