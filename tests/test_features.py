"""The fixed feature encoder: ranges, missing values, and host/gateway parity."""

import math

import numpy as np
import polars as pl
import pytest

from edgedp import features
from edgedp.data import readers
from edgedp.data.prepare import encode_frame, encoder_columns


@pytest.fixture(scope="module")
def records(iot23):
    path = iot23 / "zeek" / "CTU-Honeypot-Capture-5-1.conn.log.labeled"
    return pl.concat(readers.read_flows(path))


def _row(**values):
    base = {
        "id.orig_p": 40000,
        "id.resp_p": 23,
        "proto": "tcp",
        "conn_state": "S0",
        "duration": 1.0,
        "service": None,
        "history": "S",
        "orig_bytes": 0,
        "resp_bytes": 0,
        "missed_bytes": 0,
        "orig_pkts": 1,
        "orig_ip_bytes": 60,
        "resp_pkts": 0,
        "resp_ip_bytes": 0,
    }
    base.update(values)
    return {name: [value] for name, value in base.items()}


def _encoded(feature_set="extended", **values):
    row = features.encode(_row(**values), feature_set)[0]
    return dict(zip(features.feature_names(feature_set), row, strict=True))


def test_feature_names():
    paper = features.feature_names("paper")
    extended = features.feature_names("extended")

    assert extended[: len(paper) - 2] == paper[:-2]
    assert len(set(extended)) == len(extended)
    for name in extended:
        assert not name.startswith(("id.orig_h", "id.resp_h", "uid", "ts"))
    assert "duration_missing" in paper
    assert "history=^" in extended


@pytest.mark.parametrize("feature_set", features.FEATURE_SETS)
def test_real_flows_in_unit_range(records, feature_set):
    encoded = features.encode(encoder_columns(records, feature_set), feature_set)

    assert encoded.dtype == np.float32
    assert encoded.shape == (records.height, len(features.feature_names(feature_set)))
    assert np.isfinite(encoded).all()
    assert encoded.min() >= 0.0
    assert encoded.max() <= 1.0


def test_gateway_lists_match_host_columns(records):
    host = features.encode(encoder_columns(records, "extended"))
    lists = {
        name: records[name].to_list() for name in features.input_fields("extended")
    }

    gateway = features.encode(lists)

    np.testing.assert_array_equal(gateway, host)


@pytest.mark.parametrize("feature_set", features.FEATURE_SETS)
def test_column_major_path_matches_lists(records, feature_set):
    lists = {
        name: records[name].to_list() for name in features.input_fields(feature_set)
    }

    gateway = features.encode(lists, feature_set)
    prepared = encode_frame(records, feature_set)

    assert prepared.flags.f_contiguous
    assert gateway.flags.c_contiguous
    np.testing.assert_array_equal(prepared, gateway)


def test_column_major_path_all_null_strings(records):
    frame = records.head(50).with_columns(
        pl.lit(None, dtype=pl.String).alias(name) for name in ("service", "history")
    )
    lists = {name: frame[name].to_list() for name in features.input_fields()}

    np.testing.assert_array_equal(
        encode_frame(frame, "extended"), features.encode(lists)
    )
    assert encode_frame(frame.head(0), "extended").shape == (0, 109)


def _edge_columns(flows):
    """Columns that reach every branch: NaN, inf, negatives, unknown values."""
    rng = np.random.default_rng(7)
    numbers = [math.nan, None, -5.0, 0.0, 1.0, 3.3, 1e12, math.inf, -math.inf]
    ports = [math.nan, -1.0, 0.0, 23.0, 80.5, 1023.0, 1024.0, 49152.0, 65535.0, 7e4]
    strings = {
        "proto": ["tcp", "UDP", " icmp ", "sctp", None, ""],
        "conn_state": ["S0", "sf", "XYZ", None],
        "service": ["dns", "http,ssl", "-", "", None, "quic, dns"],
        "history": ["ShAD", "^dD", "-", "", None, "X", "Ss"],
    }
    columns = {
        name: [values[i] for i in rng.integers(0, len(values), flows)]
        for name, values in strings.items()
    }
    for name in ("id.orig_p", "id.resp_p"):
        columns[name] = rng.choice(ports, flows)
    for name in features.LOG_CAPS:
        columns[name] = [numbers[i] for i in rng.integers(0, len(numbers), flows)]
    return columns


@pytest.mark.parametrize("feature_set", features.FEATURE_SETS)
@pytest.mark.parametrize("flows", [0, 1, 2, 500])
def test_encode_into_layouts_agree(feature_set, flows):
    columns = _edge_columns(flows)
    width = len(features.feature_names(feature_set))
    coded = dict(columns)
    proto = features.dictionary_encode(columns["proto"])
    # Any negative code means missing, not only -1.
    coded["proto"] = features.Categorical(
        proto.categories, np.where(proto.codes < 0, -7, proto.codes)
    )

    expected = features.encode(columns, feature_set)
    for order in ("C", "F"):
        out = np.full((flows, width), np.nan, dtype=np.float32, order=order)
        result = features.encode_into(coded, feature_set, out=out)

        assert result is out
        np.testing.assert_array_equal(out, expected)
    assert np.isfinite(expected).all()
    assert ((expected >= 0) & (expected <= 1)).all()


