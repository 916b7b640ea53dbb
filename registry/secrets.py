"""Upstream credentials at rest: the values of `servers.env` and `servers.headers`, and
`servers.url` (hosted servers often carry the secret in the URL).

Each value is stored as ``enc:v1:<Fernet token>``. The key setting holds one or more Fernet
keys, comma-separated, newest first: any of them decrypts, the first encrypts, so a key is
rotated by putting the new one in front and restarting (the registry then re-encrypts every
value with it). Without a configured key, a key file in the data directory is created once.
Names stay in plaintext so the API can show which variables and headers are set. Every
plaintext the cipher handles is also kept out of log records (`LogRedactor`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from .errors import RegistryError

logger = logging.getLogger(__name__)

PREFIX = "enc:v1:"
REDACTED = "<redacted>"
UNREADABLE = "cannot decrypt its credentials: the credentials key changed?"
_MIN_SCRUB = 6  # shorter values (flags like "1", "true") are not worth mangling messages for
_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/@:]*):[^\s/@]*@")


class CredentialsKeyError(ValueError):
    """The configured credentials key is not usable; the message says why, never the key."""


class CredentialsError(RegistryError):
    """A stored credential cannot be decrypted with any configured key."""


def parse_keys(value: str) -> list[Fernet]:
    """The Fernet keys of a comma-separated setting, newest first; raises CredentialsKeyError."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise CredentialsKeyError("holds no key: give one or more Fernet keys, comma-separated, newest first")
    keys: list[Fernet] = []
    for index, part in enumerate(parts, start=1):
        try:
            keys.append(Fernet(part))
        except (ValueError, TypeError):  # binascii.Error is a ValueError
            where = f"key {index} of {len(parts)}" if len(parts) > 1 else "the key"
            raise CredentialsKeyError(
                f"{where} is not a Fernet key (32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
            ) from None
    return keys


def new_key() -> str:
    """A fresh Fernet key, as text."""
    return Fernet.generate_key().decode()


def is_sealed(stored: str) -> bool:
    """Whether a stored value is encrypted (else it is a plaintext row from before encryption)."""
    return stored.startswith(PREFIX)


