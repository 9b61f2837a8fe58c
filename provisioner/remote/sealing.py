"""Sealing secrets to a host's key, so that not even stdin carries them in clear.

The gather returns the host's RSA public key as .NET exports it (base64 modulus and exponent).
A secret is sealed with RSA-OAEP and SHA-1 (the padding Windows PowerShell 5.1's
``RSACryptoServiceProvider.Decrypt($data, $true)`` opens) and sent with a fresh salted HMAC that
the host stores beside it; the next plan compares fingerprints, never values.
"""

from __future__ import annotations

import base64
import os

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from provisioner.errors import ProvisionerError
from provisioner.remote.contract import Fingerprint, SealedSecret, SealKey
from provisioner.secrets import Secret

MAX_SECRET_BYTES = 190  # RSA-2048 with OAEP/SHA-1 takes at most 214 bytes; keep a margin


def public_key(key: SealKey) -> rsa.RSAPublicKey:
    modulus = int.from_bytes(base64.b64decode(key.modulus), "big")
    exponent = int.from_bytes(base64.b64decode(key.exponent), "big")
    return rsa.RSAPublicNumbers(exponent, modulus).public_key()


def seal(secret: Secret, key: SealKey) -> SealedSecret:
    value = secret.reveal().encode("utf-8")
    if len(value) > MAX_SECRET_BYTES:
        raise ProvisionerError(f"a secret may be at most {MAX_SECRET_BYTES} bytes long")
    ciphertext = public_key(key).encrypt(
        value,
        padding.OAEP(
            mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None
        ),
    )
    salt = os.urandom(16)
    return SealedSecret(
        sealed=base64.b64encode(ciphertext).decode("ascii"),
        fingerprint=Fingerprint(salt=salt.hex(), hmac=secret.fingerprint(salt)),
    )
