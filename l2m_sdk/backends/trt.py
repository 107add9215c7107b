"""TensorRT engine runner on cuda-python: no torch, no pycuda.

`TrtSession` has the interface of the ONNX Runtime session wrapper: `input_names`, `output_names`,
`run(feeds) -> [outputs]` with numpy arrays in and out. One session is shared by many threads: each
thread gets its own IExecutionContext, CUDA stream and device buffers (threading.local), so calls
never contend on TensorRT state. Buffers grow to the largest shape seen and are reused.

CUDA graphs (`cuda_graphs=True`): for a fixed input shape (the decode path in a frame or control
loop) the first call runs the engine normally, then captures execute_async_v3 into a graph keyed by
the input shapes; later calls with the same shapes replay it (one launch instead of one per kernel).
Host<->device copies stay outside the graph, so the graph only depends on the (stable) device buffer
addresses; when a buffer has to grow, that thread's graphs are dropped and recaptured.

Written against the TensorRT 11.4 Python API and cuda-python 13 (cuda.bindings.runtime).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np

log = logging.getLogger("l2m_sdk")

PIP_TRT = "pip install tensorrt-cu13"
PIP_CUDA = "pip install cuda-python"
MAX_GRAPHS_PER_THREAD = 16  # each graph pins its kernels' parameters; a few shapes is the use case


def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError(f"the TensorRT backend needs TensorRT: {PIP_TRT}") from e
    except Exception as e:  # placeholder wheels without native libraries fail with OSError
        raise RuntimeError(f"TensorRT failed to load ({e}); reinstall: {PIP_TRT}") from e
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as e:
        raise RuntimeError(f"the TensorRT backend needs cuda-python: {PIP_CUDA}") from e
    return cudart


def _check(cudart, result, what: str):
    """cuda-python returns (err, *values); raise on error, return the value(s)."""
    err, *vals = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        _, msg = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"{what} failed: {getattr(err, 'name', err)}: {msg.decode(errors='replace')}")
    return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)


class _Resources:
    """Device memory, stream, graphs and execution context of one thread. `free` runs once, from close()
    or when the thread's state is garbage-collected (weakref.finalize)."""

    def __init__(self, cudart, device: int):
        self.cudart = cudart
        self.device = device
        self.context = None
        self.stream = None
        self.buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)
        self.graphs: OrderedDict[tuple, object] = OrderedDict()  # input shapes -> cudaGraphExec_t | None
        self.last_key: tuple | None = None  # input shapes of the last execution on this context

    def drop_graphs(self) -> None:
        for g in self.graphs.values():
            if g is not None:
                self.cudart.cudaGraphExecDestroy(g)
        self.graphs.clear()

    def free(self) -> None:
        rt = self.cudart
        rt.cudaSetDevice(self.device)
        if self.stream is not None:
            rt.cudaStreamSynchronize(self.stream)
        self.drop_graphs()
        for ptr, _ in self.buffers.values():
            rt.cudaFree(ptr)
        self.buffers.clear()
        if self.stream is not None:
            rt.cudaStreamDestroy(self.stream)
            self.stream = None
        self.context = None  # release the IExecutionContext before the engine goes


class _ThreadState:
    def __init__(self, res: _Resources):
        self.res = res
        self.shapes: dict[str, tuple[int, ...]] = {}


