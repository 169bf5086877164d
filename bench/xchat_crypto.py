"""What X Chat's end-to-end encryption costs the bridge per message, beside the relay's own cost.

Runs X's ``chat_xdk`` in this process as the bridge does: encrypt and sign one message for a
conversation (Slack → X), and verify and decrypt one event read back (X → Slack), for message
texts of a few sizes, beside the relay's own cost: its measured p50 at 200 events/s on SQLite
(``bench/run.py``, docs/performance.md). Both crypto steps are CPU on the event loop's
thread, so their sum is also what a message costs the loop.

    .venv/bin/python bench/xchat_crypto.py [--messages N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from chat_xdk import Chat

from adapters.sandbox.fake_xchat import envelope, message_detail, unb64

RELAY_P50_MS = 4.1  # bench/run.py: relay p50 at 200 events/s on SQLite (docs/performance.md)


def _pair() -> tuple[Chat, Chat, list[dict[str, str]]]:
    """Two identities (the bridge's account and a peer) that know each other's signing keys."""
    chats, entries = [], []
    for user_id in ("1000", "2001"):
        chat = Chat()
        made = chat.generate_keypairs()
        chat.set_identity(user_id, "1")
        chats.append(chat)
        entries.append(
            {
                "user_id": user_id,
                "public_key_version": "1",
                "public_key": made.public_key.signing_public_key,
                "identity_public_key": made.public_key.public_key,
                "identity_public_key_signature": made.public_key.identity_public_key_signature,
            }
        )
    for chat in chats:
        chat.set_signing_keys(entries)
    return chats[0], chats[1], entries


def measure(messages: int, size: int) -> tuple[float, float]:
    """Median ms to encrypt+sign one message, and to verify+decrypt one."""
    bridge, peer, _ = _pair()
    key, version = os.urandom(32), "1796000000000"
    text = ("x" * size)[:size]
    encrypt, decrypt = [], []
    for _ in range(messages):
        started = time.perf_counter()
        sent = bridge.encrypt_message(
            "1000:2001", text, conversation_key=key, conversation_key_version=version
        )
        encrypt.append(time.perf_counter() - started)
        envelope = _envelope(sent)
        started = time.perf_counter()
        peer.decrypt_event(envelope, {version: key})
        decrypt.append(time.perf_counter() - started)
    return statistics.median(encrypt) * 1000, statistics.median(decrypt) * 1000


def measure_media(mib: int) -> float:
    """Median ms to stream-encrypt one MiB of a file, as a Slack file is encrypted before its
    upload (``ChatConversations.upload_media``: a MiB at a time, on the event loop's thread)."""
    chat, _, _ = _pair()
    piece, times = os.urandom(1 << 20), []
    encryptor = chat.stream_encryptor(os.urandom(32))
    for _ in range(mib):
        started = time.perf_counter()
        encryptor.push(piece)
        times.append(time.perf_counter() - started)
    encryptor.finish()
    return statistics.median(times) * 1000


def _envelope(sent: Any) -> str:
    """The server's wrapping of a posted message, as the X simulator does it."""
    signature = unb64(sent.encoded_event_signature)
    detail = message_detail(sent.encrypted_content)
    return envelope("1", sent.message_id, "1000", "1000:2001", 1_796_000_000_000, detail, signature)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    args = parser.parse_args()
    print(f"chat_xdk, {args.messages} messages per size; relay p50 (bench/run.py): {RELAY_P50_MS} ms")
    for size in (40, 1_000, 10_000):
        enc, dec = measure(args.messages, size)
        share = (enc + dec) / RELAY_P50_MS
        print(
            f"{size:>6} chars: encrypt+sign {enc:.3f} ms, verify+decrypt {dec:.3f} ms; "
            f"together {share:.1%} of the relay's p50"
        )
    print(f"files: stream encryption {measure_media(32):.2f} ms per MiB (median of 32 MiB)")


if __name__ == "__main__":
    main()
