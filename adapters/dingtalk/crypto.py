"""DingTalk signatures: the robot callback's `sign` header and the event-subscription envelope.

The envelope (AES + SHA1 signature, receiveId = corp id) is dingtalk-sdk's DingTalkCrypto; the
robot signature is the documented base64(HMAC-SHA256(appSecret, f"{timestamp}\\n{appSecret}")).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from dingtalk.core.exceptions import InvalidCorpIdOrSuiteKeyException, InvalidSignatureException
from dingtalk.crypto import DingTalkCrypto

from gateway.adapter import Unauthorized


def robot_sign(app_secret: str, timestamp_ms: int | str) -> str:
    mac = hmac.new(app_secret.encode(), f"{timestamp_ms}\n{app_secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(mac).decode()


def check_robot_sign(app_secret: str, timestamp: str, sign: str, now_ms: int, window_s: int) -> None:
    # isascii(): "¹²³".isdigit() is true but int() refuses it; a non-ASCII sign cannot be
    # compare_digest()ed (TypeError) and is forged anyway.
    if not (timestamp.isascii() and timestamp.isdigit()) or not sign or not sign.isascii():
        raise Unauthorized("missing or malformed timestamp or sign header")
    if abs(now_ms - int(timestamp)) > window_s * 1000:
        raise Unauthorized("timestamp is outside the allowed window")
    if not hmac.compare_digest(robot_sign(app_secret, timestamp), sign):
        raise Unauthorized("bad sign")


class EventCrypto:
    def __init__(self, token: str, aes_key: str, corp_id: str):
        self._c = DingTalkCrypto(token, aes_key, corp_id)

    def decrypt(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        try:
            return self._c.decrypt_encrypt_str(signature, timestamp, nonce, encrypt)
        except (InvalidSignatureException, InvalidCorpIdOrSuiteKeyException) as e:
            raise Unauthorized(f"event envelope rejected: {type(e).__name__}") from None
        except Exception:  # noqa: BLE001 - a corrupt ciphertext is a forged request too
            raise Unauthorized("event envelope could not be decrypted") from None

    def encrypt(self, text: str) -> dict:
        return self._c.encrypt_message(text)
