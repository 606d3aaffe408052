"""A throw-away PKI for the TLS tests, generated with ``cryptography`` (no openssl command line).

``make_pki(directory)`` writes PEM files for:

- a CA, a server certificate it signs for ``127.0.0.1`` (IP SAN) and ``localhost`` (DNS SAN), and a
  client certificate it signs (extended key usage clientAuth);
- a server certificate from the same CA for another name only (``broker.invalid``): trusted, but
  not for the address the gateway connects to;
- a second, unrelated CA (with no certificates under it): what a gateway trusts by mistake.

Keys are ECDSA P-256 (fast to make). The certificates carry what OpenSSL's strict verification
(``VERIFY_X509_STRICT``, on by default in Python 3.13's ``ssl.create_default_context``) requires:
basic constraints, key usage, subject and authority key identifiers.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files ``make_pki`` wrote."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    misnamed_server_cert: Path  # from ca_cert, for broker.invalid only: not for 127.0.0.1
    misnamed_server_key: Path
    other_ca_cert: Path  # an unrelated CA: trusting it instead of ca_cert must fail verification


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pumpgw tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a leaf signs handshakes (ECDSA) and agrees keys (ECDH)."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not ca,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str, now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    common_name: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    now: datetime.datetime,
    *,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(directory: Path, *, client_name: str = "gw-test") -> Pki:
    """Generate the certificates and keys described above into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca, ca_key = _ca("pumpgw test CA", now)
    server, server_key = _leaf(
        "localhost", ca, ca_key, now, usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )  # fmt: skip
    client, client_key = _leaf(client_name, ca, ca_key, now, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    misnamed, misnamed_key = _leaf(
        "broker.invalid", ca, ca_key, now, usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("broker.invalid")],
    )  # fmt: skip
    other_ca, _ = _ca("an unrelated CA", now)
    pki = Pki(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
        misnamed_server_cert=directory / "misnamed-server.pem",
        misnamed_server_key=directory / "misnamed-server.key",
        other_ca_cert=directory / "other-ca.pem",
    )
    _write_cert(ca, pki.ca_cert)
    _write_cert(server, pki.server_cert)
    _write_key(server_key, pki.server_key)
    _write_cert(client, pki.client_cert)
    _write_key(client_key, pki.client_key)
    _write_cert(misnamed, pki.misnamed_server_cert)
    _write_key(misnamed_key, pki.misnamed_server_key)
    _write_cert(other_ca, pki.other_ca_cert)
    return pki
