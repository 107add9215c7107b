// Per-pixel math of the trajectory rasterizer: the single source of truth.
//
// Included by the CUDA kernel (traj_raster.cu, nvcc or NVRTC) and by the CPU build (raster_cpu.cpp).
// l2m_sdk/render.py::render_reference mirrors every function here in numpy, operation for operation,
// so that the three builds agree to float32 rounding (bit for bit when no FMA contraction happens:
// the builds pass -ffp-contract=off / --fmad=false for that reason).
//
// Conventions
//   trajectory   (B, T, N, 2) float32, normalised image coordinates, x in [-1, 1] left to right,
//                y in [-1, 1] top to bottom (y down).
//   pixel space  pixel (i, j) = (column, row) is sampled at its centre, which sits at pixel-space
//                coordinate (i, j). A normalised coordinate v maps to (v + 1) / 2 * size - 0.5, so
//                v = -1 is the outer edge of pixel 0 and v = +1 the outer edge of pixel size - 1.
//                Pixel coordinates are clamped to +-COORD_LIMIT so far-away points keep float32 math
//                finite; anything beyond that is off-screen by hundreds of frames anyway.
//   primitives   segments first, time-major: k = t * N + n joins point n at frames t and t + 1
//                (only when trails are on), then one dot per point at the last frame. Every pixel
//                composites its primitives in this order with the "over" operator, whichever build.
//   coverage     a capsule (segment swept by a disc of radius r) filtered by a 1-px box: the coverage
//                is clamp(r + 0.5 - distance, 0, 1), a 1-px linear ramp centred on the edge.
//   colour       u in [0, 1] is time along the trajectory (0 = frame 0, 1 = last frame), interpolated
//                along each segment. COLOR_TIME: a dark-to-bright ramp of u. COLOR_POINT: one hue per
//                point. COLOR_BOTH: the point's hue, dimmed for old parts (FADE_MIN at u = 0).
//                Dots use u = 1. Colours and the background are linear RGB in [0, 1].
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define L2M_HD inline __host__ __device__
#else
#include <cmath>
#define L2M_HD inline
#endif

