"""WeCom callback crypto: wechatpy's enterprise WeChatCrypto (msg_signature over the encrypted
text, AES-256-CBC, ReceiveId = the CorpID). A ReceiveId mismatch is a forged request: 401."""

from __future__ import annotations

from wechatpy.enterprise.crypto import WeChatCrypto
from wechatpy.exceptions import InvalidSignatureException

from gateway.adapter import Unauthorized


class CallbackCrypto:
    def __init__(self, token: str, encoding_aes_key: str, corp_id: str):
        self._c = WeChatCrypto(token, encoding_aes_key, corp_id)

    def check_url(self, signature: str, timestamp: str, nonce: str, echostr: str) -> str:
        """The URL check: verify, then the plaintext echostr to answer with."""
        return self._open(lambda: self._c.check_signature(signature, timestamp, nonce, echostr))

    def decrypt(self, signature: str, timestamp: str, nonce: str, encrypt: str) -> str:
        return self._open(lambda: self._c.decrypt_message({"Encrypt": encrypt}, signature, timestamp, nonce))

    def encrypt(self, xml: str, nonce: str, timestamp: str) -> str:
        """An encrypted envelope (what the simulator-independent tests send)."""
        return self._c.encrypt_message(xml, nonce, timestamp)

    @staticmethod
    def _open(fn) -> str:
        try:
            return fn()
        except InvalidSignatureException:
            raise Unauthorized("bad msg_signature") from None
        except Exception as e:  # noqa: BLE001 - InvalidCorpIdException, a corrupt ciphertext: forged
            raise Unauthorized(f"callback could not be decrypted: {type(e).__name__}") from None
