"""The stored-record payload crosses the wire whole: every field of ``EcgPayload`` has a ``pb.Payload``
field of the same name, and a payload with every field set comes back unchanged."""

from __future__ import annotations

from datetime import datetime

from ecgsearch.ecg.schema import MEASUREMENTS, EcgPayload
from ecgsearch.search import wire
from ecgsearch.search._proto import search_pb2 as pb

# Payload fields that are not sent, each with the reason: a field added to one side only fails
# test_every_payload_field_is_on_the_wire until it is added to the other or named here.
NOT_ON_THE_WIRE: dict[str, str] = {
    "fingerprint": "the content fingerprint (~4 KB) the server confirms copies with; never sent or shown",
}


def _every_field_set() -> EcgPayload:
    return EcgPayload(
        record_id="muse:12345",
        dataset="muse",
        site="st-marys.cardiology",
        patient_id="p" + "a1" * 16,
        diagnoses=["164889003", "SCP:IMI"],
        source_codes=["SNOMED:164889003", "SCP:IMI"],
        scp_likelihoods={"IMI": 50.0, "AFIB": 100.0},  # float on the wire: values float32 holds exactly
        superclasses=["MI", "CD"],
        age=90,
        age_over_89=True,
        sex="F",
        sampling_rate_hz=500.0,
        duration_s=10.0,
        recorded_at=datetime(2021, 5, 3, 14, 7, 9, 123000),
        source_path="records500/12000/12345_hr",
        content_hash="ab" * 32,
        duplicate_of="ptbxl:17",
        source_format="muse-xml",
        acquired_month="2021-05",
        vendor="GE Healthcare",
        device_model="MAC 5500",
        archived=True,
        gain_suspect=True,
        # every machine measurement, a distinct value each (qtc 415.5: a fraction crosses too)
        **{name: 60.0 + 50 * i + 0.5 * (name == "qtc_ms") for i, name in enumerate(MEASUREMENTS)},
        fingerprint="AAAA",
    )


def test_every_payload_field_is_on_the_wire() -> None:
    ours = set(EcgPayload.model_fields) - set(NOT_ON_THE_WIRE)
    sent = set(pb.Payload.DESCRIPTOR.fields_by_name)
    assert ours == sent, (
        f"only in EcgPayload: {sorted(ours - sent)}; only in pb.Payload: {sorted(sent - ours)}"
    )


def test_a_payload_with_every_field_set_round_trips() -> None:
    payload = _every_field_set()
    defaults = EcgPayload(record_id="x:1", dataset="x", sampling_rate_hz=1.0)
    unset = [name for name in EcgPayload.model_fields if getattr(payload, name) == getattr(defaults, name)]
    assert not unset, f"the sample leaves {unset} at their defaults: a lost field would go unnoticed"
    msg = wire.payload_to_proto(payload)
    back = wire.payload_from_proto(pb.Payload.FromString(msg.SerializeToString()))
    assert back == payload.model_copy(update=dict.fromkeys(NOT_ON_THE_WIRE))
    assert back.site == "st-marys.cardiology"


def test_zeros_and_absences_keep_their_meaning_across_the_wire() -> None:
    """An optional field set to zero stays zero, an unset one stays None, an empty list stays empty."""
    payload = EcgPayload(
        record_id="x:1", dataset="x", sampling_rate_hz=500.0, age=0, pr_ms=0.0, age_over_89=False
    )
    back = wire.payload_from_proto(pb.Payload.FromString(wire.payload_to_proto(payload).SerializeToString()))
    assert back == payload
    assert (back.age, back.pr_ms, back.qrs_ms, back.recorded_at, back.diagnoses) == (0, 0.0, None, None, [])


def test_a_payload_from_a_server_without_the_site_field_is_local() -> None:
    msg = wire.payload_to_proto(_every_field_set())
    msg.ClearField("site")  # what a server older than the field sends
    assert wire.payload_from_proto(msg).site == "local"


def test_the_fingerprint_is_never_sent_dumped_or_shown() -> None:
    """Stored with each point for copy detection, never in a reply, a JSON dump or a log line."""
    payload = _every_field_set()
    assert "fingerprint" not in payload.model_dump() and "AAAA" not in payload.model_dump_json()
    assert "AAAA" not in repr(payload)
    assert b"AAAA" not in wire.payload_to_proto(payload).SerializeToString()


def test_timestamps_cross_as_protobuf_reads_them() -> None:
    """``timestamp_fields`` (computed for every hit instead of ``FromDatetime``) gives the same Timestamp:
    a naive time read as UTC, an aware one converted, before 1970 and to the microsecond."""
    from datetime import UTC, timedelta, timezone

    from google.protobuf.timestamp_pb2 import Timestamp

    for when in (
        datetime(2021, 5, 3, 14, 7, 9, 123456),
        datetime(1969, 12, 31, 23, 59, 59, 999999),
        datetime(1901, 1, 1),
        datetime(2021, 5, 3, 14, 7, 9, 1, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2021, 5, 3, tzinfo=UTC),
    ):
        expected = Timestamp()
        expected.FromDatetime(when if when.tzinfo else when.replace(tzinfo=UTC))
        assert Timestamp(**wire.timestamp_fields(when)) == expected, when
        sent = Timestamp()
        wire.timestamp_to_proto(when, sent)
        assert sent == expected


def test_a_result_of_several_hits_round_trips_in_one_message() -> None:
    """A reply is built from field dicts in one constructor and read back in one validation: the same
    as each hit's own message, and every payload comes back whole."""
    from ecgsearch.ecg.schema import Hit
    from ecgsearch.search.api import SearchResult

    full = _every_field_set()
    bare = EcgPayload(record_id="x:1", dataset="x", sampling_rate_hz=100.0, age=0)
    hits = [Hit(record_id=p.record_id, score=s, payload=p) for p, s in ((full, 0.875), (bare, -0.25))]
    msg = wire.result_to_proto(SearchResult(hits=hits, query_record_id="x:9"), pb.SearchByVectorResponse)
    assert list(msg.hits) == [wire.hit_to_proto(h) for h in hits]
    back = wire.result_from_proto(pb.SearchByVectorResponse.FromString(msg.SerializeToString()))
    assert back.query_record_id == "x:9" and back.summary is None
    assert [h.payload for h in back.hits] == [full.model_copy(update=dict.fromkeys(NOT_ON_THE_WIRE)), bare]
    assert [(h.record_id, h.score) for h in back.hits] == [("muse:12345", 0.875), ("x:1", -0.25)]
