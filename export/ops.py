"""Small operator graphs the SDK runs without the onnx package (it builds no graphs at runtime).

    python -m export.ops        # (re)write l2m_sdk/assets/ops/*.onnx

matmul_u8s8.onnx: one MatMulInteger, A (Q, D) uint8 with a scalar zero point, B (D, M) int8 -> (Q, M)
int32; the int8 first pass of an Index search (l2m_sdk/topk.py). Serialised with fixed IR and opset
versions and no producer string, so the bytes depend only on this file (tests compare them).
"""

from __future__ import annotations

from pathlib import Path

OPS_DIR = Path(__file__).resolve().parents[1] / "l2m_sdk" / "assets" / "ops"


def matmul_u8s8_bytes() -> bytes:
    from onnx import TensorProto, helper

    a = helper.make_tensor_value_info("a", TensorProto.UINT8, ["Q", "D"])
    a_zero = helper.make_tensor_value_info("a_zero", TensorProto.UINT8, [])
    b = helper.make_tensor_value_info("b", TensorProto.INT8, ["D", "M"])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["Q", "M"])
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zero"], ["y"])
    graph = helper.make_graph([node], "matmul_u8s8", [a, b, a_zero], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString(deterministic=True)


GRAPHS = {"matmul_u8s8.onnx": matmul_u8s8_bytes}


def main() -> int:
    OPS_DIR.mkdir(parents=True, exist_ok=True)
    for name, make in GRAPHS.items():
        (OPS_DIR / name).write_bytes(make())
        print(OPS_DIR / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
