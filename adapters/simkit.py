"""What the platform simulators share: the callback cipher DingTalk, WeCom and the Official
Account all use, and a queue of injected faults.

The cipher is written from the platforms' documentation, independently of wechatpy and
dingtalk-sdk (which the adapters use), so each side checks the other: AESKey =
b64decode(EncodingAESKey + "="), AES-256-CBC with IV = key[:16], PKCS#7 padding to 32-byte
blocks, plaintext = random(16) + len(msg) (4 bytes big-endian) + msg + receive id (CorpID, AppID,
suite key); signature = sha1 of the sorted concatenation of (token, timestamp, nonce, encrypt).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def sha1_sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(str(p) for p in parts)).encode()).hexdigest()


class CallbackCipher:
    def __init__(self, token: str, encoding_aes_key: str, receive_id: str):
        self.key = base64.b64decode(encoding_aes_key + "=")
        if len(encoding_aes_key) != 43 or len(self.key) != 32:
            raise ValueError("EncodingAESKey must be 43 characters decoding to 32 bytes")
        self.token, self.receive_id = token, receive_id

    def _cipher(self) -> Cipher:
        return Cipher(algorithms.AES(self.key), modes.CBC(self.key[:16]))

    def sign(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return sha1_sign(self.token, timestamp, nonce, encrypt)

    def encrypt(self, text: str, random16: bytes | None = None) -> str:
        msg = text.encode()
        raw = (random16 or secrets.token_hex(8).encode()) + struct.pack(">I", len(msg)) + msg
        raw += self.receive_id.encode()
        pad = 32 - len(raw) % 32
        enc = self._cipher().encryptor()
        return base64.b64encode(enc.update(raw + bytes([pad]) * pad) + enc.finalize()).decode()

    def decrypt(self, encrypt: str) -> str:
        dec = self._cipher().decryptor()
        raw = dec.update(base64.b64decode(encrypt)) + dec.finalize()
        pad = raw[-1]
        if not 1 <= pad <= 32:
            raise ValueError("bad PKCS#7 padding")
        body = raw[16:-pad]
        (length,) = struct.unpack(">I", body[:4])
        if body[4 + length:].decode() != self.receive_id:  # a receive id mismatch must be rejected
            raise ValueError("ReceiveId / AppID mismatch")
        return body[4:4 + length].decode()


class Faults:
    """The next n calls under a path prefix fail in a given way instead of being handled."""

    def __init__(self, kinds: tuple[str, ...]):
        self.kinds = kinds
        self._queue: list[list] = []  # [remaining, kind, path_prefix]

    def add(self, n: int, kind: str, path_prefix: str = "/") -> None:
        if kind not in self.kinds:
            raise ValueError(f"unknown fault kind {kind!r}; one of {self.kinds}")
        if n > 0:
            self._queue.append([n, kind, path_prefix])

    def take(self, path: str) -> str | None:
        for fault in self._queue:
            if path.startswith(fault[2]):
                fault[0] -= 1
                if fault[0] <= 0:
                    self._queue.remove(fault)
                return fault[1]
        return None
