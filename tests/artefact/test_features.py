"""The feature encoding shared by the train and serve stages."""
import numpy as np
import pytest

from pipeline.artefact.features import ProductCodeEncoding, UnknownProductCodeError, encode_features


def test_encoding_is_the_sorted_codes_seen_in_training() -> None:
    encoding = ProductCodeEncoding.fit(["SKU003", "SKU001", "SKU003", "SKU002"])

    assert encoding.codes == ("SKU001", "SKU002", "SKU003")
    assert [encoding.index(code) for code in encoding.codes] == [0, 1, 2]


@pytest.mark.parametrize("codes", [[], ["SKU001", ""], ["SKU001", None]])
def test_encoding_refuses_to_learn_from_no_or_blank_codes(codes: list) -> None:
    with pytest.raises(ValueError, match="product code"):
        ProductCodeEncoding.fit(codes)


def test_encode_names_every_unknown_code_and_the_known_ones() -> None:
    encoding = ProductCodeEncoding(("SKU001", "SKU002"))

    with pytest.raises(UnknownProductCodeError, match="'SKU007', 'sku001'; known codes: 'SKU001', 'SKU002'"):
        encoding.encode(["SKU001", "sku001", "SKU007"])


def test_encode_features_puts_orders_then_product_index() -> None:
    encoding = ProductCodeEncoding(("SKU001", "SKU002"))

    features = encode_features([112, 0.5], ["SKU002", "SKU001"], encoding)

    np.testing.assert_array_equal(features, np.array([[112.0, 1.0], [0.5, 0.0]]))
    assert features.dtype == np.float64


def test_encode_features_rejects_inputs_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="2 orders_placed values but 1 product codes"):
        encode_features([1, 2], ["SKU001"], ProductCodeEncoding(("SKU001",)))


def test_an_unknown_code_is_quoted_cut_to_a_short_prefix() -> None:
    encoding = ProductCodeEncoding(("SKU001",))

    with pytest.raises(UnknownProductCodeError) as raised:
        encoding.index("Z" * 1_000_000)

    assert f"unknown product code {'Z' * 100!r}... (1000000 characters); known codes: 'SKU001'" == str(raised.value)


def test_many_unknown_codes_name_five_and_count_the_rest() -> None:
    encoding = ProductCodeEncoding(("SKU001",))

    with pytest.raises(UnknownProductCodeError, match=r"'X0', 'X1', 'X2', 'X3', 'X4' and 5 more; known"):
        encoding.encode([f"X{i}" for i in range(10)])


def test_an_unknown_code_names_five_known_codes_and_counts_the_rest() -> None:
    encoding = ProductCodeEncoding(tuple(f"SKU{i:05d}" for i in range(60_000)))

    with pytest.raises(UnknownProductCodeError) as single:
        encoding.index("SKU404")
    with pytest.raises(UnknownProductCodeError) as many:
        encoding.encode(["SKU404"])

    known = "known codes: 'SKU00000', 'SKU00001', 'SKU00002', 'SKU00003', 'SKU00004' and 59995 more"
    assert str(single.value) == f"unknown product code 'SKU404'; {known}"
    assert str(many.value) == f"unknown product code(s) 'SKU404'; {known}"


def test_a_huge_known_code_is_quoted_cut_short() -> None:
    encoding = ProductCodeEncoding(("X" * 130_000,))

    with pytest.raises(UnknownProductCodeError) as raised:
        encoding.index("SKU404")

    assert str(raised.value) == f"unknown product code 'SKU404'; known codes: {'X' * 100!r}... (130000 characters)"
