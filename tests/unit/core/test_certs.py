"""The certificates and keys for Flower's TLS and SuperNode authentication (core/certs.py)."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from core import certs


def test_makes_a_ca_a_server_certificate_and_device_keys(tmp_path: Path) -> None:
    written = certs.make(tmp_path, ["localhost", "127.0.0.1"], [3, 7])
    paths = certs.CertPaths(tmp_path)
    assert len(written) == 8
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.superlink_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    assert sorted(certs.covered_names(paths.superlink_cert)) == ["127.0.0.1", "localhost"]
    for device in (3, 7):
        private = serialization.load_ssh_private_key(paths.supernode_key(device).read_bytes(), password=None)
        public = serialization.load_ssh_public_key(paths.supernode_public_key(device).read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
        assert paths.supernode_key(device).stat().st_mode & 0o777 == 0o600
    assert paths.ca_key.stat().st_mode & 0o777 == 0o600


def test_keeps_what_exists_and_remakes_only_what_changed(tmp_path: Path) -> None:
    paths = certs.CertPaths(tmp_path)
    certs.make(tmp_path, ["localhost"], [1])
    ca_before, key_before = paths.ca_cert.read_bytes(), paths.supernode_key(1).read_bytes()
    assert certs.make(tmp_path, ["localhost"], [1]) == []  # idempotent
    # A new host name: only the SuperLink certificate is remade, still signed by the same CA.
    assert certs.make(tmp_path, ["localhost", "superlink.example.org"], [1, 2]) == [
        paths.superlink_key, paths.superlink_cert, paths.supernode_key(2), paths.supernode_public_key(2)]
    assert paths.ca_cert.read_bytes() == ca_before and paths.supernode_key(1).read_bytes() == key_before
    assert "superlink.example.org" in certs.covered_names(paths.superlink_cert)
    # --force: everything new.
    certs.make(tmp_path, ["localhost"], [1], force=True)
    assert paths.ca_cert.read_bytes() != ca_before and paths.supernode_key(1).read_bytes() != key_before
