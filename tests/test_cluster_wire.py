"""The replicas' read links (fpmatch.cluster.wire): identification's calls go over mutual TLS to each
replica, only the service's own certificate opens one, hostile frames from a certified peer get
errors and change nothing, and a broken link leaves reads on Ray with the same answers."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import msgpack
import pytest

import service_support as ss
from cluster_support import answers, open_sharded, open_single, populate, ray_runtime  # noqa: F401
from fpmatch.cluster.wire import MAX_REQUEST_FRAME, ReadClient, read_frame, tls_context, write_frame
from fpmatch.errors import InvalidInputError
from fpmatch.he.certs import MemoryCA

pytestmark = pytest.mark.usefixtures("ray_runtime")

NAMES = [f"p{i}" for i in range(30)]


def _probes() -> dict[str, Any]:
    probes = {f"{name}#1": ss.sample(name, 1) for name in NAMES[::3]}
    probes.update({f"stranger-{i}": ss.stranger(i) for i in range(3)})
    return probes


def _links(deployment: ss.Deployment) -> list[ReadClient]:
    return list(deployment.service.replicas._links.values())


def _answered(deployment: ss.Deployment) -> int:
    return sum(link.calls for link in _links(deployment))


@pytest.mark.parametrize("scheme", ["hash", "hybrid"])
def test_reads_go_over_the_links_with_the_answers_of_ray_and_of_a_single_service(tmp_path: Path, scheme: str) -> None:
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "linked", clock, scheme, shards=2, replicas=2) as linked, open_sharded(
        tmp_path / "ray", clock, scheme, shards=2, replicas=1, direct_reads=False
    ) as over_ray, open_single(tmp_path / "single", clock, scheme) as single:
        populate([linked, over_ray, single], NAMES)
        assert linked.service.cluster_status()["direct_reads"] == 4
        assert over_ray.service.cluster_status()["direct_reads"] == 0
        before = _answered(linked)
        expected = answers(single, _probes())
        assert answers(linked, _probes()) == expected
        assert answers(over_ray, _probes()) == expected
        assert _answered(linked) - before >= len(_probes())  # at least one call per identification
        assert not _links(over_ray)


def _address(deployment: ss.Deployment) -> tuple[ReadClient, tuple[str, int]]:
    link = _links(deployment)[0]
    return link, link.address


def _handshake(address: tuple[str, int], context: ssl.SSLContext, name: str) -> ssl.SSLSocket:
    raw = socket.create_connection(address, timeout=10)
    conn = context.wrap_socket(raw, server_hostname=name)
    # TLS 1.3 sends the server's verdict on the client certificate after the handshake: a read sees it
    write_frame(conn, msgpack.packb(["ping", []]))
    return conn


def test_only_the_services_certificate_opens_a_link(tmp_path: Path) -> None:
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hash", shards=1, replicas=1) as svc:
        populate([svc], NAMES)
        link, address = _address(svc)
        name = link._name
        # a certificate of another CA, and no certificate at all
        stranger = MemoryCA("another CA")
        cert, key = stranger.issue("intruder", client=True)
        trusted_ca = svc.service.replicas._ca.pem
        for context in (tls_context(cert, key, trusted_ca, server=False), _no_client_cert(trusted_ca)):
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                conn = _handshake(address, context, name)
                if read_frame(conn, 1 << 20) is None:
                    raise ConnectionError("closed")
        # a replica certified by another CA is refused by the service's end
        fake_ca = MemoryCA("fake replicas")
        cert, key = fake_ca.issue("service", client=True)
        with pytest.raises(ssl.SSLError):
            _handshake(address, tls_context(cert, key, fake_ca.pem, server=False), name)
        # plain TCP, not TLS
        with socket.create_connection(address, timeout=10) as raw:
            raw.sendall(struct.pack("<I", 5) + b"hello")
            try:
                got = raw.recv(100)
            except ConnectionResetError:
                got = b""
            assert got == b"" or got.startswith(b"\x15")  # closed, or a TLS alert and then closed
        before = link.calls
        assert svc.identify(ss.sample("p3", 1), "entry")[0].subject == "p3"
        assert link.calls > before


def _no_client_cert(ca: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=ca.decode("ascii"))
    return context


def test_hostile_frames_from_a_certified_peer_get_errors_and_change_nothing(tmp_path: Path) -> None:
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=1, replicas=1) as svc:
        populate([svc], NAMES)
        expected = answers(svc, _probes())
        link, address = _address(svc)
        cert, key = svc.service.replicas._ca.issue("peer", client=True)
        context = tls_context(cert, key, svc.service.replicas._ca.pem, server=False)

        def ask(payload: bytes) -> Any:
            with _handshake(address, context, link._name) as conn:
                assert msgpack.unpackb(read_frame(conn, 1 << 20)) == [0, 30]  # the ping
                write_frame(conn, payload)
                reply = read_frame(conn, 1 << 26)
                return None if reply is None else msgpack.unpackb(reply, raw=False)

        values = b"\x00" * 8 * ss.DIM
        for payload in [
            b"\xc1 not msgpack",
            msgpack.packb({"method": "nearest"}),
            msgpack.packb(["stage_remove", [["p0"]]]),  # writes go over Ray only
            msgpack.packb(["replay", [["remove", ["p0"], [1], [0]], []]]),
            msgpack.packb(["__init__", [{}, "flat", {}]]),
            msgpack.packb(["read", ["ping", []]]),
            msgpack.packb(["nearest", ["code", 7]]),
            msgpack.packb(["nearest", [b"code", b"\x00" * 4, True]]),
            msgpack.packb(["nearest", [b"\x00", b"\x00" * 4, 3]]),  # a code of the wrong length
            msgpack.packb(["nearest", [b"\x00" * 128, b"\x00" * 4099, 3]]),  # reliabilities cut short
            msgpack.packb(["encrypted_scores", [[10**9], values]]),  # no such subject
            msgpack.packb(["encrypted_scores", [["p0"], values]]),
            msgpack.packb(["encrypted_scores", [[1], values[:7]]]),
            msgpack.packb(["encrypted_scores", [[1], values[:8]]]),  # values of the wrong dimension
            msgpack.packb(["encrypted_scores", [[], values]]),
            msgpack.packb(["decide_codes", ["p0", b"junk", 0.5]]),  # 1:1 under encryption is the key holder's
            msgpack.packb(["decide_codes", ["nobody", b"junk", "high"]]),
            msgpack.packb([[[[[[[[[[]]]]]]]]], []]),
        ]:
            reply = ask(payload)
            assert reply is not None and reply[0] == 1 and reply[1] == "InvalidInputError", (payload, reply)
        # a frame over the limit ends the connection without reading it
        with _handshake(address, context, link._name) as conn:
            read_frame(conn, 1 << 20)
            conn.sendall(struct.pack("<I", MAX_REQUEST_FRAME + 1))
            assert read_frame(conn, 1 << 20) is None
        assert answers(svc, _probes()) == expected
        assert svc.check_integrity().ok


def test_a_broken_link_leaves_reads_on_ray_until_a_new_one_opens(tmp_path: Path, ray_runtime: Any, caplog: Any) -> None:  # noqa: F811
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hybrid", shards=2, replicas=1) as svc:
        populate([svc], NAMES)
        expected = answers(svc, _probes())
        replicas = svc.service.replicas
        ray_runtime.get([handle.stop_reads.remote() for shard in range(2) for handle in replicas.handles(shard)])
        assert answers(svc, _probes()) == expected
        assert replicas.status()["direct_reads"] == 0
        assert [replicas.live(shard) for shard in range(2)] == [1, 1]  # a broken link is not a lost replica
        assert "read link" in caplog.text
        # once RELINK_AFTER has passed, the next read asks the replica to listen again
        replicas._relink_at = {handle: 0.0 for handle in replicas._relink_at}
        assert answers(svc, _probes()) == expected
        assert replicas.status()["direct_reads"] == 2
        before = _answered(svc)
        assert answers(svc, _probes()) == expected and _answered(svc) > before


def test_errors_raised_by_a_replica_come_back_as_the_same_class(tmp_path: Path) -> None:
    clock = ss.ManualClock()
    with open_sharded(tmp_path / "s", clock, "hash", shards=1, replicas=1) as svc:
        populate([svc], NAMES)
        replicas = svc.service.replicas
        with pytest.raises(InvalidInputError):
            replicas.call(0, "nearest", b"\x00", b"\x00\x00\x80\x3f", 3)  # a code of the wrong length
        assert svc.identify(ss.sample("p4", 1), "entry")[0].subject == "p4"
