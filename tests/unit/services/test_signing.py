"""Standard Webhooks signing, checked against the independent ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from services.signing import SignatureError, WebhookSecret, signature_headers, sign, verify

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
BODY = b'{"alert_id":"p1:af:1","priority":"high"}'


def test_reference_library_verifies_our_signature() -> None:
    now = int(time.time())
    headers = signature_headers(SECRET, "p1:af:1:raised:1:0", now, BODY)
    assert Webhook(SECRET).verify(BODY, headers) == {"alert_id": "p1:af:1", "priority": "high"}


def test_known_vector_matches_reference_sign() -> None:
    from datetime import datetime, timezone
    ts = 1_700_000_000
    ref = Webhook(SECRET).sign("msg_1", datetime.fromtimestamp(ts, tz=timezone.utc), BODY.decode())
    assert sign(SECRET, "msg_1", ts, BODY) == ref


@pytest.mark.parametrize("tamper", ["body", "id", "timestamp", "signature"])
def test_reference_library_rejects_tampering(tamper: str) -> None:
    now = int(time.time())
    headers = signature_headers(SECRET, "evt-1", now, BODY)
    body = BODY
    if tamper == "body":
        body = BODY.replace(b"high", b"low!")
    elif tamper == "id":
        headers["webhook-id"] = "evt-2"
    elif tamper == "timestamp":
        headers["webhook-timestamp"] = str(now - 1)
    else:
        headers["webhook-signature"] = sign(SECRET.replace("MDEy", "MTEy"), "evt-1", now, BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, headers)
    with pytest.raises(SignatureError):
        verify(SECRET, body, headers, now_s=now)


def test_our_verify_accepts_reference_signature() -> None:
    from datetime import datetime, timezone
    now = int(time.time())
    sig = Webhook(SECRET).sign("evt-9", datetime.fromtimestamp(now, tz=timezone.utc), BODY.decode())
    headers = {"Webhook-Id": "evt-9", "Webhook-Timestamp": str(now),
               "Webhook-Signature": "v0,xxx " + sig}
    assert verify(SECRET, BODY, headers, now_s=now + 10) == "evt-9"


def test_stale_timestamp_and_missing_headers_rejected() -> None:
    headers = signature_headers(SECRET, "evt-1", 1_000, BODY)
    with pytest.raises(SignatureError, match="more than 300 s"):
        verify(SECRET, BODY, headers, now_s=1_000 + 301)
    del headers["webhook-signature"]
    with pytest.raises(SignatureError, match="webhook-signature"):
        verify(SECRET, BODY, headers, now_s=1_000)


@pytest.mark.parametrize("bad", ["abc", "whsec_", "whsec_!!notbase64!!", "whsec_" + base64.b64encode(b"short").decode()])
def test_bad_secrets_rejected(bad: str) -> None:
    with pytest.raises(ValueError):
        WebhookSecret.parse(bad)


def test_secret_repr_hides_key() -> None:
    assert "0123" not in repr(WebhookSecret.parse(SECRET))
