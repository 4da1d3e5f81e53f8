"""The prediction request's schema: what the API, and the stream's events, accept.

`build_request_model` narrows `PredictionRequest` to a model's product codes. Kept apart from
the app (`api.py`) so that what validates a request can be used without FastAPI: the streaming
core checks each event's `product_code` and `orders_placed` with this same model
(pipeline/streaming/events.py), so an event is refused exactly when the API would answer 422.
"""
from typing import Annotated, Any, Callable, FrozenSet, Literal, Optional, Sequence, Type, cast

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema, create_model, model_validator
from pydantic_core import PydanticCustomError

from pipeline.settings import ARTEFACT, MESSAGES, SERVE
from pipeline.utils import quote


class PredictionRequest(BaseModel):
    """A prediction request; `build_request_model` narrows `product_code` to a model's codes.

    `orders_placed` must be a JSON number (not a string or a boolean), finite, from 0 to
    ARTEFACT.max_accepted_orders_placed. Unknown fields are rejected, so that a misspelt or unsupported field is
    a 422 naming it rather than silently ignored; an object with more than
    SERVE.max_errors_reported fields besides its own is one `too_many_fields` error.
    """

    model_config = ConfigDict(extra="forbid")

    product_code: str = Field(description="A product code the model was trained on.")
    orders_placed: float = Field(
        ge=0,
        le=ARTEFACT.max_accepted_orders_placed,
        allow_inf_nan=False,
        strict=True,
        description="Orders already placed today: a finite number from 0 to 1e9.",
        examples=[112],
    )

    @model_validator(mode="before")
    @classmethod
    def _not_too_many_fields(cls, data: Any) -> Any:
        # Each unknown field is an error of its own: refused as a whole past the number of errors
        # a 422 lists, before pydantic checks (and reports) each of 90,000 fields one by one.
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + SERVE.max_errors_reported:
            raise PydanticCustomError(
                "too_many_fields", "Input should be an object with the fields {fields} only; it has {count} fields",
                {"fields": " and ".join(cls.model_fields), "count": len(data)})
        return data


def build_request_model(product_codes: Sequence[str]) -> Type[PredictionRequest]:
    """The request body of a prediction, accepting exactly the given product codes.

    Built per model, so that validation and the OpenAPI schema (an enum of the codes) follow
    the codes the model was trained on.

    Args:
        product_codes: the codes the model was trained on.

    Returns:
        A subclass of `PredictionRequest`, also named `PredictionRequest`.

    Raises:
        ValueError: if there are no product codes.
    """
    codes = tuple(product_codes)
    if not codes:
        raise ValueError("a request model needs at least one product code")
    expected = expected_codes(codes)
    # pydantic's Literal names every code in each error it makes (a 1,000-item batch of a model
    # with a long code or many codes made hundreds of megabytes before any handler could cut
    # them); past what a message names, the same check with the same error, naming a few.
    code_type: Any = cast(Any, Literal)[codes] if expected is None else Annotated[
        str, PlainValidator(_known_code(frozenset(codes), expected)),
        WithJsonSchema({"enum": list(codes), "type": "string"}),
    ]
    return create_model(
        "PredictionRequest",
        __base__=PredictionRequest,
        __doc__="Estimate the hours to dispatch an order for a product, given today's orders so far.",
        product_code=(
            code_type,
            Field(description="A product code the model was trained on.",
                  json_schema_extra={"examples": [codes[0]]}),
        ),
    )


def expected_codes(codes: Sequence[str]) -> Optional[str]:
    """What a 422 for an unknown product code says is expected, when pydantic's own wording
    (every code, in full) would be too long: at most MESSAGES.max_codes_named codes, each cut
    short (`quote`), then how many more; None when pydantic's wording is short enough."""
    limit = MESSAGES.max_codes_named
    if len(codes) <= limit and all(len(code) <= MESSAGES.quote_prefix_chars for code in codes):
        return None
    named = [quote(code) for code in codes[:limit]]
    if len(codes) > limit:
        return f"{', '.join(named)} or one of {len(codes) - limit} more"
    return named[0] if len(named) == 1 else f"{', '.join(named[:-1])} or {named[-1]}"


def _known_code(codes: FrozenSet[str], expected: str) -> Callable[[Any], str]:
    def known_code(value: Any) -> str:
        if isinstance(value, str) and value in codes:
            return value
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return known_code
