// Trajectory rasterizer, CPU build: the same per-pixel math as the CUDA kernel (traj_raster.cuh),
// driven the other way round. Each primitive visits only the pixels of its capsule's bounding box, and
// in each row of it only the span the capsule crosses, so the cost scales with the drawn area.
// Primitives are visited in the same order as on the GPU, so each pixel composites the same sequence.
//
// Built by setup.py into l2m_sdk/_raster_cpu*.so (a plain shared library, loaded with ctypes by
// l2m_sdk/render.py). Build flags keep -ffp-contract=off so results match the numpy reference.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "traj_raster.cuh"

#if defined(_WIN32)
#define L2M_EXPORT extern "C" __declspec(dllexport)
#else
#define L2M_EXPORT extern "C" __attribute__((visibility("default")))
#endif

namespace {

void raster_image(const float* traj_b, const float* colors, int T, int N, int H, int W, float line_width,
                  float point_radius, int color_mode, int trails, const float* bg, float* img) {
    const size_t npix = (size_t)H * W;
    for (size_t i = 0; i < npix; ++i) {
        img[3 * i] = bg[0];
        img[3 * i + 1] = bg[1];
        img[3 * i + 2] = bg[2];
    }
    const int P = l2m::num_prims(T, N, trails);
    for (int k = 0; k < P; ++k) {
        const l2m::Prim p = l2m::make_prim(traj_b, colors, k, T, N, H, W, trails, line_width, point_radius);
        float x0, y0, x1, y1;
        l2m::prim_bbox(p, &x0, &y0, &x1, &y1);
        if (x1 < 0.0f || y1 < 0.0f || x0 > (float)(W - 1) || y0 > (float)(H - 1)) continue;
        // Pixel centres inside the box; the clamps happen in float so huge boxes cannot overflow int.
        const int i0 = (int)std::ceil(l2m::clampf(x0, 0.0f, (float)(W - 1)));
        const int i1 = (int)std::floor(l2m::clampf(x1, 0.0f, (float)(W - 1)));
        const int j0 = (int)std::ceil(l2m::clampf(y0, 0.0f, (float)(H - 1)));
        const int j1 = (int)std::floor(l2m::clampf(y1, 0.0f, (float)(H - 1)));
        for (int j = j0; j <= j1; ++j) {
            // Only the pixels where this row crosses the capsule: long diagonal segments would
            // otherwise visit a whole box of pixels they cannot cover.
            float lo, hi;
            if (!l2m::row_span(p, (float)j, &lo, &hi)) continue;
            const int s0 = (int)std::ceil(l2m::clampf(lo, (float)i0, (float)i1));
            const int s1 = (int)std::floor(l2m::clampf(hi, (float)i0, (float)i1));
            float* row = img + (size_t)j * W * 3;
            for (int i = s0; i <= s1; ++i) l2m::shade(row + 3 * i, (float)i, (float)j, p, T, color_mode);
        }
    }
}

}  // namespace

// Bumped whenever the signature or the meaning of an argument below changes.
L2M_EXPORT int l2m_raster_cpu_abi_version() { return 1; }

// traj     (B, T, N, 2) float32, C-contiguous, normalised coordinates (y down)
// colors   (N, 3) float32 base colours in [0, 1], or null for the default hues
// out_f32  (B, H, W, 3) float32 in [0, 1], or null
// out_u8   (B, H, W, 3) uint8, or null
// Returns 0 on success, -1 for invalid sizes, -2 when out of memory.
L2M_EXPORT int l2m_raster_cpu(const float* traj, const float* colors, int B, int T, int N, int H, int W,
                              float line_width, float point_radius, int color_mode, int trails,
                              int background_rgb, float* out_f32, uint8_t* out_u8) {
    if (B < 1 || T < 1 || N < 1 || H < 1 || W < 1 || traj == nullptr) return -1;
    if (out_f32 == nullptr && out_u8 == nullptr) return -1;
    const size_t image_floats = (size_t)H * W * 3;
    float* scratch = nullptr;
    if (out_f32 == nullptr) {
        scratch = static_cast<float*>(std::malloc(image_floats * sizeof(float)));
        if (scratch == nullptr) return -2;
    }
    float bg[3];
    l2m::unpack_rgb(background_rgb, bg);
    for (int b = 0; b < B; ++b) {
        float* img = out_f32 ? out_f32 + (size_t)b * image_floats : scratch;
        raster_image(traj + (size_t)b * T * N * 2, colors, T, N, H, W, line_width, point_radius, color_mode,
                     trails, bg, img);
        if (out_u8) {
            uint8_t* o = out_u8 + (size_t)b * image_floats;
            for (size_t i = 0; i < image_floats; ++i) o[i] = l2m::to_u8(img[i]);
        }
    }
    std::free(scratch);
    return 0;
}
