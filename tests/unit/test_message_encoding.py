"""Dramatiq messages are written by msgspec (``MsgspecJSONEncoder``) as the JSON Dramatiq's own encoder
writes: each reads the other's bytes, so a relay and a worker of different versions still understand each
other, and so do the messages already in Redis when one of them is upgraded."""

from __future__ import annotations

import uuid

import dramatiq
import pytest
from dramatiq.encoder import JSONEncoder

from shared.broker import MsgspecJSONEncoder, create_broker
from shared.settings import load_settings


def message() -> dramatiq.Message[object]:
    return dramatiq.Message(
        queue_name="critical.DQ",
        actor_name="send_verify_email",
        args=({"username": "zoe_2", "note": "Zoë Ångström, 王小明 ✉"},),
        kwargs={},
        options={
            "trace_id": "0af7651916cd43dd8448eb211c80319c",
            "trace_context": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
            "redis_message_id": str(uuid.uuid4()),
            "eta": 1_764_800_000_123,
            "retries": 2,
        },
        message_id=str(uuid.uuid4()),
    )


def test_each_encoder_reads_what_the_other_wrote():
    data = message().asdict()
    ours, dramatiqs = MsgspecJSONEncoder(), JSONEncoder()
    expected = dramatiqs.decode(dramatiqs.encode(data))
    assert dramatiqs.decode(ours.encode(data)) == expected
    assert ours.decode(dramatiqs.encode(data)) == expected
    assert ours.decode(ours.encode(data)) == expected
    assert expected["args"] == [{"username": "zoe_2", "note": "Zoë Ångström, 王小明 ✉"}]


def test_create_broker_makes_it_dramatiqs_encoder_and_bad_bytes_are_a_decode_error():
    previous = dramatiq.get_encoder()
    try:
        broker = create_broker(load_settings({}))
        broker.close()
        assert isinstance(dramatiq.get_encoder(), MsgspecJSONEncoder)
        original = message()
        assert dramatiq.Message.decode(original.encode()) == dramatiq.Message.decode(
            JSONEncoder().encode(original.asdict())
        )
        # Dramatiq's consumer treats a DecodeError as a message to reject, not as a crash.
        with pytest.raises(dramatiq.DecodeError):
            dramatiq.Message.decode(b'{"queue_name": "critical", ')
        with pytest.raises(dramatiq.DecodeError):
            dramatiq.Message.decode(b"\xff\xfe")
    finally:
        dramatiq.set_encoder(previous)