def test_encode_into_rejects_wrong_out():
    columns = _edge_columns(3)
    width = len(features.feature_names("paper"))

    with pytest.raises(features.FeatureError, match=r"shape \(3, 51\)"):
        features.encode_into(columns, "paper", out=np.empty((3, width + 1), np.float32))
    with pytest.raises(features.FeatureError, match="float32"):
        features.encode_into(columns, "paper", out=np.empty((3, width), np.float64))


def test_one_hot_blocks_sum_to_one(records):
    encoded = features.encode(encoder_columns(records, "extended"))
    names = features.feature_names("extended")

    for field in ("proto", "conn_state"):
        block = [i for i, name in enumerate(names) if name.startswith(f"{field}=")]
        np.testing.assert_array_equal(encoded[:, block].sum(axis=1), 1.0)


def test_unknown_and_missing_categories():
    unknown = _encoded(proto="sctp", conn_state="XYZ", service="quic")
    missing = _encoded(proto=None, conn_state=None)

    assert unknown["proto=other"] == 1.0
    assert unknown["proto=tcp"] == 0.0
    assert unknown["conn_state=other"] == 1.0
    assert unknown["service=other"] == 1.0
    assert missing["proto=other"] == 1.0
    assert missing["conn_state=other"] == 1.0
    assert missing["service=-"] == 1.0


def test_service_list_sets_each_slot():
    encoded = _encoded(service="ssl,http")

    assert encoded["service=ssl"] == 1.0
    assert encoded["service=http"] == 1.0
    assert encoded["service=other"] == 0.0
    assert encoded["service=-"] == 0.0


def test_missing_numbers_set_flags():
    present = _encoded(duration=2.5, orig_bytes=100)
    missing = _encoded(duration=None, orig_bytes=float("nan"))

    assert present["duration_missing"] == 0.0
    assert present["duration"] == pytest.approx(
        math.log1p(2.5) / math.log1p(features.LOG_CAPS["duration"])
    )
    assert missing["duration"] == 0.0
    assert missing["duration_missing"] == 1.0
    assert missing["orig_bytes"] == 0.0
    assert missing["orig_bytes_missing"] == 1.0


def test_numbers_clipped_to_caps():
    high = _encoded(duration=1e12, resp_pkts=float("inf"), orig_bytes=-5)

    assert high["duration"] == 1.0
    assert high["resp_pkts"] == 1.0
    assert high["orig_bytes"] == 0.0


def test_ports():
    known = _encoded(**{"id.resp_p": 23, "id.orig_p": 65535})
    other = _encoded(**{"id.resp_p": 31337})
    invalid = _encoded(**{"id.resp_p": None})

    assert known["id.resp_p=23"] == 1.0
    assert known["id.resp_p_range=system"] == 1.0
    assert known["id.orig_p"] == 1.0
    assert known["id.orig_p_range=dynamic"] == 1.0
    assert other["id.resp_p=other"] == 1.0
    assert other["id.resp_p_range=user"] == 1.0
    assert invalid["id.resp_p"] == 0.0
    assert invalid["id.resp_p=other"] == 0.0
    assert invalid["id.resp_p_range=system"] == 0.0


def test_history_letters():
    encoded = _encoded(history="^ShADadFfX")
    unset = _encoded(history="-")

    for letter in "ShADadFf":
        assert encoded[f"history={letter}"] == 1.0
    assert encoded["history=s"] == 0.0
    assert encoded["history=^"] == 1.0
    assert encoded["history=other"] == 1.0
    assert unset["history_missing"] == 1.0
    assert sum(v for k, v in unset.items() if k.startswith("history=")) == 0.0


def test_categorical_input_matches_strings():
    values = ["tcp", None, "udp", "tcp"]
    categorical = features.Categorical(["udp", "tcp"], np.array([1, -1, 0, 1]))
    rows = {name: column * 4 for name, column in _row().items()}

    by_strings = features.encode({**rows, "proto": values})
    by_codes = features.encode({**rows, "proto": categorical})

    np.testing.assert_array_equal(by_codes, by_strings)


def test_paper_set_reads_fewer_fields():
    columns = {name: _row()[name] for name in features.input_fields("paper")}

    encoded = features.encode(columns, "paper")

    assert encoded.shape == (1, len(features.feature_names("paper")))


def test_errors():
    with pytest.raises(features.FeatureError, match="unknown feature set 'wide'"):
        features.feature_names("wide")
    with pytest.raises(features.FeatureError, match="needs the fields history"):
        features.encode({k: v for k, v in _row().items() if k != "history"})
    with pytest.raises(features.FeatureError, match="parse_number"):
        features.encode(_row(duration="1.5s"))
    with pytest.raises(features.FeatureError, match="differ in length"):
        features.encode({**_row(), "proto": ["tcp", "udp"]})


def test_encoder_imports_no_host_libraries():
    import subprocess
    import sys

    code = (
        "import sys, edgedp.features, edgedp.zeek; "
        "print(sorted({'polars', 'pyarrow', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )

    assert result.stdout.strip() == "[]"
