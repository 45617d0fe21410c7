"""The cryptography of a secure round: X25519 key pairs and agreement (HKDF-SHA256 on the shared
secret, bound to the round), AES-256-GCM encryption of the shares a client sends another through
the server, and the mask generator (AES-256-CTR keystream from a 32-byte seed, as uint32 words).
Keys are fresh every round, so a seed or key never serves two rounds."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

KEY_BYTES = 32  # X25519 public and private keys, seeds
NONCE_BYTES = 12
TAG_BYTES = 16
BLOCK_WORDS = 1 << 18  # mask words generated at a time (1 MiB)


class CryptoError(ValueError):
    """A peer's key or ciphertext is not valid (bad point, wrong tag, wrong size)."""


class KeyPair:
    """An X25519 key pair, fresh for one round."""

    def __init__(self, private: X25519PrivateKey | None = None) -> None:
        self.private = private or X25519PrivateKey.generate()
        self.public = self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        if len(raw) != KEY_BYTES:
            raise CryptoError(f"an X25519 private key is {KEY_BYTES} bytes, got {len(raw)}")
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def agree(self, peer_public: bytes, purpose: bytes, context: bytes) -> bytes:
        """A 32-byte key both ends derive: HKDF-SHA256 of the X25519 shared secret, bound to
        ``purpose`` (mask seed or share key) and ``context`` (the round)."""
        if len(peer_public) != KEY_BYTES:
            raise CryptoError(f"an X25519 public key is {KEY_BYTES} bytes, got {len(peer_public)}")
        try:
            shared = self.private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # a low-order point: the shared secret would be all zeros
            raise CryptoError(f"unusable X25519 public key ({exc})") from None
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None,
                    info=b"tff-k8s secagg v1 " + purpose + b" " + context)
        return hkdf.derive(shared)


def round_context(round_number: int, task_id: str) -> bytes:
    return f"round={round_number} task={task_id}".encode()


def share_ad(round_number: int, task_id: str, sender: int, recipient: int) -> bytes:
    """The associated data a share ciphertext is bound to: a share moved to another round, task,
    sender or recipient fails to decrypt."""
    return round_context(round_number, task_id) + f" from={sender} to={recipient}".encode()


def ciphertext_bytes(plaintext_bytes: int) -> int:
    return NONCE_BYTES + plaintext_bytes + TAG_BYTES


def encrypt(key: bytes, plaintext: bytes, ad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt(key: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    if len(ciphertext) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("ciphertext too short")
    try:
        return AESGCM(key).decrypt(ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:], ad)
    except InvalidTag:
        raise CryptoError("share ciphertext does not authenticate (tampered, or not for this round/peer)") from None


def mask_blocks(seed: bytes, words: int, block_words: int = BLOCK_WORDS) -> Iterator[np.ndarray]:
    """The mask a seed expands to (AES-256-CTR keystream, nonce 0: each seed is used once), as
    uint32 blocks of ``block_words`` words (the last one shorter). Each block is a view of one
    buffer reused for the next one: consume it before advancing."""
    stream = Keystream(seed, min(block_words, max(words, 1)))
    done = 0
    while done < words:
        n = min(block_words, words - done)
        yield stream.read(n)
        done += n


class Keystream:
    """Uniform uint32 words from a seed (AES-256-CTR), read in pieces of any size: the client's
    stochastic-rounding randomness (about 20x faster than numpy's generator)."""

    def __init__(self, seed: bytes, block_words: int = BLOCK_WORDS) -> None:
        if len(seed) != KEY_BYTES:
            raise CryptoError(f"a keystream seed is {KEY_BYTES} bytes, got {len(seed)}")
        self._encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytes(4 * block_words)  # block_words 0: only read_into, with the caller's buffers
        self._out = bytearray(4 * block_words)

    def read(self, words: int) -> np.ndarray:
        """The next ``words`` words (at most ``block_words``; a view valid until the next read)."""
        return self.read_into(self._zeros[: 4 * words], self._out)

    def read_into(self, zeros: bytes, buffer: bytearray) -> np.ndarray:
        """The next ``len(zeros) // 4`` words, written into ``buffer`` (a view of it)."""
        self._encryptor.update_into(zeros, buffer)
        return np.frombuffer(buffer, np.uint32, count=len(zeros) // 4)


def mask(seed: bytes, words: int) -> np.ndarray:
    """The whole mask (tests and small vectors; the protocol streams :func:`mask_blocks`)."""
    return np.concatenate(list(np.copy(b) for b in mask_blocks(seed, words))) if words else np.zeros(0, np.uint32)
