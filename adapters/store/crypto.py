"""Token encryption at rest: MultiFernet over the keys in ``BRIDGE_ENCRYPTION_KEY``.

The first key encrypts; every key decrypts, so a key can be rotated in by
putting it first and the old one retired once ``xdm-bridge rotate-keys`` has
re-encrypted every token.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from bridge.errors import ConfigError


class TokenCipher:
    """Encrypts secrets to text for the database and back."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ConfigError("BRIDGE_ENCRYPTION_KEY holds no key")
        self._fernet = MultiFernet([Fernet(key.encode()) for key in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                "a stored token cannot be decrypted with BRIDGE_ENCRYPTION_KEY "
                "(was the key that encrypted it removed?)"
            ) from exc

    def opens(self, ciphertext: str) -> bool:
        """Whether one of the keys decrypts ``ciphertext``."""
        try:
            self._fernet.decrypt(ciphertext.encode())
        except InvalidToken:
            return False
        return True

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt under the newest key."""
        return self._fernet.rotate(ciphertext.encode()).decode()


def generate_key() -> str:
    """A new Fernet key, as printed by ``xdm-bridge keygen``."""
    return Fernet.generate_key().decode()
