"""Feature encoding shared by the train and serve stages.

The model sees two numeric columns, in this order: `orders_placed` and the product code's
index in a sorted list of the codes seen in training. The list is learned from the training
data and travels inside the model artefact, so a new SKU in next week's data needs no code
change, and the service accepts exactly the codes its model was trained on.
"""
from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple, Union

import numpy as np

from pipeline.settings import MESSAGES
from pipeline.utils import listed, quote

LABEL_COLUMN = "hours_to_dispatch"
ORDERS_COLUMN = "orders_placed"
PRODUCT_COLUMN = "product_code"
DATASET_COLUMNS = (LABEL_COLUMN, ORDERS_COLUMN, PRODUCT_COLUMN)
FEATURE_NAMES = (ORDERS_COLUMN, PRODUCT_COLUMN)

Numbers = Union[Sequence[float], np.ndarray]


class UnknownProductCodeError(ValueError):
    """A product code that the encoding was not fitted on."""


@dataclass(frozen=True)
class ProductCodeEncoding:
    """Ordinal encoding of product codes: the sorted codes seen in training, by index."""

    codes: Tuple[str, ...]

    @classmethod
    def fit(cls, product_codes: Iterable[str]) -> "ProductCodeEncoding":
        """Learn the encoding from the product codes of a training set.

        Raises:
            ValueError: if there are no codes, or a code is not a non-empty string.
        """
        codes = set(product_codes)
        bad = [code for code in codes if not isinstance(code, str) or not code.strip()]
        if bad:
            raise ValueError(f"product codes must be non-empty strings, got {_named(sorted(map(repr, bad)))}")
        if not codes:
            raise ValueError("cannot learn a product-code encoding from no product codes")
        return cls(codes=tuple(sorted(codes)))

    def index(self, product_code: str) -> int:
        """The integer a single product code is encoded as.

        Raises:
            UnknownProductCodeError: if the code was not seen in training.
        """
        try:
            return self.codes.index(product_code)
        except ValueError:
            raise UnknownProductCodeError(
                f"unknown product code {quote(product_code)}; known codes: {_named(self.codes)}"
            ) from None

    def encode(self, product_codes: Sequence[str]) -> np.ndarray:
        """Encode a sequence of product codes as float64 indices.

        Raises:
            UnknownProductCodeError: naming every code that was not seen in training.
        """
        lookup = {code: float(i) for i, code in enumerate(self.codes)}
        try:
            # map with the dict's own lookup runs without a Python-level step per code: batch
            # scoring encodes millions.
            return np.fromiter(map(lookup.__getitem__, product_codes), dtype=np.float64,
                               count=len(product_codes))
        except KeyError:
            unknown = sorted({str(code) for code in product_codes if code not in lookup})
            raise UnknownProductCodeError(
                f"unknown product code(s) {_named(unknown)}; known codes: {_named(self.codes)}"
            ) from None


def encode_features(
    orders_placed: Numbers, product_codes: Sequence[str], encoding: ProductCodeEncoding
) -> np.ndarray:
    """Build the model's feature matrix.

    Args:
        orders_placed: orders already placed that day, one per row.
        product_codes: the product code of each row.
        encoding: the encoding the model was trained with.

    Returns:
        A float64 array of shape (n_rows, 2): `orders_placed`, encoded product code.

    Raises:
        ValueError: if the two inputs differ in length.
        UnknownProductCodeError: if a product code is not in the encoding.
    """
    if len(orders_placed) != len(product_codes):
        raise ValueError(
            f"{len(orders_placed)} orders_placed values but {len(product_codes)} product codes"
        )
    features = np.empty((len(product_codes), 2), dtype=np.float64)
    features[:, 0] = np.asarray(orders_placed, dtype=np.float64)
    features[:, 1] = encoding.encode(product_codes)
    return features


def _named(values: Sequence[str]) -> str:
    return listed([quote(value) for value in values[:MESSAGES.max_codes_named]], total=len(values))