class TrtSession:
    """Runs one serialized TensorRT engine (.plan).

    plan: path to the plan, or its bytes. device: CUDA device index. cuda_graphs: capture/replay CUDA
    graphs per input-shape set (see module doc). profiles: {input: [min, opt, max]} from meta.json,
    used to reject out-of-range shapes with a clear message before TensorRT sees them.
    """

    def __init__(
        self,
        plan: str | Path | bytes,
        *,
        device: int = 0,
        cuda_graphs: bool = False,
        profiles: dict | None = None,
    ):
        self._trt = trt = _import_trt()
        self._rt = rt = _import_cudart()
        self.device = int(device)
        self.cuda_graphs = bool(cuda_graphs)
        if isinstance(plan, (str, Path)):
            path = Path(plan)
            if not path.is_file():
                raise FileNotFoundError(f"TensorRT plan not found: {path}")
            data = path.read_bytes()
            self.name = path.name
        else:
            data, self.name = bytes(plan), "<bytes>"
        _check(rt, rt.cudaSetDevice(self.device), "cudaSetDevice")
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise RuntimeError(
                f"{self.name}: TensorRT {trt.__version__} could not deserialize this plan (built by "
                "another TensorRT version or for another GPU?); rebuild it with "
                "python -m export.trt_build --bundle <bundle>"
            )
        e = self._engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.input_names = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(e.get_tensor_dtype(n))) for n in names}
        self._ranks = {n: len(e.get_tensor_shape(n)) for n in names}
        if profiles is None:
            profiles = {n: [list(s) for s in e.get_tensor_profile_shape(n, 0)] for n in self.input_names}
        self._profiles = profiles
        self._local = threading.local()
        self._finalizers: list[weakref.finalize] = []
        self._lock = threading.Lock()
        self._closed = False

    # ------------------------------------------------------------------------------------ public
    def run(self, feeds: dict[str, np.ndarray], output_names: list[str] | None = None) -> list[np.ndarray]:
        """feeds: {input name: array}; returns the outputs (all, or `output_names`) as new numpy arrays."""
        if self._closed:
            raise RuntimeError(f"{self.name}: session is closed")
        host = self._check_feeds(feeds)
        st = self._state()
        res, rt, ctx = st.res, self._rt, st.res.context
        _check(rt, rt.cudaSetDevice(self.device), "cudaSetDevice")
        key = tuple((n, host[n].shape) for n in self.input_names)
        for n in self.input_names:
            shape = host[n].shape
            if st.shapes.get(n) != shape:
                if not ctx.set_input_shape(n, shape):
                    raise ValueError(
                        f"{self.name}: TensorRT rejected shape {shape} for input {n!r} "
                        f"(profile {self._profiles.get(n)})"
                    )
                st.shapes[n] = shape
            self._bind(res, n, host[n].nbytes)
        out_shapes = {n: tuple(ctx.get_tensor_shape(n)) for n in self.output_names}
        for n, s in out_shapes.items():
            if any(d < 0 for d in s):
                raise RuntimeError(
                    f"{self.name}: output {n!r} has unresolved shape {s} for inputs {dict(key)}"
                )
            self._bind(res, n, int(np.prod(s, dtype=np.int64)) * self._dtypes[n].itemsize)
        h2d, d2h = rt.cudaMemcpyKind.cudaMemcpyHostToDevice, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for n in self.input_names:  # host arrays stay referenced in `host` until the stream is synchronised
            a = host[n]
            if a.nbytes:
                _check(
                    rt,
                    rt.cudaMemcpyAsync(res.buffers[n][0], a.ctypes.data, a.nbytes, h2d, res.stream),
                    "cudaMemcpyAsync H2D",
                )
        self._execute(res, key)
        outs = {n: np.empty(s, dtype=self._dtypes[n]) for n, s in out_shapes.items()}
        wanted = self.output_names if output_names is None else list(output_names)
        for n in wanted:
            if n not in outs:
                raise ValueError(f"{self.name}: unknown output {n!r}; outputs are {self.output_names}")
            if outs[n].nbytes:
                _check(
                    rt,
                    rt.cudaMemcpyAsync(
                        outs[n].ctypes.data, res.buffers[n][0], outs[n].nbytes, d2h, res.stream
                    ),
                    "cudaMemcpyAsync D2H",
                )
        _check(rt, rt.cudaStreamSynchronize(res.stream), "cudaStreamSynchronize")
        return [outs[n] for n in wanted]

    def close(self) -> None:
        """Free every thread's buffers, streams, graphs and contexts, then the engine. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            fins, self._finalizers = self._finalizers, []
        for f in fins:
            f()
        self._local = threading.local()
        self._engine = None
        self._runtime = None

    def __enter__(self) -> TrtSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: CUDA may already be gone
            pass

    # ----------------------------------------------------------------------------------- helpers
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise TypeError(f"feeds must be a dict {{input name: np.ndarray}}, got {type(feeds).__name__}")
        missing = [n for n in self.input_names if n not in feeds]
        extra = [n for n in feeds if n not in self.input_names]
        if missing or extra:
            raise ValueError(
                f"{self.name}: inputs are {self.input_names}; missing {missing}, unknown {extra}"
            )
        host = {}
        for n in self.input_names:
            a = np.ascontiguousarray(feeds[n], dtype=self._dtypes[n])
            if a.ndim != self._ranks[n]:
                raise ValueError(
                    f"{self.name}: input {n!r} must have {self._ranks[n]} dimensions, got shape {a.shape}"
                )
            prof = self._profiles.get(n)
            if prof is not None:
                lo, _, hi = prof
                if any(not (x <= s <= y) for s, x, y in zip(a.shape, lo, hi)):
                    raise ValueError(
                        f"{self.name}: input {n!r} shape {a.shape} is outside the engine profile "
                        f"{tuple(lo)}..{tuple(hi)}; rebuild with a larger range "
                        "(python -m export.trt_build --max-batch ...) or use backend='ort'"
                    )
            host[n] = a
        return host

    def _state(self) -> _ThreadState:
        st = getattr(self._local, "st", None)
        if st is None:
            rt = self._rt
            _check(rt, rt.cudaSetDevice(self.device), "cudaSetDevice")
            res = _Resources(rt, self.device)
            res.context = self._engine.create_execution_context()
            if res.context is None:
                raise RuntimeError(f"{self.name}: could not create an execution context (out of GPU memory?)")
            res.stream = _check(
                rt, rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking), "cudaStreamCreate"
            )
            st = _ThreadState(res)
            with self._lock:
                if self._closed:
                    res.free()
                    raise RuntimeError(f"{self.name}: session is closed")
                self._finalizers.append(weakref.finalize(st, res.free))
            self._local.st = st
        return st

    def _bind(self, res: _Resources, name: str, nbytes: int) -> None:
        """Make sure `name` has a device buffer of at least nbytes, bound to the context."""
        ptr, cap = res.buffers.get(name, (0, -1))
        if nbytes > cap:
            rt = self._rt
            if ptr:
                _check(rt, rt.cudaStreamSynchronize(res.stream), "cudaStreamSynchronize")
                rt.cudaFree(ptr)
            # grow geometrically so a slowly rising batch does not reallocate every call
            cap = max(nbytes, 2 * cap if cap > 0 else 0, 256)
            ptr = int(_check(rt, rt.cudaMalloc(cap), f"cudaMalloc({cap}) for {name!r}"))
            res.buffers[name] = (ptr, cap)
            res.drop_graphs()  # captured graphs hold the old addresses
            res.last_key = None
        res.context.set_tensor_address(name, ptr)

    def _execute(self, res: _Resources, key: tuple) -> None:
        rt, ctx, stream = self._rt, res.context, res.stream
        # Replay only when the context last ran these very shapes: after a shape change TensorRT updates
        # shape-dependent state during the next plain enqueue, which a replayed graph would skip.
        same = key == res.last_key
        res.last_key = key
        if self.cuda_graphs and same and res.graphs.get(key) is not None:
            res.graphs.move_to_end(key)
            _check(rt, rt.cudaGraphLaunch(res.graphs[key], stream), "cudaGraphLaunch")
            return
        # The plain call doubles as the warm-up TensorRT needs before capture (it applies shape changes).
        if not ctx.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.name}: execute_async_v3 failed (see the TensorRT log above)")
        if self.cuda_graphs and key not in res.graphs:
            res.graphs[key] = self._capture(res)
            while len(res.graphs) > MAX_GRAPHS_PER_THREAD:
                _, old = res.graphs.popitem(last=False)
                if old is not None:
                    rt.cudaGraphExecDestroy(old)

    def _capture(self, res: _Resources):
        """Capture one execute_async_v3 into an executable graph; None (and plain execution from then on
        for this shape) when the engine cannot be captured."""
        rt, stream = self._rt, res.stream
        mode = rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(rt, rt.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        ok = False
        try:
            ok = res.context.execute_async_v3(int(stream))
        finally:
            err, graph = rt.cudaStreamEndCapture(stream)
        if not ok or int(err) != 0:
            log.warning(
                "%s: CUDA graph capture failed (%s); running without graphs for this shape",
                self.name,
                getattr(err, "name", err),
            )
            if int(err) == 0:
                rt.cudaGraphDestroy(graph)
            return None
        try:
            return _check(rt, rt.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            rt.cudaGraphDestroy(graph)
