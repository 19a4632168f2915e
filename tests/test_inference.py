"""The LiteRT runner on real IoT-23 bundles: equivalence with torch, int8 input,
one-flow and batch paths, bad model files, and no torch on the gateway."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_export_bundles import edge_bundles, validation_sample

from edgedp.bundle import (
    FP32_MODEL,
    INT8_MODEL,
    BundleError,
    load_bundle,
    write_manifest,
)
from edgedp.edge.inference import (
    LiteRTModel,
    ModelFileError,
    QuantizationParameters,
    load_runner,
)
from edgedp.export import load_torch_model, torch_outputs


@pytest.fixture(scope="session")
def bundles(iot23, tmp_path_factory):
    return edge_bundles(iot23, tmp_path_factory.mktemp("edge"))


@pytest.fixture(scope="session")
def sample(bundles):
    return validation_sample(bundles)


def test_fp32_classifier_matches_torch(bundles, sample):
    expected = torch_outputs(load_torch_model(bundles.classifier), sample)

    probabilities = load_runner(bundles.classifier, "fp32").predict(sample)

    assert probabilities.shape == (len(sample), len(bundles.classifier.classes))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)
    assert (probabilities.argmax(1) == expected.argmax(1)).all()


def test_fp32_autoencoder_matches_torch(bundles, sample):
    expected = torch_outputs(load_torch_model(bundles.autoencoder), sample)

    errors = load_runner(bundles.autoencoder, "fp32").predict(sample)

    assert errors.shape == (len(sample),)
    np.testing.assert_allclose(errors, expected, rtol=1e-4, atol=1e-7)


def test_int8_classifier_close_to_torch(bundles, sample):
    expected = torch_outputs(load_torch_model(bundles.classifier), sample)

    probabilities = load_runner(bundles.classifier, "int8").predict(sample)

    assert np.abs(probabilities - expected).max() < 0.1
    agreement = np.mean(probabilities.argmax(1) == expected.argmax(1))
    assert agreement > 0.99


def test_int8_input_is_quantized_features(bundles):
    runner = load_runner(bundles.classifier, "int8")
    quantization = runner.input_quantization

    assert runner.model.input_dtype == np.int8
    assert quantization.scale == pytest.approx(1 / 255)
    assert quantization.zero_point == -128
    # 0.2 * 255 = 51 steps above the zero point.
    assert runner.quantize(np.array([[0.0, 1.0, 0.2]])).tolist() == [[-128, 127, -77]]


def test_int8_input_matches_float_input(bundles, sample):
    for bundle in (bundles.classifier, bundles.autoencoder):
        runner = load_runner(bundle, "int8")

        from_float = runner.predict(sample)
        from_int8 = runner.predict_quantized(runner.quantize(sample))

        if bundle.model_kind == "classifier":
            np.testing.assert_array_equal(from_int8, from_float)
        else:
            # The error is measured against the dequantized input, so it
            # differs from the float path by at most the rounding of inputs.
            np.testing.assert_allclose(from_int8, from_float, atol=2e-3)


@pytest.mark.parametrize("model_format", ["fp32", "int8"])
@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_one_flow_matches_batch(bundles, sample, model_format, kind):
    runner = load_runner(getattr(bundles, kind), model_format)
    rows = sample[:40]

    batch = runner.predict(rows)
    single = np.array([np.copy(runner.predict_one(row)) for row in rows])

    np.testing.assert_allclose(single, batch, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["classifier", "autoencoder"])
def test_one_flow_int8_input_matches_batch(bundles, sample, kind):
    runner = load_runner(getattr(bundles, kind), "int8")
    quantized = runner.quantize(sample[:40])

    batch = runner.predict_quantized(quantized)
    single = np.array([np.copy(runner.predict_one_quantized(row)) for row in quantized])

    np.testing.assert_allclose(single, batch, rtol=1e-5, atol=1e-7)


def test_one_flow_int8_input_with_float_reference(bundles, sample):
    runner = load_runner(bundles.autoencoder, "int8")
    rows = sample[:40]

    from_float = np.array([runner.predict_one(row) for row in rows])
    with_reference = np.array(
        [
            runner.predict_one_quantized(quantized, row)
            for row, quantized in zip(rows, runner.quantize(rows), strict=True)
        ]
    )

    np.testing.assert_allclose(with_reference, from_float, rtol=1e-6, atol=0)


def test_chunked_batches_match_one_batch(bundles, sample):
    whole = load_runner(bundles.classifier, "fp32").predict(sample[:100])

    chunked = load_runner(bundles.classifier, "fp32", max_batch=7).predict(sample[:100])

    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_one_flow_path_keeps_its_buffers(bundles, sample):
    runner = load_runner(bundles.classifier, "int8")
    runner.predict_one(sample[0])
    buffers = (runner.model._row, runner.model._output_row, runner._quantized_row)

    for row in sample[1:20]:
        runner.predict_one(row)

    assert runner.model._batch_rows == 1
    assert (runner.model._row, runner.model._output_row, runner._quantized_row) == (
        buffers
    )


def test_empty_input_gives_empty_output(bundles, sample):
    runner = load_runner(bundles.autoencoder, "int8")

    assert runner.predict(sample[:0]).shape == (0,)


def test_wrong_width_rejected(bundles, sample):
    runner = load_runner(bundles.classifier, "fp32")

    with pytest.raises(ValueError, match=r"model takes \(flows, 109\)"):
        runner.predict(sample[:, :-1])


def test_float_model_rejects_int8_input(bundles, sample):
    runner = load_runner(bundles.classifier, "fp32")

    with pytest.raises(ValueError, match="takes float32 input"):
        runner.predict_quantized(sample.astype(np.int8))


def test_unknown_format_rejected(bundles):
    with pytest.raises(ValueError, match="unknown model format 'int4'"):
        load_runner(bundles.classifier, "int4")


def test_unoptimized_bundle_rejected(bundles):
    path = bundles.copy(bundles.classifier, "unoptimized")
    manifest = json.loads((path / "bundle.json").read_text())
    del manifest["files"][INT8_MODEL]
    write_manifest(path / "bundle.json", manifest)

    with pytest.raises(BundleError, match="run `edgedp optimize`"):
        load_runner(path, "int8")


def test_truncated_model_in_bundle_rejected(bundles):
    path = bundles.copy(bundles.classifier, "truncated")
    model = path / FP32_MODEL
    model.write_bytes(model.read_bytes()[:1000])

    with pytest.raises(ModelFileError, match="altered or truncated"):
        load_runner(path, "fp32")
    with pytest.raises(ModelFileError, match="altered or truncated"):
        load_runner(load_bundle(path, verify=False), "fp32")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda content: content[: len(content) // 2], id="truncated"),
        pytest.param(lambda content: b"\x00" * len(content), id="zeroed"),
        pytest.param(lambda content: b"", id="empty"),
    ],
)
def test_corrupt_model_file_rejected(bundles, tmp_path, damage):
    content = (bundles.classifier.root / INT8_MODEL).read_bytes()
    path = tmp_path / "model.tflite"
    path.write_bytes(damage(content))

    with pytest.raises(ModelFileError, match="not a loadable LiteRT model"):
        LiteRTModel(path)


def test_quantization_round_trip():
    parameters = QuantizationParameters(scale=0.5, zero_point=3)
    values = np.array([-100.0, -1.0, 0.0, 0.74, 1.0, 100.0], dtype=np.float32)

    quantized = parameters.quantize(values)

    assert quantized.tolist() == [-128, 1, 3, 4, 5, 127]
    assert parameters.dequantize(quantized).tolist() == [
        -65.5,
        -1.0,
        0.0,
        0.5,
        1.0,
        62.0,
    ]
    table = parameters.dequantization_table()
    assert table[np.array([-128, 3], dtype=np.int8).view(np.uint8)].tolist() == [
        -65.5,
        0.0,
    ]


GATEWAY_SCRIPT = """
import json, sys
import numpy as np
from edgedp.edge.inference import load_runner
runner = load_runner(sys.argv[1], "int8")
features = np.random.default_rng(0).random((5, runner.n_features), dtype=np.float32)
runner.predict(features)
runner.predict_one(features[0])
print(json.dumps({m: m in sys.modules for m in ("torch", "polars", "pyarrow")}))
"""


def test_runner_never_imports_training_stack(bundles):
    completed = subprocess.run(
        [sys.executable, "-c", GATEWAY_SCRIPT, str(bundles.classifier.root)],
        capture_output=True,
        text=True,
        check=True,
    )

    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded == {"torch": False, "polars": False, "pyarrow": False}
