from __future__ import annotations

from services.api.tracing import request_id_from_headers


def test_a_safe_request_id_is_kept() -> None:
    assert request_id_from_headers({"x-request-id": "req-42.a:b_c"}) == "req-42.a:b_c"


def test_an_unsafe_request_id_is_replaced() -> None:
    for bad in ("with space", "x" * 129, "new\nline", 'quote"', ""):
        request_id = request_id_from_headers({"x-request-id": bad})
        assert request_id != bad and len(request_id) == 32


def test_traceparent_gives_its_trace_id() -> None:
    header = "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
    assert request_id_from_headers({"traceparent": header}) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_a_malformed_traceparent_is_ignored() -> None:
    assert len(request_id_from_headers({"traceparent": "00-zz-00-01"})) == 32
