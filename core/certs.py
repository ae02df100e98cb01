"""Certificates and keys for Flower's TLS and SuperNode authentication.

What ``fl-app fl certs`` writes under ``fl.security.certs_dir``::

    ca.crt, ca.key                 a private certificate authority (keep ca.key off the devices)
    superlink.crt, superlink.key   the SuperLink's certificate for fl.security.hostnames, signed by the CA
    supernodes/device-<id>.key     one SuperNode's private key (OpenSSH format; it goes to that device only)
    supernodes/device-<id>.pub     its public key, registered with `flwr supernode register`

All keys are EC P-384 (what Flower's SuperNode authentication expects), made
with ``cryptography`` (a dependency of flwr). Private keys are written with
mode 600. Existing files are kept (so running it again changes nothing) unless
``force`` is given; a SuperLink certificate that no longer covers the
configured host names is remade.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class CertPaths:
    """Where each file lives under a certificates folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def superlink_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def superlink_key(self) -> Path:
        return self.root / "superlink.key"

    def supernode_key(self, device: int) -> Path:
        return self.root / "supernodes" / f"device-{device}.key"

    def supernode_public_key(self, device: int) -> Path:
        return self.root / "supernodes" / f"device-{device}.pub"


def make(root: Path, hostnames: Sequence[str], devices: Iterable[int], days: int = 365,
         force: bool = False) -> list[Path]:
    """Make whatever is missing under ``root``; return the files written."""
    paths = CertPaths(root)
    written: list[Path] = []
    (root / "supernodes").mkdir(parents=True, exist_ok=True)
    if force or not (paths.ca_cert.exists() and paths.ca_key.exists()):
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-iot certificate authority")])
        cert = (_builder(name, name, key.public_key(), days)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .sign(key, hashes.SHA384()))
        written += [_write_key(paths.ca_key, key), _write(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM))]
        force = True  # a new CA invalidates the SuperLink certificate signed by the old one
    if force or not paths.superlink_cert.exists() or set(covered_names(paths.superlink_cert)) != set(hostnames):
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
        cert = (_builder(subject, ca_cert.subject, key.public_key(), days)
                .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA384()))
        written += [_write_key(paths.superlink_key, key),
                    _write(paths.superlink_cert, cert.public_bytes(serialization.Encoding.PEM))]
    for device in devices:
        private, public = paths.supernode_key(device), paths.supernode_public_key(device)
        if force or not (private.exists() and public.exists()):
            key = ec.generate_private_key(ec.SECP384R1())
            written.append(_write(private, key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.OpenSSH,
                                                             serialization.NoEncryption()), private=True))
            written.append(_write(public, key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                        serialization.PublicFormat.OpenSSH)))
    return written


def covered_names(cert_file: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))]


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate small clock skew
            .not_valid_after(now + datetime.timedelta(days=days)))


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    return _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()), private=True)


def _write(path: Path, content: bytes, private: bool = False) -> Path:
    """Write via a temporary file; private files are created with mode 600 (never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
    os.replace(tmp, path)
    return path
