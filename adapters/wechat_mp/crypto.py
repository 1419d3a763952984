"""Official Account callback checks. Every callback carries `signature` = sha1(sorted(token,
timestamp, nonce)); in safe mode the body is an encrypted envelope with `msg_signature` over it
(wechatpy's WeChatCrypto: AES-256-CBC, the AppID inside). Plain mode signs no body, so the
timestamp window and the MsgId dedupe are all that stop a replay: prefer safe mode."""

from __future__ import annotations

from wechatpy.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException
from wechatpy.utils import check_signature

from gateway.adapter import Unauthorized


def check(token: str, signature: str, timestamp: str, nonce: str, *, now: int, window: int) -> None:
    if not timestamp.isascii() or not timestamp.isdigit() or abs(now - int(timestamp)) > window:
        raise Unauthorized("timestamp missing or outside the allowed window")
    try:
        check_signature(token, signature, timestamp, nonce)
    except InvalidSignatureException:
        raise Unauthorized("bad signature") from None


class Envelope:
    def __init__(self, token: str, encoding_aes_key: str, app_id: str):
        self._c = WeChatCrypto(token, encoding_aes_key, app_id)

    def decrypt(self, msg_signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        try:
            return self._c.decrypt_message({"Encrypt": encrypt}, msg_signature, timestamp, nonce)
        except InvalidSignatureException:
            raise Unauthorized("bad msg_signature") from None
        except Exception as e:  # noqa: BLE001 - another AppID inside, a corrupt ciphertext: forged
            raise Unauthorized(f"envelope could not be decrypted: {type(e).__name__}") from None

    def encrypt(self, xml: str, nonce: str, timestamp: str) -> str:
        return self._c.encrypt_message(xml, nonce, timestamp)
