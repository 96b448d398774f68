"""Secrets a spec carries (``storage_options`` credentials): kept out of answers and the journal.

Owns two things:

* :func:`redact_spec`: the SessionSpec a trainer or admin sees in ``GetSession``, with every
  storage option's value replaced by :data:`REDACTED` (the keys stay, so the caller sees
  which options were set). Only the worker role receives them in clear: a worker needs them
  to read the table, and reaches the master over mTLS with a worker token.
* :class:`SealedJournal`: wraps the master's journal so that ``storage_options`` values are
  **encrypted** (Fernet: AES-128-CBC + HMAC-SHA256, from the ``cryptography`` package) before
  a ``SessionCreated`` line is written, and decrypted on replay. The key lives in a per-master
  key file (``journal.key`` beside the journal, 0600, made on first start): a copied journal
  without the key reveals no credential. Rotating the key: stop the master, delete the
  journal and the key (sessions are lost), start again.

Secrets are never logged: the ``Spec`` dataclass omits ``storage_options`` from its repr, and
no log line or metric names an option's value. Must never import grpc.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from dpp_proto import spec_pb2
from dpp_proto.auth import write_private
from dpp_server import state

#: What a redacted storage option's value reads.
REDACTED = "<redacted>"
#: Marks a sealed value in the journal.
SEALED_PREFIX = "dpp-sealed:v1:"


def redact_spec(spec: spec_pb2.SessionSpec) -> None:
    """Replaces every storage option's value by :data:`REDACTED`, in place."""
    for key in list(spec.storage_options):
        spec.storage_options[key] = REDACTED


class SecretBox:
    """Seals and opens strings with a Fernet key kept in a 0600 file. Thread-safe (Fernet is
    stateless apart from its key)."""

    def __init__(self, key_file: str | os.PathLike[str]) -> None:
        path = Path(key_file)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_private(path, Fernet.generate_key())
        self._fernet = Fernet(path.read_bytes().strip())
        self.path = path

    def seal(self, value: str) -> str:
        return SEALED_PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, value: str) -> str:
        """The clear value of a sealed one (values without the prefix pass unchanged: a
        journal written before sealing).

        Raises:
            ValueError: the value was sealed with another key (the key file was replaced).
        """
        if not value.startswith(SEALED_PREFIX):
            return value
        try:
            return self._fernet.decrypt(value[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ValueError(
                f"a journaled storage option was sealed with another key than {self.path}; "
                "restore the key file the journal was written with"
            ) from None


def _map_options(spec_bytes: bytes, fn: Callable[[str], str]) -> bytes:
    spec = spec_pb2.SessionSpec()
    spec.ParseFromString(spec_bytes)
    if not spec.storage_options:
        return spec_bytes
    for key in list(spec.storage_options):
        spec.storage_options[key] = fn(spec.storage_options[key])
    return spec.SerializeToString(deterministic=True)


class SealedJournal:
    """A :class:`~dpp_server.state.Journal` that encrypts storage option values on the way
    in and decrypts them on replay. Thread-safety: that of the inner journal."""

    def __init__(self, inner: state.Journal, box: SecretBox) -> None:
        self.inner = inner
        self.box = box

    def _sealed(self, update: state.Update) -> state.Update:
        if isinstance(update, state.SessionCreated):
            sealed = _map_options(update.spec_bytes, self.box.seal)
            if sealed is not update.spec_bytes:
                return _replace_spec(update, sealed)
        return update

    def append(self, update: state.Update) -> None:
        self.inner.append(self._sealed(update))

    def compact(self, snapshot: Sequence[state.Update]) -> None:
        """The inner journal's compaction, with the snapshot's secrets sealed like appends."""
        self.inner.compact([self._sealed(u) for u in snapshot])

    def position(self) -> str:
        return self.inner.position()

    @property
    def tail_updates(self) -> int:
        return self.inner.tail_updates

    @property
    def snapshot_updates(self) -> int:
        return self.inner.snapshot_updates

    def replay(self) -> Iterator[state.Update]:
        for update in self.inner.replay():
            if isinstance(update, state.SessionCreated):
                opened = _map_options(update.spec_bytes, self.box.open)
                if opened is not update.spec_bytes:
                    update = _replace_spec(update, opened)
            yield update

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


def _replace_spec(update: state.SessionCreated, spec_bytes: bytes) -> state.SessionCreated:
    import dataclasses

    return dataclasses.replace(update, spec_bytes=spec_bytes)
