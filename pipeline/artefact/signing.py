"""Artefact signing: who may write a model that the stages will load.

A SHA-256 in an artefact's metadata proves only that its bytes did not change after the
metadata was written; anyone who can write `models/` can write both. A signature proves the
artefact was written by a holder of the signing key, for the key it lives at: the train stage
signs every artefact it persists with HMAC-SHA256 over `signed_message` (the artefact's S3 key,
which names its timestamp and id, and the SHA-256 of its bytes), records the key's id, the
signature and the scheme in the object's metadata, and every reader verifies them before it
unpickles anything. A copy of a signed artefact at another key (a rejected model under a newer
name, an old model replayed as the newest) does not verify. Artefacts signed over their bytes
only, as before, carry no scheme and are refused: a copy of one would verify anywhere.

The keys come from one environment variable (in production a Kubernetes secret):

    MODEL_SIGNING_KEY="KEY_ID:SECRET[,KEY_ID:SECRET...]"

The first key signs; every key listed verifies. Rotation: put the new key first and keep the
old one after it until no artefact that may still be served is signed with it, then drop it
(see docs/reliability.md). A key id is 1 to 64 letters, digits, `.`, `_` or `-`; a secret is at
least 32 characters (`openssl rand -hex 32` makes one of 64).
"""
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

from pipeline.settings import ARTEFACT, ENVIRONMENT, LAYOUT, environment_value
from pipeline.utils import quote

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOW_TO_SET = (
    f"set {ENVIRONMENT.signing_key} to KEY_ID:SECRET (e.g. "
    f'"$(date +%Y%m):$(openssl rand -hex 32)"; in production it comes from the model-signing secret)'
)


class SigningKeyError(ValueError):
    """MODEL_SIGNING_KEY is missing or malformed."""


class SignatureError(Exception):
    """An artefact is unsigned, signed with an unknown key, or its signature does not match."""


@dataclass(frozen=True)
class Signature:
    """What goes into an artefact's metadata: the key's id and the HMAC-SHA256, in hex."""

    key_id: str
    value: str

    def metadata(self) -> Dict[str, str]:
        return {LAYOUT.key_id_metadata_key: self.key_id, LAYOUT.signature_metadata_key: self.value,
                LAYOUT.signature_scheme_metadata_key: ARTEFACT.signature_scheme}


@dataclass(frozen=True)
class SigningKeys:
    """The key that signs and every key that verifies, by id. Its repr shows ids only."""

    current: str
    secrets: Dict[str, bytes] = field(repr=False)

    def sign(self, body: bytes, where: str) -> Signature:
        """The signature of an artefact's bytes at the S3 key `where`, under the current key."""
        return Signature(self.current, _mac(self.secrets[self.current], signed_message(body, where)))

    def verify(self, body: bytes, metadata: Mapping[str, str], where: str) -> str:
        """Check the signature of an artefact read from the S3 key `where`, from its metadata.

        Returns:
            The id of the key that verified it.

        Raises:
            SignatureError: no signature; a signature over the bytes only (the scheme before
                the key was signed too) or of an unknown scheme; a key id not among the keys;
                or a signature that does not match the bytes and the key.
        """
        key_id = metadata.get(LAYOUT.key_id_metadata_key)
        value = metadata.get(LAYOUT.signature_metadata_key)
        scheme = metadata.get(LAYOUT.signature_scheme_metadata_key)
        if not key_id or not value:
            raise SignatureError(
                "the artefact is unsigned (no signing key id and signature in its metadata)"
            )
        if scheme is None:
            raise SignatureError(
                "the artefact is signed over its bytes only, as artefacts were before their signature "
                "covered the key they live at: a copy of it at any key would verify as well, so it is "
                "not trusted; retrain (the train stage persists a model signed for its key)"
            )
        if scheme != ARTEFACT.signature_scheme:
            raise SignatureError(
                f"the artefact's signature scheme is {quote(scheme)}, not {ARTEFACT.signature_scheme}, the one "
                "this pipeline verifies"
            )
        secret = self.secrets.get(key_id)
        if secret is None:
            raise SignatureError(
                f"the artefact is signed with key id {quote(key_id)}, which is not one of the keys "
                f"in {ENVIRONMENT.signing_key} ({', '.join(sorted(self.secrets))})"
            )
        if not hmac.compare_digest(_mac(secret, signed_message(body, where)), value):
            raise SignatureError(
                f"the artefact's signature does not match its bytes and its key under key id {quote(key_id)}: "
                "it was altered, copied here from another key, or signed by someone without the key"
            )
        return key_id


def signed_message(body: bytes, where: str) -> bytes:
    """What an artefact's signature covers (scheme ARTEFACT.signature_scheme): the scheme, the
    artefact's S3 key and the SHA-256 of its bytes, as compact JSON with sorted keys,
    `{"key":"models/...pkl","scheme":"2","sha256":"<hex>"}`. The key names the artefact's
    timestamp and id; the reader checks that the unpickled model's own match it."""
    content = {"key": where, "scheme": ARTEFACT.signature_scheme, "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(content, sort_keys=True, separators=(",", ":")).encode("utf-8")


def load_signing_keys(environ: Optional[Mapping[str, str]] = None) -> SigningKeys:
    """The signing keys from MODEL_SIGNING_KEY (`KEY_ID:SECRET[,KEY_ID:SECRET...]`).

    Args:
        environ: where to read the variable; this process's environment by default.

    Raises:
        SigningKeyError: the variable is unset or empty, or an entry is malformed (the
            message never contains a secret).
    """
    raw = environment_value(ENVIRONMENT.signing_key, environ)
    if not raw:
        raise SigningKeyError(
            f"{ENVIRONMENT.signing_key} is not set: model artefacts are signed and verified with it; {_HOW_TO_SET}"
        )
    secrets: Dict[str, bytes] = {}
    order = []
    for position, entry in enumerate((part.strip() for part in raw.split(",")), start=1):
        key_id, separator, secret = entry.partition(":")
        if not separator or not _KEY_ID.fullmatch(key_id):
            raise SigningKeyError(
                f"{ENVIRONMENT.signing_key} entry {position} is not KEY_ID:SECRET with a key id of 1 to 64 "
                f"letters, digits, '.', '_' or '-'; {_HOW_TO_SET}"
            )
        if len(secret) < ARTEFACT.min_secret_chars:
            raise SigningKeyError(
                f"{ENVIRONMENT.signing_key} key {key_id}: the secret has {len(secret)} characters, fewer than "
                f"{ARTEFACT.min_secret_chars}; {_HOW_TO_SET}"
            )
        if key_id in secrets:
            raise SigningKeyError(f"{ENVIRONMENT.signing_key} lists key id {key_id} twice")
        secrets[key_id] = secret.encode("utf-8")
        order.append(key_id)
    return SigningKeys(current=order[0], secrets=secrets)


def _mac(secret: bytes, message: bytes) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
