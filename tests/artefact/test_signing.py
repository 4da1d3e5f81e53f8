"""Artefact signing: the keys from MODEL_SIGNING_KEY, signatures, rotation."""
import hashlib
import hmac
import json

import pytest

from pipeline.artefact.signing import (
    SignatureError,
    SigningKeyError,
    load_signing_keys,
)
from pipeline.settings import ARTEFACT, ENVIRONMENT, LAYOUT

SECRET_A = "a" * 64
SECRET_B = "b" * 64
BODY = b"the pickled artefact"
WHERE = "models/time_to_dispatch_2026-10-01T12:00:00.000000Z_0000000a.pkl"


def test_the_first_key_signs_and_its_id_goes_into_the_metadata() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"new:{SECRET_B},old:{SECRET_A}"})

    metadata = keys.sign(BODY, WHERE).metadata()

    assert metadata[LAYOUT.key_id_metadata_key] == "new"
    assert len(metadata[LAYOUT.signature_metadata_key]) == 64


def test_an_artefact_signed_with_an_older_key_still_verifies_until_the_key_is_retired() -> None:
    signed_before = load_signing_keys({ENVIRONMENT.signing_key: f"old:{SECRET_A}"}).sign(BODY, WHERE).metadata()
    rotated = load_signing_keys({ENVIRONMENT.signing_key: f"new:{SECRET_B},old:{SECRET_A}"})
    retired = load_signing_keys({ENVIRONMENT.signing_key: f"new:{SECRET_B}"})

    assert rotated.verify(BODY, signed_before, WHERE) == "old"
    with pytest.raises(SignatureError, match="signed with key id 'old', which is not one of the keys in "
                                             r"MODEL_SIGNING_KEY \(new\)"):
        retired.verify(BODY, signed_before, WHERE)


def test_a_changed_body_does_not_verify() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})
    metadata = keys.sign(BODY, WHERE).metadata()

    with pytest.raises(SignatureError, match="signature does not match its bytes and its key under key id 'k1'"):
        keys.verify(BODY + b"!", metadata, WHERE)


def test_a_signature_does_not_verify_at_another_key() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})
    metadata = keys.sign(BODY, WHERE).metadata()
    elsewhere = WHERE.replace("0000000a", "replay01")

    assert keys.verify(BODY, metadata, WHERE) == "k1"
    with pytest.raises(SignatureError, match="copied here from another key"):
        keys.verify(BODY, metadata, elsewhere)


def test_the_signature_covers_the_key_the_scheme_and_the_sha256_of_the_bytes_as_documented() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})
    message = json.dumps({"key": WHERE, "scheme": "2", "sha256": hashlib.sha256(BODY).hexdigest()},
                         sort_keys=True, separators=(",", ":")).encode()

    metadata = keys.sign(BODY, WHERE).metadata()

    assert metadata == {LAYOUT.key_id_metadata_key: "k1", LAYOUT.signature_scheme_metadata_key: "2",
                        LAYOUT.signature_metadata_key: hmac.new(SECRET_A.encode(), message, hashlib.sha256).hexdigest()}


def test_a_signature_over_the_bytes_only_does_not_verify_and_names_the_remedy() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})
    bytes_only = {LAYOUT.key_id_metadata_key: "k1",
                  LAYOUT.signature_metadata_key: hmac.new(SECRET_A.encode(), BODY, hashlib.sha256).hexdigest()}

    with pytest.raises(SignatureError, match="signed over its bytes only.*retrain"):
        keys.verify(BODY, bytes_only, WHERE)


def test_a_signature_made_with_another_secret_under_the_same_key_id_does_not_verify() -> None:
    forged = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_B}"}).sign(BODY, WHERE).metadata()

    with pytest.raises(SignatureError, match="does not match"):
        load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"}).verify(BODY, forged, WHERE)


def test_an_unsigned_artefact_does_not_verify() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})

    with pytest.raises(SignatureError, match="the artefact is unsigned"):
        keys.verify(BODY, {LAYOUT.sha256_metadata_key: "0" * 64}, WHERE)


def test_an_unknown_key_id_is_quoted_cut_to_a_short_prefix() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"k1:{SECRET_A}"})

    with pytest.raises(SignatureError) as raised:
        keys.verify(BODY, {LAYOUT.key_id_metadata_key: "x" * 5000, LAYOUT.signature_metadata_key: "00",
                           LAYOUT.signature_scheme_metadata_key: ARTEFACT.signature_scheme}, WHERE)

    assert "(5000 characters)" in str(raised.value) and len(str(raised.value)) < 400


def test_a_missing_key_says_which_variable_to_set_and_how_to_make_a_key() -> None:
    with pytest.raises(SigningKeyError, match="MODEL_SIGNING_KEY is not set: .*openssl rand -hex 32"):
        load_signing_keys({})


@pytest.mark.parametrize(
    "value, message",
    [
        (SECRET_A, "entry 1 is not KEY_ID:SECRET"),
        (f"bad id:{SECRET_A}", "entry 1 is not KEY_ID:SECRET"),
        ("k1:short", "key k1: the secret has 5 characters, fewer than 32"),
        (f"k1:{SECRET_A},k1:{SECRET_B}", "lists key id k1 twice"),
        (f"k1:{SECRET_A},", "entry 2 is not KEY_ID:SECRET"),
    ],
)
def test_a_malformed_key_is_refused_without_showing_the_secret(value: str, message: str) -> None:
    with pytest.raises(SigningKeyError, match=message) as raised:
        load_signing_keys({ENVIRONMENT.signing_key: value})

    assert SECRET_A not in str(raised.value) and "short" not in str(raised.value)


def test_the_keys_repr_shows_ids_but_no_secret() -> None:
    keys = load_signing_keys({ENVIRONMENT.signing_key: f"new:{SECRET_B},old:{SECRET_A}"})

    assert "new" in repr(keys) and SECRET_A not in repr(keys) and SECRET_B not in repr(keys)
