// Trajectory rasterizer, CUDA build. The per-pixel math is in traj_raster.cuh (shared with the CPU
// build); this file only decides which primitives each thread looks at.
//
// Launch: grid (ceil(W / 16), ceil(H / 16), B), block (16, 16, 1), no dynamic shared memory, no
// workspace, one launch: the form a TensorRT quickly-deployable AOT plugin needs. Each block owns a
// 16x16 tile of one image; it walks the image's primitives in batches of 256 (one per thread), keeps
// those whose capsule box touches the tile, compacts them into shared memory in their original order
// (ballot + popc, then per-warp offsets) and every thread composites the survivors over its pixel.
// Cost is O(tiles x primitives) for the box tests, fine for the few thousand segments of an image;
// a count/scan/sort pipeline (gsplat-style) is the step after this for very large batches.
//
// Scalar ABI (identical for nvcc PTX, NVRTC PTX and the TensorRT plugin): every scalar is a 32-bit
// int; floats travel as their IEEE-754 bit pattern (TensorRT AOT extra arguments are integer
// symbolic expressions), the background as packed 0xRRGGBB. Argument order is input pointers,
// scalars, output pointers, as the TensorRT AOT plugin passes them.
#include "traj_raster.cuh"

#define L2M_TILE 16
#define L2M_THREADS (L2M_TILE * L2M_TILE)
#define L2M_WARPS (L2M_THREADS / 32)

namespace {

// Output layouts: float (B, 3, H, W) in [0, 1] for TensorRT; uint8 or float (B, H, W, 3) for the SDK.
enum OutLayout { kF32Nchw, kU8Nhwc, kF32Nhwc };

template <OutLayout kLayout>
__device__ __forceinline__ void raster_tile(const float* __restrict__ traj, const float* __restrict__ colors,
                                            int B, int T, int N, int H, int W, float line_width,
                                            float point_radius, int color_mode, int trails,
                                            int background_rgb, void* __restrict__ out) {
    __shared__ l2m::Prim s_prim[L2M_THREADS];
    __shared__ int s_warp_count[L2M_WARPS];

    const int b = blockIdx.z;
    if (b >= B) return;  // uniform per block: safe before __syncthreads
    const int tid = threadIdx.y * L2M_TILE + threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int ix = blockIdx.x * L2M_TILE + threadIdx.x;
    const int iy = blockIdx.y * L2M_TILE + threadIdx.y;
    const bool inside = ix < W && iy < H;
    const float px = (float)ix;
    const float py = (float)iy;
    // Pixel centres of this tile span [tx0, tx1] x [ty0, ty1] in pixel space.
    const float tx0 = (float)(blockIdx.x * L2M_TILE);
    const float ty0 = (float)(blockIdx.y * L2M_TILE);
    const float tx1 = tx0 + (float)(L2M_TILE - 1);
    const float ty1 = ty0 + (float)(L2M_TILE - 1);

    float acc[3];
    l2m::unpack_rgb(background_rgb, acc);

    const float* traj_b = traj + (size_t)b * T * N * 2;
    const int P = l2m::num_prims(T, N, trails);
    for (int base = 0; base < P; base += L2M_THREADS) {
        const int k = base + tid;
        l2m::Prim p;
        bool hit = false;
        if (k < P) {
            p = l2m::make_prim(traj_b, colors, k, T, N, H, W, trails, line_width, point_radius);
            float x0, y0, x1, y1;
            l2m::prim_bbox(p, &x0, &y0, &x1, &y1);
            hit = x1 >= tx0 && x0 <= tx1 && y1 >= ty0 && y0 <= ty1;
        }
        // Ordered compaction: the slot of a hit is the number of hits before it in primitive order,
        // so every pixel composites in the same order as the CPU build.
        const unsigned mask = __ballot_sync(0xffffffffu, hit);
        if (lane == 0) s_warp_count[warp] = __popc(mask);
        __syncthreads();
        int offset = __popc(mask & ((1u << lane) - 1u));
        int total = 0;
#pragma unroll
        for (int w = 0; w < L2M_WARPS; ++w) {
            const int c = s_warp_count[w];
            offset += w < warp ? c : 0;
            total += c;
        }
        if (hit) s_prim[offset] = p;
        __syncthreads();
        if (inside) {
            for (int i = 0; i < total; ++i) l2m::shade(acc, px, py, s_prim[i], T, color_mode);
        }
        __syncthreads();  // s_prim and s_warp_count are rewritten by the next batch
    }

    if (!inside) return;
    if (kLayout == kF32Nchw) {
        float* o = static_cast<float*>(out);
        const size_t plane = (size_t)H * W;
        const size_t at = (size_t)b * 3 * plane + (size_t)iy * W + ix;
        o[at] = acc[0];
        o[at + plane] = acc[1];
        o[at + 2 * plane] = acc[2];
    } else {
        const size_t at = (((size_t)b * H + iy) * W + ix) * 3;
        if (kLayout == kU8Nhwc) {
            unsigned char* o = static_cast<unsigned char*>(out);
            o[at] = l2m::to_u8(acc[0]);
            o[at + 1] = l2m::to_u8(acc[1]);
            o[at + 2] = l2m::to_u8(acc[2]);
        } else {
            float* o = static_cast<float*>(out);
            o[at] = acc[0];
            o[at + 1] = acc[1];
            o[at + 2] = acc[2];
        }
    }
}

}  // namespace

// TensorRT plugin entry (l2m::TrajRaster): traj (B, T, N, 2) float32 -> out (B, 3, H, W) float32.
extern "C" __global__ void __launch_bounds__(L2M_THREADS)
    l2m_traj_raster_f32_nchw(const float* __restrict__ traj, int B, int T, int N, int H, int W,
                             int line_width_bits, int point_radius_bits, int color_mode, int trails,
                             int background_rgb, float* __restrict__ out) {
    raster_tile<kF32Nchw>(traj, nullptr, B, T, N, H, W, __int_as_float(line_width_bits),
                      __int_as_float(point_radius_bits), color_mode, trails, background_rgb, out);
}

// SDK entry: traj (B, T, N, 2) float32, colors (N, 3) float32 or null -> out (B, H, W, 3) uint8.
extern "C" __global__ void __launch_bounds__(L2M_THREADS)
    l2m_traj_raster_u8_nhwc(const float* __restrict__ traj, const float* __restrict__ colors, int B, int T,
                            int N, int H, int W, int line_width_bits, int point_radius_bits, int color_mode,
                            int trails, int background_rgb, unsigned char* __restrict__ out) {
    raster_tile<kU8Nhwc>(traj, colors, B, T, N, H, W, __int_as_float(line_width_bits),
                       __int_as_float(point_radius_bits), color_mode, trails, background_rgb, out);
}

// SDK entry, float output: as above but out is (B, H, W, 3) float32 in [0, 1].
extern "C" __global__ void __launch_bounds__(L2M_THREADS)
    l2m_traj_raster_f32_nhwc(const float* __restrict__ traj, const float* __restrict__ colors, int B, int T,
                             int N, int H, int W, int line_width_bits, int point_radius_bits, int color_mode,
                             int trails, int background_rgb, float* __restrict__ out) {
    raster_tile<kF32Nhwc>(traj, colors, B, T, N, H, W, __int_as_float(line_width_bits),
                          __int_as_float(point_radius_bits), color_mode, trails, background_rgb, out);
}
