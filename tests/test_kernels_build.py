"""The CUDA rasterizer compiles (nvcc for sm_80/sm_90, PTX and cubin; NVRTC), its ABI matches its callers,
and the TensorRT plugin's pure logic is right. Needs no GPU; skips only for a missing nvcc / cuda-python /
onnx / TensorRT."""

import shutil
import struct
import time

import numpy as np
import pytest

from l2m_kernels import build, trt_plugin
from l2m_sdk import _cuda_raster as C

# 256 Prim records of 10 x 4 bytes plus the per-warp counters: the kernel's static shared memory.
MIN_SMEM = 256 * 40
# Driver 580 (CUDA 13.0) on the H100/H200 machines loads PTX up to ISA 9.0.
MAX_PTX_ISA = (9, 0)
N_SCALARS = len(C.kernel_scalars(1, 2, 3, 4, 5, 1.0, 1.0, 0, 1, 0))


def _expected_params(entry: str) -> list[str]:
    pointers_in = 1 if entry == C.ENTRY_F32_NCHW else 2  # TensorRT entry has no colours pointer
    return ["u64"] * pointers_in + ["u32"] * N_SCALARS + ["u64"]


@pytest.mark.skipif(build.find_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_ptx_and_cubin(arch, tmp_path):
    res = build.compile_nvcc(arch, tmp_path)
    ptx = res["ptx"].read_text()
    assert f".target {arch}" in ptx
    assert res["cubin"].read_bytes()[:4] == b"\x7fELF"
    params = build.ptx_entry_params(ptx)
    assert {e: params.get(e) for e in C.ENTRIES} == {e: _expected_params(e) for e in C.ENTRIES}
    print(f"{arch}:\n{build.format_report(res['resources'])}")
    for entry in C.ENTRIES:
        r = res["resources"][entry]
        assert 0 < r["registers"] <= 255 and r["smem_bytes"] >= MIN_SMEM, r


def test_nvrtc_compiles_loadable_ptx(tmp_path):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python not installed")
    t0 = time.perf_counter()
    ptx = build.nvrtc_ptx("compute_80")
    seconds = time.perf_counter() - t0
    print(f"NVRTC {C.nvrtc_version()} compile: {seconds:.2f} s, PTX ISA {build.ptx_version(ptx)}")
    assert build.ptx_version(ptx) <= MAX_PTX_ISA, "this PTX would not load on driver 580 (CUDA 13.0)"
    params = build.ptx_entry_params(ptx)
    assert {e: params.get(e) for e in C.ENTRIES} == {e: _expected_params(e) for e in C.ENTRIES}
    cubin = C.nvrtc_compile("sm_90")
    assert cubin[:4] == b"\x7fELF"
    ptxas = shutil.which("ptxas")
    if ptxas:  # NVRTC's PTX must also assemble for Hopper
        path = tmp_path / "nvrtc.ptx"
        path.write_text(ptx)
        proc = build._run(build.ptxas_command(path, "sm_90", tmp_path / "nvrtc.cubin", ptxas))
        report = build.parse_ptxas_report(proc.stdout + proc.stderr)
        print(build.format_report(report))
        assert set(report) == set(C.ENTRIES)


def test_nvrtc_reports_compile_errors(monkeypatch):
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python not installed")
    src, header = C.kernel_source()
    monkeypatch.setattr(C, "kernel_source", lambda: (src + "\nthis is not C++;\n", header))
    with pytest.raises(RuntimeError, match="NVRTC could not compile"):
        C.nvrtc_compile("compute_80")


def test_nvcc_command_lines():
    cmd = build.nvcc_command("sm_90", "cubin", build.KERNEL_DIR / "x.cubin", verbose_ptxas=True)
    assert cmd[0] == "nvcc" and "-arch=sm_90" in cmd and "-cubin" in cmd and "--fmad=false" in cmd
    assert "-Xptxas" in cmd and str(build.SOURCE) in cmd
    with pytest.raises(ValueError):
        build.nvcc_command("compute_90; rm -rf /", "ptx", build.KERNEL_DIR / "x.ptx")
    with pytest.raises(ValueError):
        build.nvcc_command("sm_90", "fatbin", build.KERNEL_DIR / "x")


def test_parse_ptxas_report():
    text = (
        "ptxas info    : Compiling entry function 'k1' for 'sm_90'\n"
        "ptxas info    : Function properties for k1\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 39 registers, used 1 barriers, 7200 bytes smem\n"
        "ptxas info    : Compiling entry function 'k2' for 'sm_90'\n"
        "ptxas info    : Used 12 registers\n"
    )
    r = build.parse_ptxas_report(text)
    assert r["k1"] == {
        "stack_bytes": 8,
        "spill_stores": 4,
        "spill_loads": 12,
        "registers": 39,
        "barriers": 1,
        "smem_bytes": 7200,
    }
    assert r["k2"]["registers"] == 12 and r["k2"]["smem_bytes"] == 0


def test_plugin_shapes_launch_and_scalars():
    rng = np.random.default_rng(time.time_ns() % 2**32)
    B, T, N = (int(v) for v in rng.integers(1, 300, size=3))
    H, W = (int(v) for v in rng.integers(1, 1000, size=2))
    lw, pr = float(rng.uniform(0.1, 9)), float(rng.uniform(0, 9))
    assert trt_plugin.output_shape((B, T, N, 2), H, W) == (B, 3, H, W)
    cfg = trt_plugin.aot_launch((B, T, N, 2), H, W, lw, pr, 2, 1, 0x102030)
    gx, gy, gz = cfg["grid"]
    assert (gx - 1) * 16 < W <= gx * 16 and (gy - 1) * 16 < H <= gy * 16 and gz == B
    assert cfg["block"] == (16, 16, 1) and cfg["shared_mem"] == 0 and cfg["kernel"] == C.ENTRY_F32_NCHW
    s = cfg["scalars"]
    assert len(s) == N_SCALARS and s[:5] == [B, T, N, H, W] and s[7:] == [2, 1, 0x102030]
    back = [struct.unpack("<f", struct.pack("<i", v))[0] for v in s[5:7]]
    assert back == [np.float32(lw), np.float32(pr)]
    assert all(-(2**31) <= v < 2**31 for v in s)


@pytest.mark.parametrize(
    "bad",
    [
        {"height": 0},
        {"width": 10**5},
        {"line_width": 0.0},
        {"point_radius": -1.0},
        {"color_mode": 3},
        {"trails": 2},
        {"background": 1 << 24},
    ],
)
def test_plugin_rejects_bad_attributes(bad):
    attrs = dict(
        height=224, width=224, line_width=1.5, point_radius=3.0, color_mode=2, trails=1, background=0
    )
    trt_plugin.check_attributes(**attrs)
    with pytest.raises(ValueError, match="TrajRaster"):
        trt_plugin.check_attributes(**{**attrs, **bad})


def test_onnx_node():
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    from onnx import TensorProto, helper

    node = trt_plugin.make_onnx_node("traj", "image", height=96, width=128, line_width=2.0)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert node.op_type == "TrajRaster" and node.domain == "l2m"
    assert attrs["plugin_namespace"] == b"l2m" and attrs["height"] == 96 and attrs["width"] == 128
    assert set(trt_plugin.ATTRIBUTES) | {"plugin_namespace"} == set(attrs)
    graph = helper.make_graph(
        [node],
        "raster",
        [helper.make_tensor_value_info("traj", TensorProto.FLOAT, ["B", "T", "N", 2])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["B", 3, 96, 128])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("l2m", 1)]
    )
    onnx.checker.check_model(model)
    with pytest.raises(ValueError):
        trt_plugin.make_onnx_node("traj", "image", color_mode=5)


@pytest.mark.tensorrt
def test_tensorrt_registers_plugin():
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-python not installed")
    import tensorrt.plugin as trtp

    trt_plugin.register()
    trt_plugin.register()  # idempotent
    assert hasattr(trtp.op.l2m, "TrajRaster")