class LogRedactor:
    """Replaces every credential value it was shown, and every URL password, in log records.

    Our own code never logs a value; libraries may (the MCP SDK logs upstream URLs at DEBUG,
    SQL drivers their parameters), so records are scrubbed as they are made, whatever handler
    or formatter later writes them."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()  # records are made on worker threads too

    def add(self, value: str) -> None:
        """Redact `value` from now on (short values are left alone)."""
        if len(value) >= _MIN_SCRUB and value not in self._values:
            with self._lock:
                self._values.add(value)
                self._pattern = None  # rebuilt on next use

    def scrub(self, text: str) -> str:
        """`text` with every value shown so far, and every URL password, redacted."""
        pattern = self._pattern
        if pattern is None and self._values:
            with self._lock:
                ordered = sorted(self._values, key=len, reverse=True)  # longest first wins
                pattern = self._pattern = re.compile("|".join(re.escape(value) for value in ordered))
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        return mask_passwords(text)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Scrub every log record made in this process while the block runs."""
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            self._redact(record)
            return record

        logging.setLogRecordFactory(factory)
        try:
            yield
        finally:
            if logging.getLogRecordFactory() is factory:  # don't undo a later installer's
                logging.setLogRecordFactory(previous)

    def _redact(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: logging reports it itself
            return
        clean = self.scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:  # tracebacks quote values too
            record.exc_text = self.scrub(_FORMATTER.formatException(record.exc_info))


_FORMATTER = logging.Formatter()


class CredentialCipher:
    """Encrypts with the newest key, decrypts with any (MultiFernet). Every plaintext it
    handles is also given to its `redactor`, which keeps them out of the logs."""

    def __init__(self, keys: str | Sequence[str]) -> None:
        fernets = parse_keys(keys if isinstance(keys, str) else ",".join(keys))
        self._newest = fernets[0]
        self._any = MultiFernet(fernets)
        self.redactor = LogRedactor()

    def __repr__(self) -> str:
        return "CredentialCipher(<keys hidden>)"

    def seal(self, value: str) -> str:
        """The stored form of a plaintext value (a different token every time)."""
        self.redactor.add(value)
        return PREFIX + self._newest.encrypt(value.encode()).decode()

    def open(self, stored: str) -> str:
        """The plaintext of a stored value; legacy plaintext passes through. Raises
        CredentialsError when no configured key decrypts it."""
        if not is_sealed(stored):
            self.redactor.add(stored)
            return stored
        try:
            value = self._any.decrypt(stored[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise CredentialsError(UNREADABLE) from None
        self.redactor.add(value)
        return value

    def reseal(self, stored: str) -> str | None:
        """A new stored form when the value is plaintext or under an older key; None when it is
        already sealed with the newest key. Raises CredentialsError when it cannot be read."""
        if not is_sealed(stored):
            return self.seal(stored)
        token = stored[len(PREFIX) :].encode()
        try:
            self._newest.decrypt(token)
            return None
        except InvalidToken:
            pass
        try:
            return PREFIX + self._any.rotate(token).decode()
        except InvalidToken:
            raise CredentialsError(UNREADABLE) from None


class NoCipher:
    """For registries opened without a key (tools that only list servers): values are written
    as given and encrypted ones cannot be read."""

    def __init__(self) -> None:
        self.redactor = LogRedactor()

    def seal(self, value: str) -> str:
        return value

    def open(self, stored: str) -> str:
        if is_sealed(stored):
            raise CredentialsError(UNREADABLE)
        return stored

    def reseal(self, stored: str) -> str | None:
        return None


Cipher = CredentialCipher | NoCipher
# A credential column's value: a map of names to values (env, headers) or one text (url).
CredentialField = Mapping[str, str] | str | None


def open_field(cipher: Cipher, stored: CredentialField) -> CredentialField:
    """The plaintext of a stored credential column; raises CredentialsError."""
    if isinstance(stored, str):
        return cipher.open(stored)
    if stored is None:
        return None
    return {name: cipher.open(value) for name, value in stored.items()}


def seal_field(
    cipher: Cipher, plain: CredentialField, *, before: CredentialField = None, stored: CredentialField = None
) -> CredentialField:
    """The stored form of a credential column. A value whose plaintext is unchanged from
    `before` keeps its token in `stored`: fresh tokens differ every time and would churn rows."""
    if isinstance(plain, str):
        return stored if plain == before and isinstance(stored, str) else cipher.seal(plain)
    if plain is None:
        return None
    old = before if isinstance(before, Mapping) else {}
    kept = stored if isinstance(stored, Mapping) else {}
    return {
        name: kept[name] if name in kept and old.get(name) == value else cipher.seal(value)
        for name, value in plain.items()
    }


def reseal_field(cipher: Cipher, stored: CredentialField) -> CredentialField:
    """`stored` re-sealed with the newest key (plaintext sealed), or None when nothing
    changes. Raises CredentialsError when a value cannot be read."""
    if isinstance(stored, str):
        return cipher.reseal(stored)
    if not stored:
        return None
    fresh = {name: cipher.reseal(value) for name, value in stored.items()}
    if all(value is None for value in fresh.values()):
        return None
    return {name: new if new is not None else stored[name] for name, new in fresh.items()}


def field_values(plain: CredentialField) -> list[str]:
    """The plaintext values of a credential column, to scrub them from messages."""
    if isinstance(plain, str):
        return [plain]
    return list(plain.values()) if plain else []


def redacted(values: Mapping[str, str]) -> dict[str, str]:
    """The names of a credential map, each with the redacted marker."""
    return {name: REDACTED for name in sorted(values)}


def mask_passwords(text: str) -> str:
    """Hide the password of every ``scheme://user:password@`` in a text."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)


def mask_url(url: str) -> str:
    """A URL as the API shows it: its password and query values hidden."""
    parts = urlsplit(mask_passwords(url))
    if not parts.query:
        return parts.geturl()
    query = "&".join(
        f"{name}={REDACTED}" if sep else name
        for name, sep, _ in (p.partition("=") for p in parts.query.split("&"))
    )
    return urlunsplit(parts._replace(query=query))


def scrub(text: str, values: Iterable[str]) -> str:
    """`text` with every credential value (and URL password) replaced by the redacted marker."""
    for value in sorted({v for v in values if len(v) >= _MIN_SCRUB}, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return mask_passwords(text)


def load_key_file(path: Path) -> str:
    """The key in `path`, creating the file (mode 0600) with a new key when it is missing.

    Two processes starting together must end up with the same key: each writes its own temp
    file and hard-links it into place, which never replaces an existing file, so the first
    link wins and the loser reads the winner's key.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(new_key() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temp, path)
            logger.warning("created the credentials key file %s: back it up with the database", path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        temp.unlink(missing_ok=True)
    return _read_key(path)


def _read_key(path: Path) -> str:
    text = path.read_text().strip()
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("credentials key file %s is readable by others (mode %o): chmod 600 it", path, mode)
    return text
