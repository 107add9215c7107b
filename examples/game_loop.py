"""A pygame (SDL2) game loop whose sprites follow trajectories that l2m generates while the game runs.

    pip install pygame            # or pygame-ce
    python examples/game_loop.py                      # a window; Esc quits
    SDL_VIDEODRIVER=dummy python examples/game_loop.py --seconds 5 --json stats.json   # headless, as in CI

A swarm of sprites plays one generated motion per second at 60 frames per second. Once a second the
loop asks the model for the next motion, starting from where the sprites are now (frame 0 of a
generated trajectory equals its initial points exactly, so the swarm moves on without a jump), and
the prompt cycles through a small set of behaviours with a fresh sample each time (temperature 0.4,
seeded).

Where the work happens (`--mode`):
  inline   (default) generate() runs on the game thread between two frames: after the frame is shown
           (display.flip) and before the next one starts, inside the frame's spare time. The
           behaviours' text embeddings are computed once while loading (the text cache keeps them),
           so a generation in the loop is one decoder run: 3-5 ms for 16 sprites x 60 frames on one
           core here, inside the 16.7 ms frame (8-16 ms while a training job held the other cores).
  thread   generate() runs on a worker thread (any prompt, e.g. one a player types, text tower
           included); the game thread only picks up a finished motion between frames and never waits.
The model gets one intra-op thread (`threads=1`): the other core stays with the game.

Pacing: each frame has a deadline 1/60 s after the previous one; the loop sleeps until it. The
statistics (`--json`) hold every frame's interval and busy time, and each generation's timing and the
frame gap it ran in.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import threading
import time

import numpy as np

import l2m_sdk

BEHAVIOURS = [
    "the points spread out in all directions",
    "a flock flying to the right",
    "the crowd spins clockwise",
    "everything falls down and bounces",
    "the points gather in the middle",
    "a wave moving to the left",
]
FPS = 60
SIZE = (640, 480)


def to_pixels(xy: np.ndarray) -> np.ndarray:
    """Normalised image coordinates (x right, y down, [-1, 1]) -> pixel positions; y needs no flip."""
    return (xy + 1.0) * 0.5 * np.array(SIZE, np.float32)


class Director:
    """Decides the next motion: the behaviour, the sample seed, and where it starts."""

    def __init__(self, model, sprites: int, frames: int, seed: int):
        self.model = model
        self.frames = frames
        self.count = 0
        self.rng = np.random.default_rng(seed)
        from l2m_sdk.model import default_initial_points

        self.start = default_initial_points(sprites, half_size=0.3)  # a centred grid

    def request(self, current: np.ndarray) -> tuple[str, np.ndarray, int]:
        text = BEHAVIOURS[self.count % len(BEHAVIOURS)]
        self.count += 1
        # Keep the swarm on screen: start the next motion from the current positions, pulled back
        # toward the centre when they have wandered near an edge.
        start = np.clip(current, -0.7, 0.7).astype(np.float32)
        return text, start, int(self.rng.integers(1 << 31))

    def generate(self, text: str, start: np.ndarray, seed: int) -> np.ndarray:
        return self.model.generate(text, start, self.frames, seed, 0.4)  # (frames, sprites, 2)


def run(seconds: float, sprites: int, mode: str, seed: int) -> dict:
    import pygame

    pygame.init()
    screen = pygame.display.set_mode(SIZE)
    pygame.display.set_caption("l2m: sprites on generated trajectories")
    model = l2m_sdk.load("default", threads=1)
    for b in BEHAVIOURS:  # loading screen: embed every behaviour once (the cache is keyed per call)
        model.encode_text(b)
    director = Director(model, sprites, FPS, seed)
    motion = director.generate(BEHAVIOURS[-1], director.start, seed)  # the first motion, before frame 0

    jobs: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    if mode == "thread":

        def worker() -> None:
            while (job := jobs.get()) is not None:
                t0 = time.perf_counter()
                traj = director.generate(*job)
                done.put((traj, t0, time.perf_counter()))

        threading.Thread(target=worker, daemon=True).start()

    n_frames = int(round(seconds * FPS))
    period = 1.0 / FPS
    frame_start = np.zeros(n_frames)
    frame_shown = np.zeros(n_frames)
    gens: list[dict] = []
    pending = False
    k_in_motion = 0
    trail: list[np.ndarray] = []
    colors = [pygame.Color(0) for _ in range(sprites)]
    for i, c in enumerate(colors):
        c.hsva = (360.0 * i / sprites, 80, 100, 100)
    deadline = time.perf_counter()
    quit_early = False
    for f in range(n_frames):
        # ---------------------------------------------------------------- frame f: wait, update, draw
        now = time.perf_counter()
        if deadline > now:
            time.sleep(deadline - now)
        frame_start[f] = time.perf_counter()
        # Next deadline one period on; a frame more than a period late starts a new schedule instead of
        # rushing the following frames to catch up.
        late = frame_start[f] - deadline
        deadline = deadline + period if late < period else frame_start[f] + period
        for event in pygame.event.get():
            if event.type == pygame.QUIT or (event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE):
                quit_early = True
        if mode == "thread" and pending:
            try:
                traj, t0, t1 = done.get_nowait()
            except queue.Empty:
                pass
            else:
                motion, k_in_motion, pending = traj, 0, False
                gens[-1].update(start=t0, end=t1, applied_frame=f)
        pos = motion[min(k_in_motion, len(motion) - 1)]
        k_in_motion += 1
        trail = (trail + [to_pixels(pos)])[-12:]
        screen.fill((12, 12, 20))
        for age, pts in enumerate(trail):
            r = 1 + 3 * age // len(trail)
            for p, c in zip(pts, colors):
                pygame.draw.circle(screen, c, (float(p[0]), float(p[1])), r)
        pygame.display.flip()
        frame_shown[f] = time.perf_counter()
        if quit_early:
            n_frames = f + 1
            break
        # ------------------------------------------------- between frames f and f + 1: the next motion
        if (f + 1) % FPS == 0 and f + 1 < n_frames:
            text, start, s = director.request(pos)
            if mode == "inline":
                t0 = time.perf_counter()
                motion = director.generate(text, start, s)
                t1 = time.perf_counter()
                k_in_motion = 0
                gens.append({"frame": f, "text": text, "start": t0, "end": t1, "applied_frame": f + 1})
            elif not pending:
                jobs.put((text, start, s))
                pending = True
                gens.append({"frame": f, "text": text, "start": None, "end": None, "applied_frame": None})
    if mode == "thread":
        jobs.put(None)
    pygame.quit()
    model.close()

    frame_start, frame_shown = frame_start[:n_frames], frame_shown[:n_frames]
    intervals = np.diff(frame_start) * 1e3
    busy = (frame_shown - frame_start) * 1e3
    gen_ms = [1e3 * (g["end"] - g["start"]) for g in gens if g["end"] is not None]
    return {
        "mode": mode,
        "frames": int(n_frames),
        "frames_requested": int(round(seconds * FPS)),
        "sprites": sprites,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "frame_interval_ms": {
            "p50": float(np.percentile(intervals, 50)),
            "p99": float(np.percentile(intervals, 99)),
            "max": float(intervals.max()),
        },
        "frame_busy_ms": {"p50": float(np.percentile(busy, 50)), "p99": float(np.percentile(busy, 99))},
        "generation_ms": {"p50": float(np.median(gen_ms)), "max": float(max(gen_ms))} if gen_ms else None,
        "generations": gens,
        "frame_start": frame_start.tolist(),
        "frame_shown": frame_shown.tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sprites", type=int, default=16)
    ap.add_argument("--mode", choices=("inline", "thread"), default="inline")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json", default=None, help="write the frame and generation statistics here")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else int(time.time())
    stats = run(a.seconds, a.sprites, a.mode, seed)
    iv = stats["frame_interval_ms"]
    print(
        f"{stats['frames']} frames ({a.mode}): frame interval p50 {iv['p50']:.2f} ms, "
        f"p99 {iv['p99']:.2f} ms, "
        f"max {iv['max']:.2f} ms; {len(stats['generations'])} generations, {stats['generation_ms']}"
    )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(stats, f)


if __name__ == "__main__":
    main()
