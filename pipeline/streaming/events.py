"""Stream events in, predictions out: decode, validate and score a batch of Kinesis records.

Pure: no I/O. An event is a record whose data is a UTF-8 JSON object with at least

    {"order_id": "ORD-0000001", "product_code": "SKU003", "orders_placed": 87, ...}

`product_code` and `orders_placed` are validated by the REST API's own request model
(`build_request_model`), so a record is refused exactly when the API would answer 422;
`order_id` must be a non-empty string of at most STREAM.max_partition_key_chars characters,
since it is the output's partition key. A valid event becomes a prediction: every field of the
event, then the REST prediction's fields as `Model.estimate` computes them for the API's batch
route, then the model's artefact id (the prediction's fields overwrite event fields of the same
name), encoded as compact UTF-8 JSON:

    {"order_id": "ORD-0000001", "product_code": "SKU003", "orders_placed": 87, ...,
     "est_hours_to_dispatch": 5.3, "model_version": "...", "upper_hours_to_dispatch": 6.9,
     "extrapolated": false, "artefact_id": "1a2b3c4d"}

Anything else becomes a dead letter naming the problem; one bad record never affects the others.
"""
import functools
import json
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple, Type

from pydantic import BaseModel, Field, ValidationError, create_model

from pipeline.artefact.features import ORDERS_COLUMN, PRODUCT_COLUMN
from pipeline.artefact.model import Model
from pipeline.serve.request_schema import build_request_model
from pipeline.settings import STREAM

ORDER_ID_FIELD = "order_id"
ARTEFACT_ID_FIELD = "artefact_id"
# The fields an event must have, as the request model checks them (and lists its errors).
_CHECKED_FIELDS = (PRODUCT_COLUMN, ORDERS_COLUMN, ORDER_ID_FIELD)
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean",
               type(None): "null"}


class StreamRecord(NamedTuple):
    """One Kinesis record, however it arrived (a Lambda event or GetRecords)."""

    shard_id: str
    sequence_number: str
    data: bytes  # the record's raw bytes (already base64-decoded)
    partition_key: str = ""


class ScoredEvent(NamedTuple):
    """A valid event's prediction: the output record's JSON object, and its bytes (`data`)."""

    record: StreamRecord
    order_id: str
    prediction: Dict[str, Any]
    # The prediction as the output record's data: compact UTF-8 JSON. Empty in a ScoredEvent
    # made by hand: `put_predictions` then encodes `prediction` itself.
    data: bytes = b""


class DeadLetter(NamedTuple):
    """A record that could not be scored, and why."""

    record: StreamRecord
    reason: str


def score_records(records: Sequence[StreamRecord], model: Model) -> Tuple[List[ScoredEvent], List[DeadLetter]]:
    """Decode, validate and score a batch of records with one vectorised `Model.estimate`.

    Args:
        records: the batch, in stream order.
        model: the live model.

    Returns:
        The predictions of the valid events and the dead letters of the others, each in input
        order; every record is in exactly one of the two.
    """
    validator = event_model(model.product_codes)
    valid: List[Tuple[int, StreamRecord, Dict[str, Any], Any]] = []
    dead: List[Tuple[int, DeadLetter]] = []
    for index, record in enumerate(records):
        event, problem = decode_event(record.data)
        if problem:
            dead.append((index, DeadLetter(record, problem)))
            continue
        try:
            checked = validator.model_validate({name: event[name] for name in _CHECKED_FIELDS if name in event})
        except ValidationError as error:
            dead.append((index, DeadLetter(record, validation_reason(error))))
            continue
        valid.append((index, record, event, checked))
    scored: List[ScoredEvent] = []
    if valid:
        estimates = model.estimate([item[3].product_code for item in valid], [item[3].orders_placed for item in valid])
        version, artefact_id = str(model), model.artefact_id
        upper = estimates.upper_hours_to_dispatch
        uppers = [None] * len(valid) if upper is None else upper.tolist()
        for (index, record, event, checked), estimate, upper_bound, extrapolated in zip(
                valid, estimates.est_hours_to_dispatch.tolist(), uppers, estimates.extrapolated.tolist()):
            prediction = {**event, "est_hours_to_dispatch": estimate, "model_version": version,
                          "upper_hours_to_dispatch": upper_bound, "extrapolated": extrapolated,
                          ARTEFACT_ID_FIELD: artefact_id}
            data, problem = encode_prediction(prediction, checked.order_id)
            if problem:
                dead.append((index, DeadLetter(record, problem)))
            else:
                scored.append(ScoredEvent(record, checked.order_id, prediction, data))
    dead.sort(key=lambda item: item[0])
    return scored, [letter for _, letter in dead]


@functools.lru_cache(maxsize=8)
def event_model(product_codes: Tuple[str, ...]) -> Type[BaseModel]:
    """The checks of an event's fields: the REST API's request model for these product codes,
    plus `order_id` (built once per set of codes)."""
    return create_model(
        "StreamEvent",
        __base__=build_request_model(product_codes),
        order_id=(str, Field(strict=True, min_length=1, max_length=STREAM.max_partition_key_chars)),
    )


def decode_event(data: bytes) -> Tuple[Dict[str, Any], str]:
    """A record's data as a JSON object, and "" ; or {} and why it is not one."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        return {}, f"not UTF-8: {error.reason} at byte {error.start}"
    try:
        event = json.loads(text)
    except RecursionError:
        return {}, "not JSON: nested too deeply"
    except ValueError as error:
        return {}, f"not JSON: {error}"
    if not isinstance(event, dict):
        return {}, f"not a JSON object: {_JSON_KINDS.get(type(event), 'a value')}"
    return event, ""


def validation_reason(error: ValidationError) -> str:
    """Every problem the checks found, `field: message`, in the request model's field order."""
    return "; ".join(f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in error.errors())


def encode_prediction(prediction: Dict[str, Any], order_id: str) -> Tuple[bytes, str]:
    """A prediction as an output record's data, and ""; or b"" and why it cannot be one."""
    try:
        data = json.dumps(prediction, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return b"", "a string of the event holds a lone surrogate (\\ud800-\\udfff), which UTF-8 cannot carry"
    except RecursionError:
        return b"", "the event is nested too deeply to be written as JSON"
    except ValueError:
        return b"", "the event holds NaN or Infinity outside orders_placed, which JSON cannot carry"
    size = len(data) + len(order_id.encode("utf-8"))
    if size > STREAM.max_record_bytes:
        return b"", (f"the prediction would be {size:,} bytes with its partition key, over Kinesis' record "
                     f"limit of {STREAM.max_record_bytes:,} bytes")
    return data, ""