namespace l2m {

constexpr int COLOR_TIME = 0;
constexpr int COLOR_POINT = 1;
constexpr int COLOR_BOTH = 2;

constexpr float COORD_LIMIT = 16384.0f;
constexpr float FADE_MIN = 0.2f;
constexpr float GOLDEN = 0.61803398875f;
constexpr float HUE_OFFSET = 0.1f;
constexpr float SATURATION = 0.8f;

struct Rgb {
    float r, g, b;
};

// One segment (a != b) or dot (a == b) in pixel space; t is the frame index of the start point, n the
// point index, base its colour before fading (computed once per primitive, not per pixel).
struct Prim {
    float ax, ay, bx, by, radius;
    int t, n;
    Rgb base;
};

L2M_HD float clampf(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

L2M_HD float to_pixel(float v, int size) {
    return clampf((v + 1.0f) * 0.5f * (float)size - 0.5f, -COORD_LIMIT, COORD_LIMIT);
}

// Distance from (px, py) to the segment a-b; *h gets the closest point's parameter in [0, 1].
L2M_HD float segment_distance(float px, float py, float ax, float ay, float bx, float by, float* h) {
    const float dx = bx - ax, dy = by - ay;
    const float qx = px - ax, qy = py - ay;
    const float len2 = dx * dx + dy * dy;
    // Zero-length segments (a point that did not move) degenerate to a disc, not a division by zero.
    const float s = len2 > 1e-12f ? clampf((qx * dx + qy * dy) / len2, 0.0f, 1.0f) : 0.0f;
    const float ex = qx - s * dx, ey = qy - s * dy;
    *h = s;
    return sqrtf(ex * ex + ey * ey);
}

L2M_HD float coverage(float distance, float radius) { return clampf(radius + 0.5f - distance, 0.0f, 1.0f); }

// Conservative pixel-space box of everything a primitive can cover (coverage is 0 outside it).
L2M_HD void prim_bbox(const Prim& p, float* x0, float* y0, float* x1, float* y1) {
    const float e = p.radius + 0.5f;
    *x0 = (p.ax < p.bx ? p.ax : p.bx) - e;
    *x1 = (p.ax < p.bx ? p.bx : p.ax) + e;
    *y0 = (p.ay < p.by ? p.ay : p.by) - e;
    *y1 = (p.ay < p.by ? p.by : p.ay) + e;
}

// Conservative x-interval [*lo, *hi] where the capsule of p meets pixel row y (CPU scanline: the capsule
// is convex, so a row meets it in one interval; the union of the two end discs and the body is it).
// The radius is padded by SPAN_PAD px so rounding never drops a pixel whose coverage is above 0.
constexpr float SPAN_PAD = 0.05f;

L2M_HD bool row_span(const Prim& p, float y, float* lo, float* hi) {
    const float R = p.radius + 0.5f + SPAN_PAD;
    float l = 1e30f, h = -1e30f;
    const float ea = y - p.ay, eb = y - p.by;
    if (ea * ea <= R * R) {
        const float w = sqrtf(R * R - ea * ea);
        l = p.ax - w < l ? p.ax - w : l;
        h = p.ax + w > h ? p.ax + w : h;
    }
    if (eb * eb <= R * R) {
        const float w = sqrtf(R * R - eb * eb);
        l = p.bx - w < l ? p.bx - w : l;
        h = p.bx + w > h ? p.bx + w : h;
    }
    const float dx = p.bx - p.ax, dy = p.by - p.ay;
    const float len2 = dx * dx + dy * dy;
    if (len2 > 1e-12f) {
        // Body: 0 <= (q - a).d <= |d|^2 and |(q - a) x d| <= R |d|, with q = (x, y); each is an
        // interval in x (or all/nothing when the segment is axis-aligned).
        const float RL = R * sqrtf(len2);
        float bl = -1e30f, bh = 1e30f;
        bool empty = false;
        if (dx != 0.0f) {
            float u0 = (-ea * dy) / dx, u1 = (len2 - ea * dy) / dx;
            if (u0 > u1) { const float tmp = u0; u0 = u1; u1 = tmp; }
            bl = u0 > bl ? u0 : bl;
            bh = u1 < bh ? u1 : bh;
        } else if (ea * dy < 0.0f || ea * dy > len2) {
            empty = true;
        }
        if (dy != 0.0f) {
            float v0 = (ea * dx - RL) / dy, v1 = (ea * dx + RL) / dy;
            if (v0 > v1) { const float tmp = v0; v0 = v1; v1 = tmp; }
            bl = v0 > bl ? v0 : bl;
            bh = v1 < bh ? v1 : bh;
        } else if (ea * dx > RL || ea * dx < -RL) {
            empty = true;
        }
        if (!empty && bl <= bh) {
            l = p.ax + bl < l ? p.ax + bl : l;
            h = p.ax + bh > h ? p.ax + bh : h;
        }
    }
    *lo = l;
    *hi = h;
    return l <= h;
}

// Dark violet -> magenta -> orange -> pale yellow; 5 stops, linear between them.
L2M_HD Rgb time_ramp(float u) {
    const float s = clampf(u, 0.0f, 1.0f) * 4.0f;
    int i = (int)s;
    if (i > 3) i = 3;
    const float f = s - (float)i;
    Rgb a, b;
    if (i == 0) {
        a = {0.02f, 0.02f, 0.10f};
        b = {0.30f, 0.07f, 0.45f};
    } else if (i == 1) {
        a = {0.30f, 0.07f, 0.45f};
        b = {0.72f, 0.18f, 0.42f};
    } else if (i == 2) {
        a = {0.72f, 0.18f, 0.42f};
        b = {0.97f, 0.50f, 0.18f};
    } else {
        a = {0.97f, 0.50f, 0.18f};
        b = {0.99f, 0.93f, 0.55f};
    }
    return {a.r + (b.r - a.r) * f, a.g + (b.g - a.g) * f, a.b + (b.b - a.b) * f};
}

L2M_HD float hsv_channel(float h6, float k) {
    // h6 = hue * 6; k = 5, 3, 1 for r, g, b (value 1, saturation SATURATION).
    float m = k + h6;  // in [1, 11): one subtraction is fmod(m, 6), exactly (Sterbenz)
    m = m >= 6.0f ? m - 6.0f : m;
    float w = 4.0f - m;
    w = m < w ? m : w;
    w = clampf(w, 0.0f, 1.0f);
    return 1.0f - SATURATION * w;
}

// Distinct hues for neighbouring point indices: golden-ratio steps around the colour wheel.
L2M_HD Rgb point_hue(int n) {
    const float x = (float)n * GOLDEN + HUE_OFFSET;
    const float h6 = (x - floorf(x)) * 6.0f;
    return {hsv_channel(h6, 5.0f), hsv_channel(h6, 3.0f), hsv_channel(h6, 1.0f)};
}

// colors: optional (N, 3) base colours per point (replaces the hue), nullptr for the default hues.
L2M_HD Rgb point_base(int n, const float* colors) {
    return colors ? Rgb{colors[3 * n], colors[3 * n + 1], colors[3 * n + 2]} : point_hue(n);
}

L2M_HD Rgb prim_color(int mode, float u, const Rgb& base) {
    if (mode == COLOR_TIME) return time_ramp(u);
    if (mode == COLOR_POINT) return base;
    const float k = FADE_MIN + (1.0f - FADE_MIN) * clampf(u, 0.0f, 1.0f);
    return {base.r * k, base.g * k, base.b * k};
}

L2M_HD int num_segments(int T, int N, int trails) { return trails ? (T - 1) * N : 0; }

L2M_HD int num_prims(int T, int N, int trails) { return num_segments(T, N, trails) + N; }

// Primitive k of one image; traj_b points at that image's (T, N, 2) block.
L2M_HD Prim make_prim(const float* traj_b, const float* colors, int k, int T, int N, int H, int W, int trails,
                      float line_width, float point_radius) {
    const int S = num_segments(T, N, trails);
    Prim p;
    if (k < S) {
        const int t = k / N;
        const int n = k - t * N;
        const float* a = traj_b + 2 * (t * N + n);
        const float* b = a + 2 * N;
        p.ax = to_pixel(a[0], W);
        p.ay = to_pixel(a[1], H);
        p.bx = to_pixel(b[0], W);
        p.by = to_pixel(b[1], H);
        p.radius = 0.5f * line_width;
        p.t = t;
        p.n = n;
    } else {
        const int n = k - S;
        const float* a = traj_b + 2 * ((T - 1) * N + n);
        p.ax = to_pixel(a[0], W);
        p.ay = to_pixel(a[1], H);
        p.bx = p.ax;
        p.by = p.ay;
        p.radius = point_radius;
        p.t = T - 1;
        p.n = n;
    }
    p.base = point_base(p.n, colors);
    return p;
}

// Composite primitive p over the running colour acc (3 floats) at pixel centre (px, py).
L2M_HD void shade(float* acc, float px, float py, const Prim& p, int T, int mode) {
    float h;
    const float d = segment_distance(px, py, p.ax, p.ay, p.bx, p.by, &h);
    const float a = coverage(d, p.radius);
    if (a <= 0.0f) return;
    const float u = T > 1 ? ((float)p.t + h) / (float)(T - 1) : 1.0f;
    const Rgb c = prim_color(mode, u, p.base);
    acc[0] += a * (c.r - acc[0]);
    acc[1] += a * (c.g - acc[1]);
    acc[2] += a * (c.b - acc[2]);
}

// Packed 0xRRGGBB background to linear [0, 1] floats.
L2M_HD void unpack_rgb(int rgb, float* out) {
    out[0] = (float)((rgb >> 16) & 255) / 255.0f;
    out[1] = (float)((rgb >> 8) & 255) / 255.0f;
    out[2] = (float)(rgb & 255) / 255.0f;
}

L2M_HD unsigned char to_u8(float v) { return (unsigned char)(clampf(v, 0.0f, 1.0f) * 255.0f + 0.5f); }

}  // namespace l2m
