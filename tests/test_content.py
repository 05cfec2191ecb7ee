"""The local content store: digests, writers, commit, readers, locking."""
import hashlib
import os
import subprocess
import sys

import pytest

from pyrun.content import ContentStore, Info, digester, parse_digest, write_blob
from pyrun.content.digest import digest_bytes
from pyrun.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

DATA = b"layer bytes " * 5000
DIGEST = digest_bytes(DATA)
DESC = {"mediaType": "application/octet-stream", "digest": DIGEST, "size": len(DATA)}


def tree(root):
    """Every path below ``root`` with its size (to prove nothing changed)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = os.lstat(p).st_size if name in files else None
    return out


@pytest.fixture
def store(tmp_path):
    return ContentStore(str(tmp_path / "content"))


def test_parse_digest_accepts_registered_algorithms():
    for alg in ("sha256", "sha384", "sha512"):
        hexpart = hashlib.new(alg, b"x").hexdigest()
        assert parse_digest(f"{alg}:{hexpart}") == (alg, hexpart)
        assert digester(alg).name == alg


@pytest.mark.parametrize("bad, why", [
    ("sha256:abc", "64 lower-case hex"),
    ("sha256:" + "A" * 64, "64 lower-case hex"),
    ("md5:" + "a" * 32, "unsupported algorithm 'md5'"),
    ("nocolon", "missing '<algorithm>:'"),
    (42, "not a string"),
])
def test_parse_digest_names_bad_string(bad, why):
    with pytest.raises(InvalidArgument) as e:
        parse_digest(bad)
    assert repr(bad) in str(e.value) and why in str(e.value)


def test_digester_unknown_algorithm():
    with pytest.raises(InvalidArgument, match="'crc32'"):
        digester("crc32")


def test_write_commit_info_read(store):
    with store.writer("ref-1", total=len(DATA), expected=DIGEST) as w:
        for i in range(0, len(DATA), 7000):
            w.write(DATA[i:i + 7000])
        assert w.digest() == DIGEST
        assert w.status().offset == len(DATA)
        assert w.commit(len(DATA), DIGEST, labels={"a": "b"}) == DIGEST
    info = store.info(DIGEST)
    assert (info.digest, info.size, info.labels) == (DIGEST, len(DATA), {"a": "b"})
    alg, hexpart = parse_digest(DIGEST)
    path = os.path.join(store.root, "blobs", alg, hexpart)
    assert os.stat(path).st_mode & 0o777 == 0o444
    assert store.list_statuses() == []
    with store.reader(DIGEST) as r:
        assert r.size == len(DATA)
        assert r.read_at(5, 6) == DATA[6:11]
        assert r.read(12) == DATA[:12]
        r.seek(-3, os.SEEK_END)
        assert r.read() == DATA[-3:]
        assert r.tell() == len(DATA)


def test_commit_sha512(store):
    expected = "sha512:" + hashlib.sha512(DATA).hexdigest()
    with store.writer("ref-512") as w:
        w.write(DATA)
        w.commit(len(DATA), expected)
    assert store.info(expected).size == len(DATA)


def test_commit_wrong_size_changes_nothing(store):
    w = store.writer("ref-1", expected=DIGEST)
    w.write(DATA[:100])
    before = tree(store.root)
    with pytest.raises(FailedPrecondition) as e:
        w.commit(len(DATA), DIGEST)
    assert "unexpected size 100, expected 60000" in str(e.value) and "ref-1" in str(e.value)
    assert tree(store.root) == before
    assert w.status().offset == 100  # still open and resumable
    w.close()


def test_commit_wrong_digest_changes_nothing(store):
    other = digest_bytes(b"other")
    with store.writer("ref-1") as w:
        w.write(DATA)
        before = tree(store.root)
        with pytest.raises(FailedPrecondition) as e:
            w.commit(len(DATA), other)
        assert f"unexpected digest {DIGEST}, expected {other}" in str(e.value)
        assert tree(store.root) == before


@pytest.mark.parametrize("call", [
    lambda s: s.info("sha256:nothex"),
    lambda s: s.delete("sha999:" + "a" * 64),
    lambda s: s.reader("bogus"),
    lambda s: s.writer("r", expected="sha256:short"),
    lambda s: s.writer(""),
    lambda s: s.writer("r", total=-1),
])
def test_bad_input_changes_nothing(store, call):
    before = tree(store.root)
    with pytest.raises(InvalidArgument):
        call(store)
    assert tree(store.root) == before


def test_missing_blob_is_not_found(store):
    with pytest.raises(NotFound, match=DIGEST):
        store.info(DIGEST)
    with pytest.raises(NotFound, match=DIGEST):
        store.delete(DIGEST)
    with pytest.raises(NotFound, match="ref nope"):
        store.status("nope")
    with pytest.raises(NotFound, match="ref nope"):
        store.abort("nope")


def test_existing_blob(store):
    write_blob(store, "a", DATA, DESC)
    with pytest.raises(AlreadyExists, match=DIGEST):
        store.writer("b", expected=DIGEST)
    # Without an expected digest the clash shows at commit, which removes
    # the ingest (containerd's Commit).
    w = store.writer("b")
    w.write(DATA)
    with pytest.raises(AlreadyExists, match=DIGEST):
        w.commit(len(DATA), DIGEST)
    assert store.list_statuses() == []
    assert write_blob(store, "c", DATA, DESC) == DIGEST  # exists: success


def test_resume_after_close(store):
    w = store.writer("ref-r", total=len(DATA), expected=DIGEST)
    w.write(DATA[:1000])
    w.close()
    st = store.status("ref-r")
    assert (st.ref, st.offset, st.total, st.expected) == ("ref-r", 1000, len(DATA), DIGEST)
    with store.writer("ref-r") as w:
        assert w.status().offset == 1000
        w.write(DATA[1000:])
        w.commit(len(DATA), DIGEST)
    assert store.info(DIGEST).size == len(DATA)


def test_write_blob_resumes_partial_ingest(store):
    with store.writer("ref-p") as w:
        w.write(DATA[:500])
    write_blob(store, "ref-p", DATA, DESC)
    with store.reader(DIGEST) as r:
        assert r.read() == DATA


def test_write_blob_bad_bytes_resets_ingest(store):
    with pytest.raises(FailedPrecondition, match="unexpected digest"):
        write_blob(store, "ref-x", b"x" * len(DATA), DESC)
    assert store.status("ref-x").offset == 0
    write_blob(store, "ref-x", DATA, DESC)


def test_truncate_restarts(store):
    with store.writer("ref-t") as w:
        w.write(b"garbage")
        w.truncate(0)
        w.write(DATA)
        w.commit(len(DATA), DIGEST)
    with pytest.raises(InvalidArgument, match="cannot truncate"):
        with store.writer("ref-t2") as w:
            w.truncate(5)


def test_ref_locked_in_process(store):
    w = store.writer("ref-l")
    with pytest.raises(Unavailable, match="ref ref-l locked"):
        store.writer("ref-l")
    with pytest.raises(Unavailable, match="ref ref-l locked"):
        store.abort("ref-l")
    assert store.is_locked("ref-l")
    w.close()
    assert not store.is_locked("ref-l")
    store.abort("ref-l")
    assert store.list_statuses() == []


def test_ref_locked_across_processes(store):
    code = ("import sys; from pyrun.content import ContentStore\n"
            "w = ContentStore(sys.argv[1]).writer('shared-ref'); w.write(b'abc')\n"
            "print('locked', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, store.root], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert p.stdout.readline() == b"locked\n"
        with pytest.raises(Unavailable, match="ref shared-ref locked"):
            store.writer("shared-ref")
    finally:
        p.stdin.close()
        p.wait()
    # The holder is gone: the lock went with it and the data stays.
    with store.writer("shared-ref") as w:
        assert w.status().offset == 3


def test_labels_update_fieldpaths(store):
    write_blob(store, "a", DATA, DESC, labels={"a": "1", "b": "2"})
    info = store.update(Info(DIGEST, labels={"b": "3", "c": "4"}), ["labels.b"])
    assert info.labels == {"a": "1", "b": "3"}
    info = store.update(Info(DIGEST, labels={}), ["labels.a"])
    assert info.labels == {"b": "3"}
    assert store.update(Info(DIGEST, labels={"z": "9"})).labels == {"z": "9"}
    with pytest.raises(InvalidArgument, match="cannot update field 'size'"):
        store.update(Info(DIGEST, labels={}), ["size"])
    with pytest.raises(InvalidArgument, match="maximum size"):
        store.update(Info(DIGEST, labels={"k": "v" * 5000}))


def test_walk_filters_and_delete(store):
    write_blob(store, "a", DATA, DESC, labels={"kind": "layer"})
    small = b"{}"
    write_blob(store, "b", small, {"digest": digest_bytes(small), "size": 2},
               labels={"kind": "config", "containerd.io/gc.root": "x"})
    assert [i.size for i in store.list(['labels.kind==layer'])] == [len(DATA)]
    assert [i.size for i in store.list(['labels."containerd.io/gc.root"'])] == [2]
    assert len(store.list(['labels.kind==layer', 'labels.kind==config'])) == 2
    assert len(store.list()) == 2
    with pytest.raises(InvalidArgument, match="filter"):
        store.list(["labels.==x"])
    r = store.reader(DIGEST)
    store.delete(DIGEST)
    assert r.read() == DATA  # an open reader survives the delete
    r.close()
    with pytest.raises(NotFound):
        store.info(DIGEST)


def test_list_statuses_filters(store):
    store.writer("one").close()
    store.writer("two", expected=DIGEST).close()
    assert sorted(s.ref for s in store.list_statuses()) == ["one", "two"]
    assert [s.ref for s in store.list_statuses(["ref==two"])] == ["two"]
    assert [s.ref for s in store.list_statuses([f"expected=={DIGEST}"])] == ["two"]


def test_resume_after_commit_cut_short_leaves_blob_intact(store):
    w = store.writer("ref-c")
    w.write(DATA)
    w.close()
    # What a commit killed between linking into blobs/ and removing the
    # ingest leaves behind: the blob and the ingest data share an inode.
    os.makedirs(os.path.dirname(store.blob_path(DIGEST)), exist_ok=True)
    os.link(os.path.join(store._ingest_path("ref-c"), "data"), store.blob_path(DIGEST))
    with store.writer("ref-c") as w:
        assert w.status().offset == len(DATA)
        w.truncate(0)  # a client restarting its download
        w.write(b"other bytes")
    with store.reader(DIGEST) as r:
        assert r.read() == DATA
