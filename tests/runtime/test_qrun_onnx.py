"""qrun runs a folder written by qconv to-onnx through ONNX Runtime, with the same prompts and sampling."""

import json
import shutil

from click.testing import CliRunner

from qconv.converter.onnx_export import OnnxOptions, export_onnx
from qconv.runtime.cli import main as qrun


def test_qrun_onnx_folder_matches_its_own_greedy_ids(random_model_factory, tmp_path):
    folder = random_model_factory(arch="llama", hidden=256, n_layers=2, n_heads=4, n_kv_heads=2, ffn=512, vocab=512)
    out = tmp_path / "onnx"
    export_onnx(folder, out, OnnxOptions(bits=4, block_size=32))
    result = CliRunner().invoke(
        qrun, [str(out), "--raw", "--prompt", "hello world", "--temp", "0", "-n", "6", "--json", "--ignore-eos"]
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.output.strip().splitlines()[0])
    from qconv.runtime.onnx_backend import OnnxModel

    model = OnnxModel(out)
    assert record["tokens"] == model.generate_ids(model.tokenize("hello world"), 6)
    shutil.rmtree(out)
